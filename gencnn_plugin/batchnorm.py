"""BatchNorm during generative-gradient training.

The GG loss (eq. 8) treats the batch as a sample of q(x) and compares each example's score with the others'. With
BatchNorm in training mode every score also depends on the whole batch through its mean and variance, and the
gradient flows through those statistics, so the network can lower the loss by moving batch statistics rather than
by explaining images. :func:`gg_batchnorm` changes how BatchNorm layers normalise while it is active:

- ``batch``: as PyTorch does (batch statistics, gradient through them);
- ``detached``: batch statistics without gradient through them (each score still sees the batch);
- ``frozen``: the running statistics (updated from each batch without gradient, as usual), so one example's score
  does not depend on the other examples of the batch at all.

Usable from any loop: ``with gg_batchnorm(model, "frozen"): loss = GenerativeLoss()(model(x), y)``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

__all__ = ["GG_BATCHNORM", "gg_batchnorm", "after_norm"]

GG_BATCHNORM = ("batch", "detached", "frozen")


def _update_running(bn: nn.modules.batchnorm._BatchNorm, mean: torch.Tensor, var: torch.Tensor, n: int) -> None:
    if not bn.track_running_stats or bn.running_mean is None:
        return
    with torch.no_grad():
        bn.num_batches_tracked += 1
        m = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
        bn.running_mean.mul_(1 - m).add_(mean, alpha=m)
        bn.running_var.mul_(1 - m).add_(var * n / max(n - 1, 1), alpha=m)


def _forward(bn: nn.modules.batchnorm._BatchNorm, how: str):
    def forward(x: torch.Tensor) -> torch.Tensor:
        if not bn.training:
            return type(bn).forward(bn, x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        n = x.numel() // x.shape[1]
        with torch.no_grad():
            mean = x.mean(dims)
            var = x.var(dims, unbiased=False)
        _update_running(bn, mean, var, n)
        if how == "frozen" and bn.running_mean is not None:
            mean, var = bn.running_mean, bn.running_var
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + bn.eps)
        if bn.affine:
            y = y * bn.weight.view(shape) + bn.bias.view(shape)
        return after_norm(bn, y)

    return forward


def after_norm(bn: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """What a BatchNorm layer applies after normalising: timm's ``BatchNormAct2d`` (MobileNetV2, EfficientNet) adds
    dropout and an activation, a plain BatchNorm nothing."""
    drop, act = getattr(bn, "drop", None), getattr(bn, "act", None)
    if isinstance(drop, nn.Module):
        y = drop(y)
    if isinstance(act, nn.Module):
        y = act(y)
    return y


@contextlib.contextmanager
def gg_batchnorm(model: nn.Module, how: str = "batch") -> Iterator[nn.Module]:
    """Within the block, the BatchNorm layers of ``model`` in training mode normalise as ``how`` says (see the
    module docstring); other layers and eval mode are untouched. ``batch`` changes nothing."""
    if how not in GG_BATCHNORM:
        raise ValueError(f"gg_batchnorm must be one of {', '.join(GG_BATCHNORM)}, got {how!r}")
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if how == "batch" or not layers:
        yield model
        return
    from .distributed import GlobalBatchNorm

    if any(isinstance(m, GlobalBatchNorm) for m in layers) and torch.distributed.is_available() \
            and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        raise ValueError(f"gg_batchnorm {how!r} with the global GG estimator under DDP is not supported: its "
                         "statistics would be each process's own; use gg_batchnorm batch or gg_estimator local")
    for bn in layers:
        bn.forward = _forward(bn, how)
    try:
        yield model
    finally:
        for bn in layers:
            del bn.forward  # back to the class's forward
