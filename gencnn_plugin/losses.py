"""The generative loss layer of the paper (section 3.3, eqs. 8-10) and its importance-sampling diagnostic.

For a batch of logits ``f`` (n, K) and labels ``y``, the batch itself is the sample from the reference q(x):

    l_i = -f_{y_i}(x_i) + log sum_j exp f_{y_i}(x_j) - log n                                  (eq. 8, batch form)

i.e. the cross-entropy of row i of ``S = f[:, y].T`` (S_ij = f_{y_i}(x_j)) against target j = i. Its gradient
with respect to f_y(x_j) is eq. (10): 0 for y != y_i, -(1{j=i} - W_ij) for y = y_i, with W_ij = softmax_j S_ij.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["generative_loss", "GenerativeLoss", "importance_ess", "batch_scores"]


def batch_scores(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """S with S[i, j] = f_{y_i}(x_j): each example's class scored on every image of the batch (n, n)."""
    if logits.ndim != 2:
        raise ValueError(f"logits must have shape (n, K), got {tuple(logits.shape)}")
    if targets.ndim != 1 or targets.shape[0] != logits.shape[0]:
        raise ValueError(f"targets must have shape ({logits.shape[0]},), got {tuple(targets.shape)}")
    if targets.device.type == "cpu" and targets.numel() and (targets.min() < 0 or targets.max() >= logits.shape[1]):
        # on CPU the check is free; on CUDA it would sync, and index_select asserts on the device anyway
        raise ValueError(f"labels must be in [0, {logits.shape[1]}), got min {int(targets.min())}, "
                         f"max {int(targets.max())}")
    return logits.index_select(1, targets).t()


def generative_loss(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Negative generative log-likelihood -log p_{y_i}(x_i), with the batch as importance sample of q(x).

    A drop-in replacement for ``F.cross_entropy(logits, targets)``: the softmax runs over the batch axis (images)
    for a fixed class instead of over the class axis for a fixed image. Defined for n = 1 (loss 0, no gradient).
    """
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    scores = batch_scores(logits, targets)
    n = scores.shape[0]
    # cross_entropy autocasts to float32, so the logsumexp is stable under bf16/fp16 autocast; letting it reduce
    # (rather than reducing per-example losses) saves small kernels, which is most of this layer's cost.
    loss = F.cross_entropy(scores, torch.arange(n, device=scores.device), reduction=reduction)
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
    scores = batch_scores(logits.detach().float(), targets)
    n = scores.shape[0]
    log_ess = 2 * torch.logsumexp(scores, dim=1) - torch.logsumexp(2 * scores, dim=1)
    ess = torch.exp(log_ess) / n
    if reduction == "mean":
        return ess.mean()
    if reduction == "none":
        return ess
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
