"""MCMC convergence diagnostics over chains: effective sample size and split R-hat (Gelman et al., BDA3 ch. 11)."""

from __future__ import annotations

import math

import torch

__all__ = ["effective_sample_size", "split_rhat"]


def _autocov(x: torch.Tensor) -> torch.Tensor:
    """Autocovariance of each column of x (n, m) by FFT, lags 0..n-1 (biased, divided by n)."""
    n = x.shape[0]
    x = x - x.mean(0)
    size = 1 << (2 * n - 1).bit_length()
    spec = torch.fft.rfft(x, n=size, dim=0)
    return torch.fft.irfft(spec * spec.conj(), n=size, dim=0)[:n] / n


def effective_sample_size(trace: torch.Tensor) -> float:
    """ESS of a scalar over chains, trace (iters, chains), as Stan computes it: the combined autocorrelation
    rho_t = 1 - (W - mean autocov_t) / var+ (so between-chain disagreement lowers the ESS), summed in positive
    pairs (Geyer's initial positive sequence)."""
    x = trace.double()
    n, m = x.shape
    if n < 4:
        return float("nan")
    acov = _autocov(x)
    w = (acov[0] * n / (n - 1)).mean()
    var_plus = w * (n - 1) / n + (x.mean(0).var(unbiased=True) if m > 1 else 0.0)
    if float(var_plus) == 0.0:
        return float(n * m)
    rho = 1.0 - (w - acov.mean(1)) / var_plus
    total = 0.0
    for t in range(1, n - 1, 2):
        pair = float(rho[t] + rho[t + 1])
        if pair < 0:
            break
        total += pair
    return float(n * m / max(1.0 + 2.0 * total, 1e-12))


def split_rhat(trace: torch.Tensor) -> float:
    """Split R-hat of a scalar, trace (iters, chains): ~1 when the chains agree, > 1.01 when they have not mixed."""
    x = trace.double()
    n = x.shape[0] // 2
    if n < 2:
        return float("nan")
    halves = torch.cat([x[:n], x[-n:]], dim=1)
    w = halves.var(0, unbiased=True).mean()
    b = n * halves.mean(0).var(unbiased=True)
    if float(w) == 0.0:
        return float("nan") if float(b) == 0.0 else float("inf")
    var_plus = (n - 1) / n * w + b / n
    return float(math.sqrt(float(var_plus / w)))
