"""MCMC convergence diagnostics over chains: rank-normalised split R-hat, bulk / tail ESS and the ESS of the mean.

The definitions are those of Vehtari, Gelman, Simpson, Carpenter & Bürkner (2021), "Rank-normalization, folding, and
localization: An improved R-hat for assessing convergence of MCMC", Bayesian Analysis 16(2), 667-718
(https://doi.org/10.1214/20-BA1221, arXiv:1903.08008), computed the way Stan and ArviZ compute them; every number
here equals arviz-stats 0.8 (``arviz_stats.base.array_stats.rhat(method="rank")`` and ``.ess(method="bulk" | "tail" |
"mean")``) to rounding, apart from the two documented choices below.

* Split chains: each chain is cut into a first and a second half, so a drifting chain looks like two disagreeing ones;
  with an odd number of draws the middle draw is dropped (ArviZ's ``_split_chains``).
* Rank normalisation: the draws of all (split) chains are ranked together (ties get the average rank), mapped through
  Blom's offset ``(r - 3/8) / (S + 1/4)`` and the standard-normal quantile, so R-hat and ESS are defined for heavy
  tails and invariant to monotone transformations.
* ESS (Stan's / Geyer's estimator): autocovariances by FFT, the combined autocorrelation
  ``rho_t = 1 - (W - mean_chains(acov_t)) / var_plus`` (so between-chain disagreement lowers the ESS), Geyer's initial
  positive sequence over pairs ``rho_2k + rho_2k+1``, his initial monotone sequence, the last positive even term, and
  ``tau = -1 + 2 * sum + rho_last``, capped below at ``1 / log10(S)`` (ESS <= S log10 S, S = all split draws).

Shapes: ``trace`` is (iterations n, chains m) -> float, or (n, m, k) -> float64 tensor of k values (k quantities
diagnosed at once, batched, e.g. the score plus random projections of the states); a 1-D trace is one chain. All
arithmetic is float64 on the CPU: sorting and FFTs in numpy (single-threaded and much faster than torch's on busy
cores), the rest in torch.

Undefined results are nan, as in ArviZ: fewer than 4 draws per chain, or any nan in the draws. The two deliberate
differences from ArviZ:

* a constant trace (all draws equal) gives nan for every ESS, as Stan and the R package posterior do; ArviZ returns
  the number of split draws (R-hat is nan in both);
* R-hat of a single chain is the R-hat of its two halves (as in Stan / posterior; the old ``split_rhat`` did the
  same); ArviZ returns nan for fewer than 2 chains.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = [
    "effective_sample_size",
    "ess_basic",
    "ess_bulk",
    "ess_mean",
    "ess_tail",
    "rank_normalize",
    "rhat",
    "rhat_basic",
    "rhat_bulk",
    "rhat_tail",
    "split_chains",
    "split_rhat",
    "summarize_draws",
]

_MIN_DRAWS = 4  # per chain, as ArviZ
_RESOLUTION = torch.finfo(torch.float64).resolution  # ArviZ's "constant" test inside the ESS kernel (1e-15)


# ----------------------------------------------------------------------------------------------------------------
# shapes and the building blocks


def _as_3d(trace: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """The trace as float64 (n, m, k) on the CPU, and whether the caller gave a single quantity (1-D or 2-D)."""
    x = torch.as_tensor(trace).detach().to(device="cpu", dtype=torch.float64)
    if x.dim() == 1:
        return x[:, None, None], True
    if x.dim() == 2:
        return x[:, :, None], True
    if x.dim() == 3:
        return x, False
    raise ValueError(f"trace must be (iterations, chains) or (iterations, chains, k), got shape {tuple(x.shape)}")


def _out(values: torch.Tensor, scalar: bool) -> float | torch.Tensor:
    """A float for a single quantity, else the float64 tensor of k values."""
    return float(values[0]) if scalar else values


def _too_short(x: torch.Tensor) -> bool:
    """Fewer than 4 draws per chain, or no chain: nothing is defined (ArviZ's minimum)."""
    return x.shape[0] < _MIN_DRAWS or x.shape[1] == 0


def _nans(x: torch.Tensor) -> torch.Tensor:
    """A float64 (k,) tensor of nan."""
    return torch.full((x.shape[2],), math.nan, dtype=torch.float64)


def _invalid(x: torch.Tensor) -> torch.Tensor:
    """(k,) True where a quantity has a nan among its draws (ArviZ returns nan then)."""
    return torch.isnan(x).flatten(0, 1).any(0)


def _constant(x: torch.Tensor) -> torch.Tensor:
    """(k,) True where every draw is equal (ESS undefined; ArviZ would return the number of split draws)."""
    flat = x.flatten(0, 1)
    return flat.amax(0) == flat.amin(0)


def _split(x: torch.Tensor) -> torch.Tensor:
    """(n, m, k) -> (n // 2, 2 m, k): first and second halves as separate chains; odd n drops the middle draw."""
    half = x.shape[0] // 2
    return torch.cat([x[:half], x[x.shape[0] - half:]], dim=1)


def _sorted_rows(x: torch.Tensor) -> np.ndarray:
    """The draws of each quantity of x (n, m, k) pooled over chains and sorted: a (k, n m) numpy array.

    Sorting is done by numpy along contiguous rows: several times faster than torch's CPU sort here.
    """
    return np.sort(np.ascontiguousarray(x.flatten(0, 1).numpy().T), axis=1)


def _average_ranks(flat: torch.Tensor) -> torch.Tensor:
    """Ranks 1..S of each column of flat (S, k), ties sharing their average rank (scipy's ``rankdata('average')``)."""
    rows = np.ascontiguousarray(flat.numpy().T)  # (k, S)
    size = rows.shape[1]
    order = np.argsort(rows, axis=1)
    s = np.take_along_axis(rows, order, axis=1)
    change = s[:, 1:] != s[:, :-1]
    edge = np.ones((rows.shape[0], 1), dtype=bool)
    pos = np.arange(size)
    starts = np.maximum.accumulate(np.where(np.concatenate([edge, change], 1), pos, 0), axis=1)
    ends = np.where(np.concatenate([change, edge], 1), pos, size - 1)
    ends = np.minimum.accumulate(ends[:, ::-1], axis=1)[:, ::-1]
    ranks = np.empty(rows.shape, dtype=np.float64)
    np.put_along_axis(ranks, order, (starts + ends) / 2 + 1, axis=1)
    return torch.from_numpy(ranks.T)


def _z_scale(x: torch.Tensor) -> torch.Tensor:
    """Rank-normalise (n, m, k) over all chains together: Blom's (r - 3/8) / (S + 1/4), then the normal quantile."""
    flat = x.flatten(0, 1)
    size = flat.shape[0]
    z = torch.special.ndtri((_average_ranks(flat) - 0.375) / (size - 2 * 0.375 + 1))
    return z.reshape(x.shape)


def _median(x: torch.Tensor) -> torch.Tensor:
    """(k,) median over draws and chains, numpy's: the mean of the two middle draws for an even count."""
    s = torch.from_numpy(_sorted_rows(x))
    size = s.shape[1]
    return s[:, size // 2] if size % 2 else (s[:, size // 2 - 1] + s[:, size // 2]) / 2


def _quantile(s: torch.Tensor, prob: float) -> torch.Tensor:
    """(k,) quantile of the sorted rows s (k, S), numpy's default 'linear' rule (Hyndman & Fan type 7), bit for bit."""
    index = (s.shape[1] - 1) * prob
    lo = math.floor(index)
    if lo >= s.shape[1] - 1:
        return s[:, -1]
    gamma = index - lo
    a, b = s[:, lo], s[:, lo + 1]
    return b - (b - a) * (1 - gamma) if gamma >= 0.5 else a + (b - a) * gamma


def _rhat_core(x: torch.Tensor) -> torch.Tensor:
    """(k,) R-hat of chains x (n, m, k): sqrt(var_plus / W) with var_plus = (n - 1)/n W + B/n (BDA3, eq. 11.3)."""
    n = x.shape[0]
    b = n * x.mean(0).var(0, correction=1)
    w = x.var(0, correction=1).mean(0)
    return torch.sqrt((b / w + n - 1) / n)


def _fast_len(target: int) -> int:
    """The smallest 2^a 3^b 5^c >= target: an FFT length numpy transforms quickly (scipy's ``next_fast_len``)."""
    best = 1 << max(0, target - 1).bit_length()
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            p = p35
            while p < target:
                p *= 2
            best = min(best, p)
            p35 *= 3
        p5 *= 5
    return best


def _chain_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """For chains x (n, m, k): the autocovariance averaged over chains (n, k) (FFT, lags 0..n-1, biased: divided by
    n), the chain means (m, k), each quantity's spread max - min (k,) and whether all its draws are finite (k,).

    Done in numpy on contiguous (m, k, n) rows (as ArviZ, and fast: torch's CPU FFT spreads even a small transform
    over its thread pool, which costs ~100x when the cores are busy). Averaging the power spectra over chains before
    the inverse FFT is the same as averaging the autocovariances.
    """
    n = x.shape[0]
    rows = np.ascontiguousarray(x.numpy().transpose(1, 2, 0))  # (m, k, n)
    chain_mean = rows.mean(-1)
    size = _fast_len(2 * n)  # >= 2 n: no circular wrap-around
    spec = np.fft.rfft(rows - chain_mean[..., None], n=size, axis=-1)
    power = (spec.real**2 + spec.imag**2).mean(0)  # (k, size // 2 + 1)
    mean_acov = np.fft.irfft(power, n=size, axis=-1)[:, :n] / n
    top, bottom = rows.max(axis=(0, 2)), rows.min(axis=(0, 2))
    return (torch.from_numpy(np.ascontiguousarray(mean_acov.T)), torch.from_numpy(chain_mean),
            torch.from_numpy(top - bottom), torch.from_numpy(np.isfinite(top) & np.isfinite(bottom)))


def _ess_core(x: torch.Tensor) -> torch.Tensor:
    """(k,) ESS of chains x (n, m, k) as Stan computes it (ArviZ's ``_ess``), vectorised over k.

    Geyer's loop is done with prefix operations: with pair sums P_j = rho_2j + rho_2j+1 (rho_0 = 1), the pairs
    1..J (J = (n - 3) // 2) are read while the previous pair is positive; L = the number of pairs read. The
    monotone sequence replaces P_0..P_L-1 by their running minimum, the last even term rho_2L is kept when it or its
    pair is non-negative, and tau = -1 + 2 sum_{j<L} min(P_0..P_j) + rho_2L, at least 1 / log10(n m).
    A quantity whose draws spread less than 1e-15 gets ESS n m, as in ArviZ (the public functions return nan for a
    constant trace before getting here; this only affects the tail indicators of heavily tied draws).
    """
    n, m, k = x.shape
    total = n * m
    mean_acov, chain_mean, spread, finite = _chain_stats(x)
    mean_var = mean_acov[0] * n / (n - 1.0)
    var_plus = mean_var * (n - 1.0) / n
    if m > 1:
        var_plus = var_plus + chain_mean.var(0, correction=1)
    rho = 1.0 - (mean_var - mean_acov) / var_plus  # (n, k)
    rho[0] = 1.0
    pairs_read = max(0, (n - 3) // 2)
    pair = rho[0:2 * pairs_read + 2:2] + rho[1:2 * pairs_read + 2:2]  # P_0..P_J, (J + 1, k)
    go_on = (pair[:pairs_read] > 0).to(torch.int64)
    last = torch.cumprod(go_on, dim=0).sum(0) if pairs_read else torch.zeros(k, dtype=torch.int64)  # L, (k,)
    running_min = torch.cummin(pair, dim=0).values
    used = torch.arange(pairs_read + 1).unsqueeze(1) < last  # pairs 0..L-1
    even = rho[2 * last, torch.arange(k)]  # rho_2L
    pair_last = pair[last, torch.arange(k)]
    even = torch.where((pair_last >= 0) | (even > 0), even, torch.zeros_like(even))
    tau = -1.0 + 2.0 * torch.where(used, running_min, torch.zeros_like(running_min)).sum(0) + even
    tau = torch.clamp(tau, min=1.0 / math.log10(total))
    ess = torch.where(spread < _RESOLUTION, torch.full_like(tau, float(total)), total / tau)
    return torch.where(finite, ess, torch.full_like(ess, math.nan))


# ----------------------------------------------------------------------------------------------------------------
# public functions


def split_chains(trace: torch.Tensor) -> torch.Tensor:
    """Split each chain into its two halves, (n, m[, k]) -> (n // 2, 2 m[, k]), float64; odd n drops the middle draw.

    Splitting makes R-hat and ESS see non-stationarity within a chain (a trend looks like two chains disagreeing).
    A 1-D trace is one chain and gives (n // 2, 2).
    """
    x, _ = _as_3d(trace)
    out = _split(x)
    return out if torch.as_tensor(trace).dim() == 3 else out[:, :, 0]


def rank_normalize(trace: torch.Tensor) -> torch.Tensor:
    """Rank-normalised draws, same shape, float64: pooled average ranks -> Blom offset -> normal quantile (ndtri).

    This is the paper's z-scale: it makes the diagnostics well defined for heavy tails (no finite variance needed)
    and invariant to monotone transformations of the quantity. Applied to the draws as given (not split).
    """
    x, _ = _as_3d(trace)
    return _z_scale(x).reshape(torch.as_tensor(trace).shape)


def rhat_bulk(trace: torch.Tensor) -> float | torch.Tensor:
    """Split R-hat of the rank-normalised draws (ArviZ ``method="z_scale"``): detects chains at different locations."""
    x, scalar = _as_3d(trace)
    if _too_short(x):
        return _out(_nans(x), scalar)
    bad = _invalid(x)
    value = _rhat_core(_z_scale(_split(torch.where(bad, 0.0, x))))
    return _out(torch.where(bad, math.nan, value), scalar)


def rhat_tail(trace: torch.Tensor) -> float | torch.Tensor:
    """Split R-hat of the rank-normalised folded draws |x - median| (ArviZ ``method="folded"``, median over the split
    draws): detects chains with equal locations but different scales, which the bulk R-hat misses."""
    x, scalar = _as_3d(trace)
    if _too_short(x):
        return _out(_nans(x), scalar)
    bad = _invalid(x)
    split = _split(torch.where(bad, 0.0, x))
    value = _rhat_core(_z_scale((split - _median(split)).abs()))
    return _out(torch.where(bad, math.nan, value), scalar)


def rhat(trace: torch.Tensor) -> float | torch.Tensor:
    """Rank-normalised split R-hat of Vehtari et al. (2021): max(bulk R-hat, folded R-hat); < 1.01 recommended.

    Equals ArviZ's ``rhat`` (method "rank") and Stan's; nan for a constant trace, fewer than 4 draws or nan draws,
    inf when every split chain is constant but they differ. One chain: the R-hat of its halves (ArviZ gives nan).
    """
    x, scalar = _as_3d(trace)
    bulk, tail = rhat_bulk(x), rhat_tail(x)
    return _out(torch.where(tail > bulk, tail, bulk), scalar)  # Python's max(bulk, tail), as ArviZ


def rhat_basic(trace: torch.Tensor) -> float | torch.Tensor:
    """Classic split R-hat on the raw draws (BDA3; ArviZ ``method="split"``), no rank normalisation or folding.

    Kept for comparison: it needs finite variances and misses chains that differ only in scale.
    """
    x, scalar = _as_3d(trace)
    if _too_short(x):
        return _out(_nans(x), scalar)
    bad = _invalid(x)
    value = _rhat_core(_split(torch.where(bad, 0.0, x)))
    return _out(torch.where(bad, math.nan, value), scalar)


def ess_bulk(trace: torch.Tensor) -> float | torch.Tensor:
    """Bulk ESS: ESS of the rank-normalised split chains, the number of independent draws the centre of the
    distribution is worth (robust to heavy tails); nan for a constant trace (ArviZ: the number of split draws)."""
    x, scalar = _as_3d(trace)
    if _too_short(x):
        return _out(_nans(x), scalar)
    bad = _invalid(x) | _constant(x)
    value = _ess_core(_z_scale(_split(torch.where(bad, 0.0, x))))
    return _out(torch.where(bad, math.nan, value), scalar)


def ess_tail(trace: torch.Tensor, prob: float = 0.05) -> float | torch.Tensor:
    """Tail ESS: min of the ESS of the indicators I(x <= q_prob) and I(x <= q_(1-prob)), split chains, with the
    quantiles over all draws (numpy 'linear'); what the 5% and 95% quantiles are worth. nan for a constant trace."""
    x, scalar = _as_3d(trace)
    if _too_short(x):
        return _out(_nans(x), scalar)
    bad = _invalid(x) | _constant(x)
    x = torch.where(bad, 0.0, x)
    low, high = sorted((prob, 1 - prob))
    s = torch.from_numpy(_sorted_rows(x))
    values = [_ess_core(_split((x <= _quantile(s, p)).to(torch.float64))) for p in (low, high)]
    return _out(torch.where(bad, math.nan, torch.minimum(*values)), scalar)


def ess_mean(trace: torch.Tensor) -> float | torch.Tensor:
    """ESS of the mean: ESS of the raw split chains (no rank normalisation), the one that sets the Monte Carlo error
    of a posterior mean, sd / sqrt(ESS); needs a finite variance. nan for a constant trace."""
    x, scalar = _as_3d(trace)
    if _too_short(x):
        return _out(_nans(x), scalar)
    bad = _invalid(x) | _constant(x)
    value = _ess_core(_split(torch.where(bad, 0.0, x)))
    return _out(torch.where(bad, math.nan, value), scalar)


ess_basic = ess_mean  # posterior's name for the same quantity


def effective_sample_size(trace: torch.Tensor) -> float | torch.Tensor:
    """The bulk ESS of Vehtari et al. (2021), ``ess_bulk``; the name ``gencnn_plugin.hmc`` uses."""
    return ess_bulk(trace)


def split_rhat(trace: torch.Tensor) -> float | torch.Tensor:
    """The rank-normalised split R-hat of Vehtari et al. (2021), ``rhat``; the name ``gencnn_plugin.hmc`` uses."""
    return rhat(trace)


def summarize_draws(trace: torch.Tensor) -> dict[str, float | torch.Tensor]:
    """rhat, ess_bulk and ess_tail of a trace (Stan's default convergence summary): floats for (n, m), tensors of k
    values for (n, m, k)."""
    return {"rhat": rhat(trace), "ess_bulk": ess_bulk(trace), "ess_tail": ess_tail(trace)}
