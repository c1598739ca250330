"""Data-parallel training on PyTorch's own engine (``torchrun``): gloo on CPUs, nccl on GPUs.

Every rank draws the same global batches from the same seeded generator and keeps its slice,
so N processes see exactly the data one process would with the same global batch size, and
DistributedDataParallel's gradient average equals the single-process gradient. Evaluation is
split across ranks and the head's metrics are fed every rank's results. Only rank 0 prints and
writes files.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.distributed as dist

from .batch import Batch
from .errors import ConfigError


@dataclass
class Group:
    """This process's place in the job: rank ``rank`` of ``world`` (1 without torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        """Whether this process prints and writes (rank 0)."""
        return self.rank == 0

    def shard(self, batches: Iterator[Batch]) -> Iterator[Batch]:
        """This rank's contiguous slice of each global batch, padding trimmed to its widest image."""
        for batch in batches:
            if not self.enabled:
                yield batch
                continue
            size = -(-len(batch) // self.world)
            part = batch.select(slice(self.rank * size, (self.rank + 1) * size))
            if len(part):
                yield part

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """``value`` summed over ranks (itself with one process)."""
        if self.enabled:
            value = value.clone()
            dist.all_reduce(value)
        return value

    def mean(self, total: torch.Tensor, count: int) -> tuple[float, int]:
        """``total / count`` with both summed over ranks (a mean over every rank's samples), and
        that summed count; one all-reduce, on ``total``'s device as NCCL needs."""
        totals = self.sum(torch.stack([total.float(), torch.tensor(float(count), device=total.device)]))
        return float(totals[0] / totals[1].clamp(min=1)), int(totals[1])

    def gather(self, item: Any) -> list[Any]:
        """Every rank's ``item``, in rank order, on every rank."""
        if not self.enabled:
            return [item]
        items: list[Any] = [None] * self.world
        dist.all_gather_object(items, item)
        return items

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def join(device: str) -> tuple[Group, str]:
    """Join the torchrun job described by the environment, if any; return it and the device to use.

    On GPUs each rank takes ``cuda:LOCAL_RANK`` with nccl; on CPUs gloo.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Group(), device
    group = Group(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    use_cuda = device in ("auto", "cuda") and torch.cuda.is_available()
    if device.startswith("cuda:"):
        raise ConfigError(f"trainer.device: '{device}' pins one GPU, but torchrun gives each rank its own; use auto or cuda")
    if use_cuda:
        count = torch.cuda.device_count()
        if group.local_rank >= count:
            raise ConfigError(f"torchrun started local rank {group.local_rank}, but this machine has {count} GPU(s): use --nproc-per-node {count} (one process per GPU) or trainer.device=cpu")
        torch.cuda.set_device(group.local_rank)
        device = f"cuda:{group.local_rank}"
    elif device == "auto":
        device = "cpu"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(minutes=30))
    return group, device
