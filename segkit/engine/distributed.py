"""torchrun / DDP plumbing: process-group setup from torchrun's environment, rank helpers, sampling.

segkit does not launch processes: ``torchrun --nproc_per_node G scripts/train.py ...`` does, and
sets RANK, WORLD_SIZE, LOCAL_RANK and MASTER_ADDR/PORT. :func:`init_distributed` reads them (NCCL
on CUDA, gloo on CPU); without them training runs in one process.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sized
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

__all__ = ["DistInfo", "SeededSampler", "cleanup_distributed", "init_distributed", "is_main_process"]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group torchrun describes in the environment (no-op in a single process)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank)


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_main_process() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


class SeededSampler(Sampler[tuple[int, int]]):
    """Yields ``(index, seed)`` pairs: a shuffled (or ordered) epoch, sharded across ranks.

    The order of epoch ``e`` depends only on ``(seed, e)`` and each sample's augmentation seed
    only on ``(seed, e, index)``, so a run resumed in the middle of an epoch sees exactly the
    samples, in the order and with the augmentations, that the uninterrupted run saw, whatever
    the number of data-loader workers. ``start`` skips the first batches of the epoch already
    trained on (counted in samples of this rank).

    With ``world_size`` ranks the epoch is padded by repeating samples to a multiple of
    ``world_size`` (as DistributedSampler does) when ``pad`` is set — training only; evaluation
    uses ``pad=False`` so no sample is counted twice.
    """

    def __init__(self, data: Sized, shuffle: bool, seed: int, rank: int = 0, world_size: int = 1, pad: bool = True) -> None:
        self.n = len(data)
        self.shuffle, self.seed = shuffle, seed
        self.rank, self.world_size, self.pad = rank, world_size, pad
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def _indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        if self.pad and self.world_size > 1 and self.n % self.world_size:
            order += order[: self.world_size - self.n % self.world_size]
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        base = (self.seed * 1_000_003 + self.epoch) * 10_000_019
        for index in self._indices()[self.start :]:
            yield index, (base + index) % (2**31)

    def __len__(self) -> int:
        return max(len(self._indices()) - self.start, 0)
