"""Several processes with PyTorch's own engine: torchrun sets RANK / WORLD_SIZE / LOCAL_RANK, we join the group.

NCCL on GPUs, gloo on CPUs; DistributedDataParallel averages gradients. What is ours is only the generative
loss's view of q(x) across ranks (:func:`gather_for_gg`): eq. (8) needs the batch as its sample from q, and under
DDP "the batch" is either each rank's own (``local``) or all ranks' together (``global``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["DistContext", "setup", "cleanup", "gather_for_gg", "GG_ESTIMATORS", "GlobalBatchNorm",
           "convert_global_batchnorm"]

GG_ESTIMATORS = ("local", "global")


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: torch.device) -> tuple[DistContext, torch.device]:
    """Join the process group when launched by torchrun (nanoGPT's way: detected from the environment)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or "RANK" not in os.environ:
        return DistContext(), device
    ctx = DistContext(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    if device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return ctx, device


def cleanup(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def gather_for_gg(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All ranks' logits (with gradients) and labels, in rank order: q(x) = the global batch.

    Every rank then computes the same global loss L. The backward of the differentiable all_gather sums each
    rank's gradient into the owner of the rows, i.e. world_size x dL/d(own logits); DDP's average over ranks then
    leaves exactly dL/dtheta, the single-process gradient of the concatenated batch (tests/test_distributed.py).
    """
    from torch.distributed.nn.functional import all_gather

    all_logits = torch.cat(all_gather(logits), dim=0)
    labels = [torch.empty_like(targets) for _ in range(dist.get_world_size())]
    dist.all_gather(labels, targets)
    return all_logits, torch.cat(labels, dim=0)


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of all processes' batches together, on any backend (gloo on
    CPUs included; torch's SyncBatchNorm is CUDA-only). With the global GG estimator the global batch is q(x)'s
    sample, so it must also be the batch that BatchNorm normalises with: then each process computes exactly the
    one-process forward pass of the concatenated batch, and its gradients (tests/test_distributed.py)."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {x.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return self._after(super().forward(x))
        from torch.distributed.nn.functional import all_reduce

        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = torch.tensor([x.numel() / x.shape[1]], device=x.device, dtype=x.dtype)
        total = all_reduce(torch.cat([x.sum(dims), count]))  # differentiable: backward sums the gradients
        n = total[-1]
        mean = total[:-1] / n
        var = all_reduce((x - mean.view(shape)).pow(2).sum(dims)) / n  # biased, as BatchNorm normalises
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked + 1)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * n / (n - 1).clamp_min(1), alpha=m)
                self.num_batches_tracked += 1
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return self._after(y)

    def _after(self, y: torch.Tensor) -> torch.Tensor:
        """A converted timm BatchNormAct2d keeps its dropout and activation (children ``drop`` and ``act``)."""
        from .batchnorm import after_norm

        return after_norm(self, y)


def convert_global_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm1d/2d/3d in ``module`` by a :class:`GlobalBatchNorm` with the same parameters and
    buffers (as ``nn.SyncBatchNorm.convert_sync_batchnorm`` does)."""
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlobalBatchNorm):
        out = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats)
        if module.affine:
            with torch.no_grad():
                out.weight, out.bias = module.weight, module.bias
        out.running_mean, out.running_var = module.running_mean, module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
    for name, child in module.named_children():  # a BatchNormAct2d's drop and act come along as children
        out.add_module(name, convert_global_batchnorm(child))
    return out
