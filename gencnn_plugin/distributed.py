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

__all__ = ["DistContext", "setup", "cleanup", "gather_for_gg", "GG_ESTIMATORS"]

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
