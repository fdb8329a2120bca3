"""Redirected ReLU gradients for the warm start (Lucid's ``redirected_relu_grad``; Olah et al., "Feature
Visualization", Distill 2017).

A node behind a ReLU is often silent at a draw of q: a channel's centre unit, or the whole channel, is 0, so
d f / d x = 0 and gradient steps never move the image (at SqueezeNet 1.1's last Fire module, most channels' centre
units are 0 at every draw of the ``imagenet_legible`` reference). Inside :func:`redirected_relus`, the backward of
every ``nn.ReLU`` and ``nn.ReLU6`` module checks, per row of the batch, whether its ordinary gradient is zero
everywhere in that layer. Where it is, it passes instead the incoming gradient except where that would push a
clamped input further out (below 0, or above 6 for ReLU6), so the descent brings silent units back into range.
Otherwise the layer's ordinary gradient is used unchanged, bit for bit. So an image whose every ReLU layer passes
some gradient gets its ordinary gradient; in a branched network (a Fire module's two expand paths, a ResNet's skip)
one path can be redirected while another still carries gradient to the image, as in Lucid. The test is per row:
with the jitter or fixed views averaged in the warm start (``warm_augment`` off), a chain's views are separate rows.
The forward is unchanged.

The redirected field is no potential's gradient, so it shapes the warm start only (whose path is not part of the
chain); HMC never sees it. The sign convention is a minimised loss's, as the warm start's U: a positive gradient
pushes an input down. Only modules are redirected: a ``torch.relu`` called inside a model's ``forward`` is not.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial

import torch
from torch import nn

__all__ = ["RedirectedClamp", "redirected_relus"]


class RedirectedClamp(torch.autograd.Function):
    """clamp(x, 0, upper) forward (``upper`` None: a ReLU), in place when ``inplace``; backward as above. Like
    torch's own in-place ReLU it keeps the output, not the input: which side of the range a unit is on is all the
    backward needs."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, upper: float | None, inplace: bool = False) -> torch.Tensor:
        if inplace:
            out = x.clamp_(0, upper)
            ctx.mark_dirty(out)
        else:
            out = x.clamp(0, upper)
        ctx.save_for_backward(out)
        ctx.upper = upper
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (out,) = ctx.saved_tensors
        upper = ctx.upper
        if grad.numel() == 0:
            return grad, None, None
        # torch's own ReLU / ReLU6 backward (the output tells the range as well as the input does)
        plain = (torch.ops.aten.threshold_backward(grad, out, 0) if upper is None
                 else torch.ops.aten.hardtanh_backward(grad, out, 0.0, upper))
        flows = plain.reshape(plain.shape[0] if plain.ndim > 1 else 1, -1).any(1)  # per row: any ordinary gradient
        if _can_wait(grad) and bool(flows.all()):  # nothing to redirect
            return plain, None, None
        blocked = out <= 0 if upper is None else (out <= 0) | (out >= upper)
        back = grad < 0 if upper is None else torch.where(out > 0, grad > 0, grad < 0)  # moves a unit into range
        silent = (~flows).view(-1, *([1] * (grad.ndim - 1))) if grad.ndim > 1 else ~flows
        return torch.where(~blocked | (silent & back), grad, 0.0).reshape(grad.shape), None, None


def _can_wait(t: torch.Tensor) -> bool:
    """Whether reading a value of ``t`` back is free: on the CPU; on a GPU it would wait for the queued work."""
    return t.device.type == "cpu"


def _forward(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return RedirectedClamp.apply(x, 6.0 if isinstance(module, nn.ReLU6) else None, module.inplace)


@contextmanager
def redirected_relus(model: nn.Module | Callable) -> Iterator[int]:
    """Within the block, every ``nn.ReLU`` / ``nn.ReLU6`` submodule of ``model`` computes its output with
    :class:`RedirectedClamp` (its ``forward`` replaced on the instance, so anything else that runs the same modules
    meanwhile, e.g. from another thread, is redirected too); yields how many. A plain function has no submodules to
    redirect. Restored on exit, also after an error."""
    mods = model.modules() if isinstance(model, nn.Module) else ()
    acts = [m for m in mods if isinstance(m, (nn.ReLU, nn.ReLU6)) and "forward" not in vars(m)]
    try:
        for m in acts:
            m.forward = partial(_forward, m)
        yield len(acts)
    finally:
        for m in acts:
            vars(m).pop("forward", None)
