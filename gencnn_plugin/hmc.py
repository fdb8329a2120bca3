"""Hamiltonian Monte Carlo for p_y(x) ~ exp(f_y(x)) q(x), q = N(0, sigma^2 I) (paper section 3.4).

U(x) = -f_y(x) + |x|^2 / (2 sigma^2), K(phi) = |phi|^2 / (2 m), H = U + K. Chains are the batch dimension: one
forward/backward per leapfrog step serves every chain, and the Metropolis test runs per chain on the device with no
host synchronisation inside the loop. Energies and the accept test are float32 even when the score runs in bf16/fp16.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .diagnostics import effective_sample_size, split_rhat

__all__ = ["HMCConfig", "HMCResult", "HMCStep", "hmc_sample", "leapfrog", "potential"]

ScoreFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class HMCConfig:
    """Sampler settings; the defaults are the paper's LeNet setting (section 4.2)."""

    iters: int = 100
    leapfrog_steps: int = 50
    step_size: float = 0.1
    mass: float = 0.01
    sigma: float = 1.0  # std of the Gaussian reference q in the model's normalised input space
    chains: int = 16
    seed: int = 0
    adapt_steps: int = 0  # dual-averaging step-size adaptation during the first iterations (0: off, the paper)
    target_accept: float = 0.65
    mala: bool = False  # Langevin: one leapfrog step per iteration (MALA)
    precision: str = "fp32"  # fp32 | bf16 | fp16: the score's precision; energies stay float32

    def __post_init__(self) -> None:
        for key in ("iters", "leapfrog_steps", "chains"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        for key in ("step_size", "mass", "sigma"):
            value = getattr(self, key)
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{key} must be a positive number, got {value}")
        if self.adapt_steps < 0 or not 0 < self.target_accept < 1:
            raise ValueError("adapt_steps must be >= 0 and target_accept in (0, 1)")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be fp32, bf16 or fp16, got {self.precision!r}")


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


def potential(score_fn: ScoreFn, x: torch.Tensor, sigma: float, dtype: torch.dtype | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """U(x) = -f(x) + |x|^2 / (2 sigma^2) per chain, dU/dx = -df/dx + x / sigma^2, and f(x); all float32.

    Only f goes through autograd: the Gaussian term's gradient is written out. Chains are independent, so
    d(sum_b f_b)/dx_b = df_b/dx_b.
    """
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        ctx = torch.autocast(x.device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
        with ctx:
            f = score_fn(xg).float()
        df = torch.autograd.grad(f.sum(), xg)[0] if f.requires_grad else torch.zeros_like(xg)
    x = x.detach().float()
    u = -f.detach() + x.pow(2).flatten(1).sum(1) / (2 * sigma**2)
    return u, x / sigma**2 - df.float(), f.detach()


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
    iters: int = 100,
    leapfrog_steps: int = 50,
    step_size: float = 0.1,
    mass: float = 0.01,
    sigma: float = 1.0,
    generator: torch.Generator | None = None,
    callback: Callable[[HMCStep], bool | None] | None = None,
    adapt_steps: int = 0,
    target_accept: float = 0.65,
    precision: str = "fp32",
    stop: Callable[[], bool] | None = None,
    noise_rows: torch.Tensor | None = None,
    noise_total: int | None = None,
) -> HMCResult:
    """Draw ``B = x0.shape[0]`` chains from exp(f(x)) N(x; 0, sigma^2 I) by HMC, starting at ``x0``.

    ``score_fn`` maps (B, ...) to (B,). ``callback(step)`` runs after every iteration (it may read the states for a
    live view) and stops the run by returning True; ``stop()`` is polled after every leapfrog step so a GUI can
    interrupt mid-trajectory (the unfinished proposal is dropped). ``adapt_steps > 0`` tunes each chain's step
    size by dual averaging (Hoffman & Gelman 2014) towards ``target_accept`` during those first iterations only.
    ``noise_rows`` / ``noise_total``: these chains are rows ``noise_rows`` of a run of ``noise_total`` chains; the
    random numbers are drawn for all of them and indexed, so chains split over devices reproduce the one-device run.
    """
    HMCConfig(iters=iters, leapfrog_steps=leapfrog_steps, step_size=step_size, mass=mass, sigma=sigma,
              adapt_steps=adapt_steps, target_accept=target_accept, precision=precision)  # validates
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    device, b = x0.device, x0.shape[0]
    if generator is None:
        generator = torch.Generator(device=device).manual_seed(0)

    def energy(x):
        return potential(score_fn, x, sigma, dtype)

    t0 = time.perf_counter()
    x = x0.detach().float().clone()
    u, grad, f = energy(x)
    grad = torch.where(torch.isfinite(grad), grad, torch.zeros_like(grad))
    eps = torch.full((b,), float(step_size), device=device)
    # dual averaging state (Hoffman & Gelman 2014, algorithm 5), per chain
    mu, gamma, t0_da, kappa = math.log(10 * step_size), 0.05, 10.0, 0.75
    h_bar = torch.zeros(b, device=device)
    log_eps_bar = torch.zeros(b, device=device)

    names = ("accepted", "potential", "energy_error", "score", "step_size")
    trace = {k: torch.zeros(iters, b, device=device) for k in names}
    grad_evals, done, stopped = 1, 0, False
    for it in range(iters):
        phi = torch.randn((noise_total or b, *x.shape[1:]), device=device, generator=generator)
        phi = (phi if noise_rows is None else phi[noise_rows]) * math.sqrt(mass)
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
        r = torch.rand(noise_total or b, device=device, generator=generator)
        log_u = torch.log(r if noise_rows is None else r[noise_rows])
        acc = log_u < log_alpha  # Metropolis: accept with probability min(1, exp(-dH)); never a non-finite state
        x = torch.where(_per_chain(acc, x), x1, x)
        grad = torch.where(_per_chain(acc, grad), grad1, grad)
        u, f = torch.where(acc, u1, u), torch.where(acc, f1, f)
        for k, v in zip(names, (acc.float(), u, d_h, f, eps)):
            trace[k][it] = v
        if it < adapt_steps:
            t = it + 1
            alpha = torch.exp(log_alpha)
            h_bar = (1 - 1 / (t + t0_da)) * h_bar + (target_accept - alpha) / (t + t0_da)
            log_eps = mu - math.sqrt(t) / gamma * h_bar
            w = t ** (-kappa)
            log_eps_bar = w * log_eps + (1 - w) * log_eps_bar
            eps = torch.exp(log_eps_bar) if t == adapt_steps else torch.exp(log_eps)
        done = it + 1
        if callback is not None and callback(HMCStep(it, x, acc, f, d_h, eps)):
            stopped = it + 1 < iters
            break
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    trace = {k: v[:done].cpu() for k, v in trace.items()}
    result = HMCResult(x=x.detach(), accept_rate=trace["accepted"].mean(0) if done else torch.zeros(b),
                       trace=trace, grad_evals=grad_evals, seconds=seconds, iters_done=done, stopped=stopped)
    result.summary = summarize(result, adapt_steps)
    return result


def summarize(result: HMCResult, warmup: int = 0, groups: int = 1) -> dict:
    """Acceptance, energy error, speed, and ESS / split R-hat of f_y across chains (after warm-up).

    With ``groups`` > 1 the chains are that many equal consecutive groups sampling different targets (one node
    each); ESS and R-hat are computed within each group and the worst group is reported.
    """
    tr = result.trace
    kept = tr["score"][warmup:] if result.iters_done > warmup else tr["score"]
    per_group = kept.chunk(groups, dim=1) if kept.numel() and kept.shape[1] % groups == 0 else (kept,)
    finite_dh = tr["energy_error"][torch.isfinite(tr["energy_error"])]
    b = int(result.x.shape[0])
    return {
        "iters": result.iters_done, "chains": b,
        "accept_rate": float(tr["accepted"].mean()) if result.iters_done else float("nan"),
        "mean_abs_energy_error": float(finite_dh.abs().mean()) if finite_dh.numel() else float("nan"),
        "nonfinite_proposals": int((~torch.isfinite(tr["energy_error"])).sum()),
        "final_score_mean": float(tr["score"][-1].mean()) if result.iters_done else float("nan"),
        "ess_score": min(effective_sample_size(g) for g in per_group),
        "rhat_score": max(split_rhat(g) for g in per_group),
        "seconds": result.seconds, "grad_evals": result.grad_evals * b,
        "grad_evals_per_second": result.grad_evals * b / max(result.seconds, 1e-9),
    }
