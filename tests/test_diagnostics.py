"""The MCMC diagnostics (Vehtari et al. 2021): equal to arviz-stats, right on AR(1) chains of known ESS, R-hat that
sees location and scale disagreement, the batched form, and nan for undefined inputs."""

from __future__ import annotations

import functools
import math
import warnings

import numpy as np
import pytest
import torch
from arviz_stats.base import array_stats

from gencnn_plugin import diagnostics as d

PHIS = (-0.5, 0.0, 0.5, 0.9, 0.99)


def ar1(n: int, m: int, phi: float | np.ndarray, seed: int, k: int | None = None) -> np.ndarray:
    """Stationary AR(1) chains x_t = phi x_(t-1) + e_t, e ~ N(0, 1): (n, m) or (n, m, k); phi may vary along k."""
    rng = np.random.default_rng(seed)
    shape = (n, m) if k is None else (n, m, k)
    e = rng.standard_normal(shape)
    x = np.empty(shape)
    x[0] = e[0] / np.sqrt(1.0 - np.asarray(phi) ** 2)
    for t in range(1, n):
        x[t] = phi * x[t - 1] + e[t]
    return x


def case(kind: str, n: int, m: int, phi: float, seed: int) -> np.ndarray:
    """(n, m) draws: AR(1) chains, or chains at different means, of different scales, or heavy-tailed (Cauchy)."""
    x = ar1(n, m, phi, seed)
    if kind == "shifted":  # not mixed: chain j centred at j / 2
        x = x + 0.5 * np.arange(m)
    elif kind == "scaled":  # equal means, sd 1, 2, ...
        x = x * np.arange(1, m + 1)
    elif kind == "cauchy":
        x = np.random.default_rng(seed + 1000).standard_cauchy((n, m)) + phi * x
    return x


def arviz_reference(x: np.ndarray) -> dict[str, float]:
    """arviz-stats on draws x (n, m): its array interface takes (chain, draw), hence the transpose."""
    a = np.ascontiguousarray(x.T)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ref = {"rhat": float(array_stats.rhat(a, method="rank")),
               "ess_bulk": float(array_stats.ess(a, method="bulk")),
               "ess_tail": float(array_stats.ess(a, method="tail", prob=0.05)),  # the 5% and 95% quantiles
               "ess_mean": float(array_stats.ess(a, method="mean"))}
        if x.shape[1] == 1 and x.shape[0] >= 4:
            # arviz returns nan for one chain (it wants 2); ours, like Stan, is the R-hat of the two halves: build
            # arviz's rank R-hat (``_rhat_rank``) from its own pieces without that check
            assert math.isnan(ref["rhat"])
            s = array_stats._split_chains(a)
            ref["rhat"] = max(array_stats._rhat(array_stats._z_scale(s)),
                              array_stats._rhat(array_stats._z_scale(np.abs(s - np.median(s)))))
    return ref


def ours(x: np.ndarray) -> dict[str, float]:
    t = torch.from_numpy(x)
    return {"rhat": d.rhat(t), "ess_bulk": d.ess_bulk(t), "ess_tail": d.ess_tail(t), "ess_mean": d.ess_mean(t)}


def rel_diff(a: float, b: float) -> float:
    if math.isnan(a) or math.isnan(b):
        return 0.0 if math.isnan(a) and math.isnan(b) else math.inf
    return 0.0 if a == b else abs(a - b) / abs(b)


# ---------------------------------------------------------------------------------------------------------------
# 1. the same numbers as arviz-stats


@pytest.mark.parametrize("m", [1, 2, 4, 8])
@pytest.mark.parametrize("kind", ["ar", "shifted", "scaled", "cauchy"])
def test_matches_arviz_stats(kind, m):
    worst = 0.0
    for i, phi in enumerate(PHIS):
        for n in (4, 5, 7, 10, 101, 400):  # odd n: arviz drops the middle draw when splitting
            x = case(kind, n, m, phi, seed=100 * m + 10 * i + n)
            ref, got = arviz_reference(x), ours(x)
            for key in ref:
                assert isinstance(got[key], float)
                diff = rel_diff(got[key], ref[key])
                assert diff < 1e-6, (key, kind, phi, n, m, got[key], ref[key])
                worst = max(worst, diff)
    assert worst < 1e-9  # measured: ~2e-14 (FFT and summation order)


def test_rank_normalization_and_split_match_arviz():
    x = case("cauchy", 101, 3, 0.5, seed=7)
    x[:5, 0] = x[10, 1]  # ties get the average rank
    s = array_stats._split_chains(x.T)  # (2 m, n // 2), the middle draw dropped
    assert torch.equal(d.split_chains(torch.from_numpy(x)), torch.from_numpy(s.T))
    z = array_stats._z_scale(s)
    assert np.abs(d.rank_normalize(torch.from_numpy(s.T)).numpy() - z.T).max() < 1e-12
    assert d.split_chains(torch.from_numpy(x)).shape == (50, 6)


# ---------------------------------------------------------------------------------------------------------------
# 2. the truth: AR(1) has ESS of the mean n m (1 - phi) / (1 + phi)


REPS = 8


@functools.lru_cache(maxsize=1)
def long_ar1() -> tuple[tuple[float, ...], torch.Tensor]:
    """4 chains x 20,000 draws, 8 independent replicates for each phi, all in one (n, m, k) array."""
    phis = (-0.5, 0.5, 0.9, 0.99)
    phi = np.repeat(phis, REPS)
    return phis, torch.from_numpy(ar1(20_000, 4, phi, seed=2021, k=len(phi)))


@pytest.mark.parametrize("phi,tol", [(-0.5, 0.05), (0.5, 0.05), (0.9, 0.05), (0.99, 0.10)])
def test_ess_matches_ar1_truth(phi, tol):
    phis, x = long_ar1()
    sel = x[:, :, phis.index(phi) * REPS:(phis.index(phi) + 1) * REPS]
    n, m, _ = sel.shape
    truth = n * m * (1 - phi) / (1 + phi)  # integrated autocorrelation time (1 + phi) / (1 - phi)
    for fn in (d.ess_mean, d.ess_bulk):
        est = fn(sel)
        assert est.shape == (REPS,) and est.dtype == torch.float64
        assert float(est.mean()) == pytest.approx(truth, rel=tol), (fn.__name__, float(est.mean()), truth)


def _old_ess(trace: torch.Tensor) -> float:
    """The previous implementation (pairs started at lag 1, no monotone step): the bug the new one must not have."""
    x = trace.double()
    n, m = x.shape
    xc = x - x.mean(0)
    size = 1 << (2 * n - 1).bit_length()
    spec = torch.fft.rfft(xc, n=size, dim=0)
    acov = torch.fft.irfft(spec * spec.conj(), n=size, dim=0)[:n] / n
    w = (acov[0] * n / (n - 1)).mean()
    var_plus = w * (n - 1) / n + x.mean(0).var()
    rho = 1.0 - (w - acov.mean(1)) / var_plus
    total = 0.0
    for t in range(1, n - 1, 2):
        pair = float(rho[t] + rho[t + 1])
        if pair < 0:
            break
        total += pair
    return n * m / (1.0 + 2.0 * total)


def test_antithetic_chains_short():
    # phi = -0.5, 4 x 200: the true ESS is 3 n m = 2,400 (capped at n m log10(n m) = 2,322 as in arviz); the old
    # estimator said ~800
    cap = 800 * math.log10(800)
    for seed in range(3):
        x = torch.from_numpy(ar1(200, 4, -0.5, seed=seed))
        assert _old_ess(x) < 1000
        for fn in (d.ess_mean, d.ess_bulk, d.effective_sample_size):
            assert 0.85 * 2400 < fn(x) <= cap + 1e-9


# ---------------------------------------------------------------------------------------------------------------
# 3. R-hat


def test_rhat_mixed_and_stuck_chains():
    g = torch.Generator().manual_seed(3)
    iid = torch.randn(1000, 4, generator=g, dtype=torch.float64)
    ar = torch.from_numpy(ar1(2000, 4, 0.5, seed=3))
    for x in (iid, ar):
        assert 1.0 - 1e-3 < d.rhat(x) < 1.01
        assert d.split_rhat(x) == d.rhat(x)
    stuck = iid + torch.tensor([0.0, 0.0, 1.5, 1.5], dtype=torch.float64)
    assert d.rhat(stuck) > 1.1 and d.rhat_bulk(stuck) > 1.1 and d.rhat_basic(stuck) > 1.1
    trend = iid + torch.linspace(0, 3, 1000, dtype=torch.float64)[:, None]  # a drift within every chain: split
    assert d.rhat(trend) > 1.1


def test_rhat_sees_scale_difference_through_folding():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(1000, 4, generator=g, dtype=torch.float64) * torch.tensor([1.0, 1.0, 3.0, 3.0], dtype=torch.float64)
    assert d.rhat_basic(x) < 1.01  # the classic split R-hat misses it
    assert d.rhat_bulk(x) < 1.01  # so does the rank-normalised one without folding
    assert d.rhat_tail(x) > 1.1
    assert d.rhat(x) == d.rhat_tail(x) > 1.1


# ---------------------------------------------------------------------------------------------------------------
# 4. batched (n, m, k)


def test_batched_equals_separate_calls():
    x = np.stack([case(kind, 301, 4, phi, seed=i) for i, (kind, phi) in
                  enumerate([("ar", 0.9), ("cauchy", 0.0), ("shifted", 0.5), ("scaled", -0.5), ("ar", 0.99)])], -1)
    x[:, :, 1] = np.round(x[:, :, 1])  # many ties
    t = torch.from_numpy(x)
    for fn in (d.rhat, d.rhat_bulk, d.rhat_tail, d.rhat_basic, d.ess_bulk, d.ess_tail, d.ess_mean):
        batched = fn(t)
        assert batched.shape == (5,) and batched.dtype == torch.float64
        separate = torch.tensor([fn(t[:, :, j]) for j in range(5)], dtype=torch.float64)
        assert ((batched - separate).abs() <= 1e-12 * separate.abs()).all(), (fn.__name__, batched, separate)
    summary = d.summarize_draws(t[:, :, 0])
    assert set(summary) == {"rhat", "ess_bulk", "ess_tail"} and all(isinstance(v, float) for v in summary.values())
    assert float(d.summarize_draws(t)["ess_tail"][0]) == summary["ess_tail"]


# ---------------------------------------------------------------------------------------------------------------
# 5. undefined inputs


def test_degenerate_inputs_give_nan():
    every = (d.rhat, d.rhat_bulk, d.rhat_tail, d.rhat_basic, d.ess_bulk, d.ess_tail, d.ess_mean,
             d.effective_sample_size, d.split_rhat)
    constant = torch.full((100, 4), 2.5)
    short = torch.randn(3, 4)
    with_nan = torch.randn(100, 4)
    with_nan[10, 2] = math.nan
    for x in (constant, short, with_nan, torch.randn(0, 4), torch.randn(100, 0)):
        for fn in every:
            assert math.isnan(fn(x)), (fn.__name__, tuple(x.shape))
    # batched: only the bad quantity is nan
    x = torch.randn(100, 4, 3, dtype=torch.float64)
    x[:, :, 1] = 7.0
    for fn in every:
        out = fn(x)
        assert math.isnan(out[1]) and torch.isfinite(out[[0, 2]]).all()
    # arviz: rhat nan as well, but ESS of a constant trace is the number of draws (we say nan, as Stan does)
    assert math.isnan(arviz_reference(constant.double().numpy())["rhat"])
    assert arviz_reference(constant.double().numpy())["ess_bulk"] == 400
    # every split chain constant but different: R-hat is infinite, as in arviz
    stuck = torch.tensor([0.0, 1.0, 2.0, 3.0]).expand(50, 4)
    assert d.rhat(stuck) == math.inf == arviz_reference(stuck.double().numpy())["rhat"]
    # the smallest defined case, and a single chain given as 1-D
    assert math.isfinite(d.rhat(torch.randn(4, 2))) and math.isfinite(d.ess_bulk(torch.randn(4, 1)))
    assert d.ess_bulk(torch.arange(50.0).sin()) == d.ess_bulk(torch.arange(50.0).sin()[:, None])
    with pytest.raises(ValueError, match="chains"):
        d.rhat(torch.zeros(4, 2, 2, 2))
