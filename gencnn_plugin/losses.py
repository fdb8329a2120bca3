"""The generative loss layer of the paper (section 3.3, eqs. 8-10) and its importance-sampling diagnostic.

For a batch of logits ``f`` (n, K) and labels ``y``, the batch itself is the sample from the reference q(x):

    l_i = -f_{y_i}(x_i) + log sum_j exp f_{y_i}(x_j) - log n                                  (eq. 8, batch form)
        = -log_softmax(f, dim=0)[i, y_i] - log n

i.e. cross-entropy with the softmax taken over the batch axis (images) instead of the class axis. Its gradient
with respect to f_y(x_j) is eq. (10): 0 for y != y_i, -(1{j=i} - W_ij) for y = y_i, with W_ij = softmax_j f_{y_i}(x_j).
The softmax over images depends on the class only, so the layer costs O(nK), like cross-entropy, not O(n^2).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["generative_loss", "GenerativeLoss", "importance_ess", "batch_scores"]


def _check(logits: torch.Tensor, targets: torch.Tensor) -> None:
    if logits.ndim != 2:
        raise ValueError(f"logits must have shape (n, K), got {tuple(logits.shape)}")
    if targets.ndim != 1 or targets.shape[0] != logits.shape[0]:
        raise ValueError(f"targets must have shape ({logits.shape[0]},), got {tuple(targets.shape)}")
    if targets.device.type == "cpu" and targets.numel() and (targets.min() < 0 or targets.max() >= logits.shape[1]):
        # on CPU the check is free; on CUDA it would sync, and nll_loss asserts on the device anyway
        raise ValueError(f"labels must be in [0, {logits.shape[1]}), got min {int(targets.min())}, "
                         f"max {int(targets.max())}")


def batch_scores(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """S with S[i, j] = f_{y_i}(x_j): each example's class scored on every image of the batch (n, n).

    The explicit matrix of eq. (8), for inspection and tests; the loss itself never builds it.
    """
    _check(logits, targets)
    return logits.index_select(1, targets).t()


def generative_loss(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Negative generative log-likelihood -log p_{y_i}(x_i), with the batch as importance sample of q(x).

    A drop-in replacement for ``F.cross_entropy(logits, targets)``: the softmax runs over the batch axis (images)
    for a fixed class instead of over the class axis for a fixed image. Defined for n = 1 (loss 0, no gradient).
    """
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    _check(logits, targets)
    n = logits.shape[0]
    # log_softmax autocasts to float32, so the logsumexp is stable under bf16/fp16 autocast; two kernels, as DG's.
    loss = F.nll_loss(F.log_softmax(logits, dim=0), targets, reduction=reduction)
    return loss - (n * math.log(n) if reduction == "sum" else math.log(n))


class GenerativeLoss(nn.Module):
    """``nn.Module`` form of :func:`generative_loss`, used where ``nn.CrossEntropyLoss()`` would be."""

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = reduction

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return generative_loss(logits, targets, self.reduction)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"


@torch.no_grad()
def importance_ess(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Effective sample size of the importance weights W_j of eq. (7), divided by n, in [1/n, 1].

    ESS_i = (sum_j w_ij)^2 / sum_j w_ij^2 with w_ij = exp f_{y_i}(x_j). Near 1 while p_y is close to q (GG is
    informative); it dwindles as the classes separate, the paper's signal to switch from GG to DG (section 3.2).
    """
    _check(logits, targets)
    n = logits.shape[0]
    # ESS_i = 1 / sum_j W_ij^2 with W = softmax over images of class y_i's scores: one value per class, O(nK).
    log_w = F.log_softmax(logits.detach().float(), dim=0)
    ess = torch.exp(-torch.logsumexp(2 * log_w, dim=0)).index_select(0, targets) / n
    if reduction == "mean":
        return ess.mean()
    if reduction == "none":
        return ess
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
