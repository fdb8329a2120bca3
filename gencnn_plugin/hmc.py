"""Hamiltonian Monte Carlo for p_y(x) ~ exp(f_y(x)) q(x), q = N(0, sigma^2 I) (paper section 3.4).

U(x) = -f_y(x) + |x|^2 / (2 sigma^2), K(phi) = |phi|^2 / (2 m), H = U + K. Chains are the batch dimension: one
forward/backward per leapfrog step serves every chain, and the Metropolis test runs per chain on the device with no
host synchronisation inside the loop. Energies and the accept test are float32 even when the score runs in bf16/fp16.

Replica exchange (parallel tempering; Swendsen & Wang 1986, Geyer 1991): with ``replicas`` R > 1 every chain runs
R copies at temperatures T_0 = T < T_1 < ... < T_{R-1} = ``hot_temperature`` (geometric ladder), each an exact HMC
chain of exp(f(x) / T_r) q(x). After every iteration neighbouring copies (r, r + 1) swap states with probability
min(1, exp((1/T_r - 1/T_{r+1}) (f(x_{r+1}) - f(x_r)))) -- q is not tempered, so only f enters -- alternating the
even and the odd pairs (the deterministic even-odd scheme, Okabe et al. 2001; Syed et al. 2022). The joint chain
leaves the product of the R targets invariant, so the T_0 copy is a Markov chain of the target that crosses between
modes through the hotter copies. Only the T_0 copies are returned; they cost R x the work.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .diagnostics import effective_sample_size, split_rhat
from .runtime import PRECISIONS, precision_context
from .settings import SettingsError, check, setting

__all__ = ["HMCConfig", "HMCResult", "HMCStep", "exchange", "hmc_sample", "leapfrog", "potential", "summarize"]

ScoreFn = Callable[[torch.Tensor], torch.Tensor]
_REFERENCE = re.compile(r"[a-z]+(:[A-Za-z0-9_.\-]{1,64})?")


@dataclass
class HMCConfig:
    """Sampler settings, the single source of the CLI flags, the GUI form, presets and the reproduce-command.

    The defaults are the paper's LeNet setting (section 4.2).
    """

    iters: int = setting(100, "HMC iterations (Metropolis tests) per chain", ge=1, le=10_000_000,
                         label="HMC iterations")
    leapfrog_steps: int = setting(50, "leapfrog steps per iteration (eqs. 11-13)", ge=1, le=100_000)
    step_size: float = setting(0.1, "leapfrog step size epsilon", gt=0, le=1e6)
    mass: float = setting(0.01, "particle mass m of the kinetic energy |phi|^2 / 2m", ge=1e-12, le=1e12)
    sigma: float = setting(1.0, "std of the Gaussian reference q in the model's normalised input space", ge=1e-6,
                           le=1e6, label="sigma of q")
    chains: int = setting(16, "chains per node", ge=1, le=65_536)
    seed: int = setting(0, "random seed of the starting points and momenta", ge=0, le=2**63 - 1)
    adapt_steps: int = setting(0, "dual-averaging step-size adaptation during the first iterations (0: off, the "
                                  "paper)", ge=0, le=10_000_000, label="adapt steps")
    target_accept: float = setting(0.65, "acceptance rate that dual averaging aims at", gt=0, lt=1)
    mala: bool = setting(False, "Langevin: one leapfrog step per iteration (MALA)")
    reference: str = setting("white", "the reference q: white (the paper's N(0, sigma^2 I)), pink, spectral, lowres "
                                      "or pca (fitted to data), KIND:DATA to name the data file "
                                      "(zoo_configs/references)", metavar="KIND[:DATA]",
                             suggest=("white", "pink", "lowres", "pca", "pink:imagenet_1f", "pink:fashion_mnist",
                                      "pca:fashion_mnist"))
    temperature: float = setting(1.0, "T of p ~ exp(f_y(x) / T) q(x): 1 is the paper's model; T < 1 sharpens the "
                                      "tilt (T -> 0: activation maximisation under the Gaussian prior)", gt=0, le=1e6)
    precision: str = setting("fp32", "the score's precision (energies stay float32): fp32 (TF32 off), tf32, bf16, "
                                     "fp16", choices=PRECISIONS)
    # what the node's score sees (applied by visualize.sample_node: `gencnn sample`, the app); each is deterministic,
    # so HMC stays exact, for a node that is then not f_y itself but the one stated
    jitter: int = setting(0, "average the node's score over 4 fixed translations of the image, by 0 and this many "
                             "pixels down and right (lucent's jitter made deterministic; 0: off): exact for that "
                             "smoother node, 4x the work", ge=0, le=64, label="jitter (px)")
    affine_views: int = setting(0, "average the node's score over this many fixed views of the image: the image "
                                   "itself and shifts, zooms and rotations drawn once (seed 0, the same node in "
                                   "every run) from warm_augment's range (standard when off); exact for that "
                                   "smoother node, this many times the work (0: off; 1, the image alone, is refused; "
                                   "not with jitter)", ge=0, le=64, label="fixed views")
    clip: bool = setting(False, "the score sees the image as a file holds it: x * std + mean clipped to [0, 1] "
                                "(without it a ReLU net's score grows with contrast past the pixel range)")
    score: str = setting("logit", "what an output node scores: logit (the paper's f_y) or log_softmax (log p(y|x), "
                                  "bounded above by 0: the chains stop gaining once the class wins, and at T = 1 "
                                  "p(y|x) q(x) is Bayes' p(x|y) for q the images' distribution); output nodes only",
                         choices=("logit", "log_softmax"), label="class score")
    warm_start: int = setting(0, "Adam steps (lr 0.05) that move the starting states towards low U(x) before "
                                 "sampling; like warm-up, they are not samples", ge=0, le=1_000_000,
                              label="warm-start steps")
    warm_augment: str = setting("off", "with warm-start steps: each scores a random shift, zoom and rotation of "
                                       "every image instead of the jitter average, so the starts survive transforms "
                                       "(not part of the chain): off; standard (<= 8 px at 224 px, in proportion at "
                                       "other sizes, zoom 0.95-1.05, <= 10 deg: after lucent's standard "
                                       "transforms); wide (<= 32 px at 224 px, zoom 0.6-1.2, <= 20 deg: objects, "
                                       "not tiled textures)", choices=("off", "standard", "wide"),
                                legacy={True: "standard", False: "off"}, label="warm-start transforms")
    warm_redirect: bool = setting(True, "with warm-start steps: where an nn.ReLU or nn.ReLU6 layer passes no "
                                        "gradient back for an image, pass the part that brings its clamped units "
                                        "back (Lucid's redirected ReLU), so a node silent at the start (a channel's "
                                        "unit at 0) can be climbed; a layer that passes some keeps its own; never "
                                        "in HMC",
                                  label="redirect silent ReLUs")
    replicas: int = setting(1, "replica exchange (parallel tempering): run every chain at this many temperatures, "
                               "geometric from T up to the hot temperature, swapping neighbours' states after each "
                               "iteration so the T chain crosses between modes; only the T chain is kept, at this "
                               "many times the work (1: off, the paper)", ge=1, le=64, label="tempering replicas")
    hot_temperature: float = setting(1.0, "with replicas > 1: the hottest replica's T (above T; 1 is the "
                                          "untempered model)", gt=0, le=1e6, label="hottest T")

    def __post_init__(self) -> None:
        check(self)
        if self.jitter and self.affine_views:
            raise SettingsError("jitter and affine_views: one averaged view of the node at a time, not both (set "
                                "jitter 0)")
        if self.affine_views == 1:
            raise SettingsError("affine_views: 1 is the image alone, the plain score at the cost of a resampling; "
                                "0 (off) or at least 2")
        if self.replicas > 1 and not self.hot_temperature > self.temperature:
            raise SettingsError(f"hot_temperature: {self.hot_temperature:g} must be above temperature "
                                f"{self.temperature:g} when replicas > 1")
        if not _REFERENCE.fullmatch(self.reference):  # a data file by name only: a preset never names a path
            raise SettingsError(f"reference: {self.reference[:40]!r} is not KIND or KIND:DATA (a data file name in "
                                "zoo_configs/references)")

    @property
    def trajectory_steps(self) -> int:
        """Leapfrog steps per iteration as run: 1 under MALA."""
        return 1 if self.mala else self.leapfrog_steps

    @property
    def ladder(self) -> list[float]:
        """The replicas' temperatures, T first: geometric from ``temperature`` to ``hot_temperature``."""
        r = self.replicas
        if r == 1:
            return [self.temperature]
        ratio = self.hot_temperature / self.temperature
        return [self.temperature * ratio ** (k / (r - 1)) for k in range(r)]


@dataclass
class HMCStep:
    """What a callback sees after each iteration (tensors on the sampling device)."""

    iteration: int
    x: torch.Tensor  # current states (B, ...)
    accepted: torch.Tensor  # (B,) bool
    score: torch.Tensor  # f_y(x) (B,)
    energy_error: torch.Tensor  # H(proposal) - H(start) (B,)
    step_size: torch.Tensor  # (B,)


@dataclass
class HMCResult:
    """Final states, per-chain acceptance, and per-iteration traces (iters, B) on the CPU."""

    x: torch.Tensor
    accept_rate: torch.Tensor
    trace: dict[str, torch.Tensor]
    grad_evals: int
    seconds: float
    iters_done: int
    stopped: bool = False
    summary: dict = field(default_factory=dict)
    swap_rate: torch.Tensor | None = None  # replica exchange: accepted swaps per pair of neighbouring temperatures


def potential(score_fn: ScoreFn, x: torch.Tensor, sigma: float, precision: str = "fp32",
              temperature: float | torch.Tensor = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """U(x) = -f(x) / T + |x|^2 / (2 sigma^2) per chain, dU/dx = -df/dx / T + x / sigma^2, and f(x); all float32.

    Only f goes through autograd: the Gaussian term's gradient is written out. Chains are independent, so
    d(sum_b f_b)/dx_b = df_b/dx_b. ``temperature``: one T, or one per chain (B,) (replica exchange).
    """
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        with precision_context(x.device, precision):
            f = score_fn(xg).float()
        df = torch.autograd.grad(f.sum(), xg)[0] if f.requires_grad else torch.zeros_like(xg)
    x = x.detach().float()
    inv_var = 1.0 / sigma / sigma  # never sigma**2: a huge sigma would overflow a Python float
    t = _per_chain(temperature, x) if isinstance(temperature, torch.Tensor) else temperature
    u = -f.detach() / temperature + x.pow(2).flatten(1).sum(1) * (inv_var / 2)
    return u, x * inv_var - df.float() / t, f.detach()


def leapfrog(x, phi, grad, energy, step_size, steps: int, mass: float, stop: Callable[[], bool] | None = None):
    """``steps`` leapfrog steps (eqs. 11-13); returns (x, phi, U, dU/dx, f) at the end, or None if stopped."""
    half, drift = step_size / 2, step_size / mass
    u = f = None
    for _ in range(steps):
        phi = phi - half * grad  # (11) half step of the momentum
        x = x + drift * phi  # (12) full step of the position
        u, grad, f = energy(x)
        phi = phi - half * grad  # (13) half step of the momentum
        if stop is not None and stop():
            return None
    return x, phi, u, grad, f


def _per_chain(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.ndim - 1)))


def hmc_sample(
    score_fn: ScoreFn,
    x0: torch.Tensor,
    config: HMCConfig | None = None,
    *,
    generator: torch.Generator | None = None,
    callback: Callable[[HMCStep], bool | None] | None = None,
    stop: Callable[[], bool] | None = None,
    noise_rows: torch.Tensor | None = None,
    noise_total: int | None = None,
    **overrides,
) -> HMCResult:
    """Draw ``B = x0.shape[0]`` chains from exp(f(x) / T) N(x; 0, sigma^2 I) by HMC, starting at ``x0``.

    Args:
        score_fn: maps (B, ...) to (B,), the node's f_y.
        x0: the starting states, one chain per row.
        config: the sampler settings (:class:`HMCConfig`; ``chains`` and ``seed`` are not used here: the chains
            are the rows of ``x0`` and the randomness comes from ``generator``).
        generator: the random numbers of momenta and Metropolis tests (default: seed 0 on x0's device).
        callback: runs after every iteration with an :class:`HMCStep` (it may read the states for a live view);
            returning True stops the run.
        stop: polled after every leapfrog step so a GUI can interrupt mid-trajectory (that proposal is dropped).
        noise_rows, noise_total: these chains are rows ``noise_rows`` of a run of ``noise_total`` chains; the random
            numbers are drawn for all of them and indexed, so chains split over devices reproduce one device's run.
        **overrides: any :class:`HMCConfig` field (``iters=``, ``step_size=``, ...), applied on top of ``config``.

    ``adapt_steps > 0`` tunes each chain's step size by dual averaging (Hoffman & Gelman 2014) towards
    ``target_accept`` during those first iterations only.
    """
    config = config or HMCConfig()
    if not isinstance(config, HMCConfig):
        raise TypeError(f"hmc_sample(score_fn, x0, config): config must be an HMCConfig (settings by keyword: "
                        f"iters=..., step_size=...), got {type(config).__name__}")
    if overrides:
        known = {f.name for f in dataclasses.fields(HMCConfig)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(f"hmc_sample() got unknown settings {unknown}; HMCConfig has {sorted(known)}")
        config = dataclasses.replace(config, **overrides)  # validated again by __post_init__
    iters, step_size, mass, sigma = config.iters, config.step_size, config.mass, config.sigma
    leapfrog_steps, adapt_steps, target_accept = config.trajectory_steps, config.adapt_steps, config.target_accept
    device, b = x0.device, x0.shape[0]
    if generator is None:
        generator = torch.Generator(device=device).manual_seed(0)
    # replica exchange: chain c's copy at T_r is row c * R + r (a chain's copies are consecutive, so a multi-node
    # score's grouping of consecutive chains holds); R = 1 is the plain sampler, with the same random numbers
    reps = config.replicas
    n, total = b * reps, (noise_total or b) * reps
    rows = chain_rows = noise_rows if noise_rows is None else noise_rows.to(device)  # moved once, not per iteration
    if noise_rows is not None and reps > 1:
        rows = (chain_rows.view(-1, 1) * reps + torch.arange(reps, device=device)).flatten()
    ladder = torch.tensor(config.ladder, device=device)
    row_t = ladder.repeat(b) if reps > 1 else config.temperature
    inv_var = 1.0 / sigma / sigma

    def energy(x):
        return potential(score_fn, x, sigma, config.precision, row_t)

    def cold(v: torch.Tensor) -> torch.Tensor:  # the T_0 rows
        return v[::reps] if reps > 1 else v

    t0 = time.perf_counter()
    x = x0.detach().float().repeat_interleave(reps, 0) if reps > 1 else x0.detach().float().clone()
    u, grad, f = energy(x)
    grad = torch.where(torch.isfinite(grad), grad, torch.zeros_like(grad))
    eps = torch.full((n,), float(step_size), device=device)
    # dual averaging state (Hoffman & Gelman 2014, algorithm 5), per chain
    mu, gamma, t0_da, kappa = math.log(10 * step_size), 0.05, 10.0, 0.75
    h_bar = torch.zeros(n, device=device)
    log_eps_bar = torch.zeros(n, device=device)
    swaps = torch.zeros(max(reps - 1, 0), device=device)

    names = ("accepted", "potential", "energy_error", "score", "step_size")
    trace = {k: torch.zeros(iters, b, device=device) for k in names}
    grad_evals, done, stopped = 1, 0, False
    for it in range(iters):
        phi = torch.randn((total, *x.shape[1:]), device=device, generator=generator)
        phi = (phi if rows is None else phi[rows]) * math.sqrt(mass)
        h0 = u + phi.pow(2).flatten(1).sum(1) / (2 * mass)
        out = leapfrog(x, phi, grad, energy, _per_chain(eps, x), leapfrog_steps, mass, stop)
        grad_evals += leapfrog_steps
        if out is None:
            stopped = True
            break
        x1, phi1, u1, grad1, f1 = out
        h1 = u1 + phi1.pow(2).flatten(1).sum(1) / (2 * mass)
        d_h = h1 - h0
        finite = torch.isfinite(d_h) & torch.isfinite(x1).flatten(1).all(1) & torch.isfinite(grad1).flatten(1).all(1)
        log_alpha = torch.where(finite, torch.clamp(-d_h, max=0.0), torch.full_like(d_h, -math.inf))
        r = torch.rand(total, device=device, generator=generator)
        log_u = torch.log(r if rows is None else r[rows])
        acc = log_u < log_alpha  # Metropolis: accept with probability min(1, exp(-dH)); never a non-finite state
        x = torch.where(_per_chain(acc, x), x1, x)
        grad = torch.where(_per_chain(acc, grad), grad1, grad)
        u, f = torch.where(acc, u1, u), torch.where(acc, f1, f)
        for k, v in zip(names, (acc.float(), u, d_h, f, eps)):
            trace[k][it] = cold(v)
        if it < adapt_steps:
            t = it + 1
            alpha = torch.exp(log_alpha)
            h_bar = (1 - 1 / (t + t0_da)) * h_bar + (target_accept - alpha) / (t + t0_da)
            log_eps = mu - math.sqrt(t) / gamma * h_bar
            w = t ** (-kappa)
            log_eps_bar = w * log_eps + (1 - w) * log_eps_bar
            eps = torch.exp(log_eps_bar) if t == adapt_steps else torch.exp(log_eps)
        if reps > 1:
            r = torch.rand(noise_total or b, reps - 1, device=device, generator=generator)
            r = r if chain_rows is None else r[chain_rows]
            x, grad, u, f, swapped = exchange(x, grad, u, f, ladder, inv_var, it % 2, torch.log(r))
            swaps = swaps + swapped
        done = it + 1
        if callback is not None and callback(HMCStep(it, cold(x), cold(acc), cold(f), cold(d_h), cold(eps))):
            stopped = it + 1 < iters
            break
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    trace = {k: v[:done].cpu() for k, v in trace.items()}
    result = HMCResult(x=cold(x).detach(), accept_rate=trace["accepted"].mean(0) if done else torch.zeros(b),
                       trace=trace, grad_evals=grad_evals * reps, seconds=seconds, iters_done=done, stopped=stopped,
                       swap_rate=_swap_rate(swaps, done, b) if reps > 1 else None)
    result.summary = summarize(result, adapt_steps)
    return result


def _swap_rate(swaps: torch.Tensor, iters: int, chains: int) -> torch.Tensor:
    """Accepted over tried swaps per pair: pair r is tried by every chain in the iterations of its parity."""
    tries = torch.tensor([(iters + 1 - r % 2) // 2 for r in range(swaps.numel())], dtype=torch.float32) * chains
    return swaps.cpu() / tries.clamp_min(1)


def exchange(x: torch.Tensor, grad: torch.Tensor, u: torch.Tensor, f: torch.Tensor, ladder: torch.Tensor,
             inv_var: float, parity: int, log_u: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """One replica-exchange move: the pairs (r, r + 1) with r % 2 == ``parity`` swap states with probability
    min(1, exp((1/T_r - 1/T_{r+1}) (f_{r+1} - f_r))) (the module docstring).

    Rows are chain-major (row c * R + r at T_r); ``grad``, ``u`` and ``f`` are dU/dx, U and f of the rows' states;
    ``log_u`` (C, R - 1) are the log-uniforms of the tests. The gradient and energy of a moved state are re-tempered
    for its new row from the cached f and df/dx: no score evaluation. Returns (x, grad, U, f, accepted swaps per
    pair (R - 1,)).
    """
    reps, chains = ladder.numel(), log_u.shape[0]
    device = x.device
    beta = 1.0 / ladder
    fv = f.view(chains, reps)
    log_a = (beta[:-1] - beta[1:]) * (fv[:, 1:] - fv[:, :-1])
    pair = torch.arange(reps - 1, device=device) % 2 == parity
    acc = pair & (log_u < log_a)  # (C, R - 1); pairs of one parity never overlap
    a = acc.long()
    step = torch.nn.functional.pad(a, (0, 1)) - torch.nn.functional.pad(a, (1, 0))
    src = (torch.arange(reps, device=device) + step + torch.arange(chains, device=device).view(-1, 1) * reps).flatten()
    row_t = ladder.repeat(chains)
    df = (x * inv_var - grad) * _per_chain(row_t, x)  # df/dx, untempered
    moved = (step != 0).flatten()
    x, f = x[src], f[src]  # an unmoved row is its own source
    grad_new = x * inv_var - df[src] / _per_chain(row_t, x)
    u_new = -f / row_t + x.pow(2).flatten(1).sum(1) * (inv_var / 2)
    # unmoved rows keep their cached values bit for bit (the round trip through df would round them)
    return x, torch.where(_per_chain(moved, x), grad_new, grad), torch.where(moved, u_new, u), f, acc.float().sum(0)


def summarize(result: HMCResult, warmup: int = 0, groups: int = 1) -> dict:
    """Acceptance, speed, and (after warm-up) the energy error and ESS / split R-hat of f_y across chains.

    With ``groups`` > 1 the chains are that many equal consecutive groups sampling different targets (one node
    each); ESS and R-hat are computed within each group and the worst group is reported.
    """
    tr = result.trace
    kept = tr["score"][warmup:] if result.iters_done > warmup else tr["score"]
    per_group = kept.chunk(groups, dim=1) if kept.numel() and kept.shape[1] % groups == 0 else (kept,)
    dh = tr["energy_error"][warmup:] if result.iters_done > warmup else tr["energy_error"]  # adaptation's trial
    finite_dh = dh[torch.isfinite(dh)]  # steps can overshoot by many orders: they are not the sampler's error
    b = int(result.x.shape[0])
    return {
        "iters": result.iters_done, "chains": b,
        "accept_rate": float(tr["accepted"].mean()) if result.iters_done else float("nan"),
        "mean_abs_energy_error": float(finite_dh.abs().mean()) if finite_dh.numel() else float("nan"),
        "nonfinite_proposals": int((~torch.isfinite(tr["energy_error"])).sum()),
        "final_score_mean": float(tr["score"][-1].mean()) if result.iters_done else float("nan"),
        "ess_score": _worst([effective_sample_size(g) for g in per_group], min),
        "rhat_score": _worst([split_rhat(g) for g in per_group], max),
        "seconds": result.seconds, "grad_evals": result.grad_evals * b,
        "grad_evals_per_second": result.grad_evals * b / max(result.seconds, 1e-9),
        **({"swap_rate": [round(float(v), 4) for v in result.swap_rate]} if result.swap_rate is not None else {}),
    }


def _worst(values: list[float], pick) -> float:
    """The worst group's value; nan (undefined, e.g. a group stuck at one state) counts as worst."""
    return float("nan") if any(v != v for v in values) else float(pick(values))
