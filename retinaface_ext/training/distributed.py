"""DistributedDataParallel plumbing: one process per GPU under torchrun (gloo on CPU)."""
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self):
        return self.world_size > 1

    @property
    def is_main(self):
        return self.rank == 0


def init_distributed(device=None) -> DistContext:
    """Reads torchrun's RANK / WORLD_SIZE / LOCAL_RANK and joins the process group.

    Backend: NCCL when training on CUDA, gloo otherwise. Each process uses the
    GPU of its LOCAL_RANK. Without those variables this is a single process.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank if device.index is None else device.index)
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world_size)
    return DistContext(rank, world_size, local_rank, device)


def all_reduce_mean(tensor, context: DistContext):
    """Mean over processes (for logging; a no-op in one process)."""
    if not context.enabled:
        return tensor
    tensor = tensor.clone()
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor / context.world_size


def barrier(context: DistContext):
    if context.enabled:
        dist.barrier()


def cleanup(context: DistContext):
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()
