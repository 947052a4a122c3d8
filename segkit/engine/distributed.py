"""torchrun / DDP plumbing: process-group setup from torchrun's environment, rank helpers, sampling.

segkit does not launch processes: ``torchrun --nproc_per_node G scripts/train.py ...`` does, and
sets RANK, WORLD_SIZE, LOCAL_RANK and MASTER_ADDR/PORT. :func:`init_distributed` reads them (NCCL
on CUDA, gloo on CPU); without them training runs in one process.

Ranks must leave together: a rank that raises while the others wait in a collective hangs the
job. :func:`main_then_share` runs a rank-0-only step (e.g. "the run directory already holds a
run") and makes every rank raise its error; :func:`any_rank` agrees on a flag (a stop request);
:func:`broadcast_batchnorm_buffers` gives every rank rank 0's BatchNorm statistics before
validation, so that all ranks score the same model.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sized
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Sampler

from segkit.errors import SegkitError

__all__ = ["DistInfo", "SeededSampler", "any_rank", "broadcast_batchnorm_buffers", "cleanup_distributed", "elastic_restart", "init_distributed",
           "is_main_process", "main_then_share", "resume_batch"]


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
    """Destroy the process group if one is initialised (a no-op in a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_main_process() -> bool:
    """True in rank 0 of an initialised process group, and in a single process."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def main_then_share(fn: Callable[[], object], info: DistInfo) -> None:
    """Run ``fn`` on rank 0 only; if it raises, every rank raises.

    Rank 0 re-raises its own exception; the other ranks raise a :class:`SegkitError` with the same
    message (a ``RuntimeError`` naming rank 0's exception for anything that is not a user error)
    instead of waiting forever in the next collective. The broadcast is also the barrier that
    makes the others wait until rank 0 is done (e.g. has written files they read).
    """
    error: BaseException | None = None
    if info.is_main:
        try:
            fn()
        except Exception as err:  # shared below, then re-raised on rank 0 as it was
            error = err
    if info.enabled:
        # Plain values, not the exception object (it may not pickle); the others' entry is overwritten.
        message: list[tuple[bool, str] | None] = [None]
        if error is not None:
            user_error = isinstance(error, SegkitError)
            message = [(user_error, str(error) if user_error else f"{type(error).__name__}: {error}")]
        dist.broadcast_object_list(message, src=0)
        if error is None and message[0] is not None:
            user_error, text = message[0]
            if user_error:
                raise SegkitError(text)
            raise RuntimeError(f"rank 0 failed ({text}); see its traceback.")
    if error is not None:
        raise error


def any_rank(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """Whether ``flag`` is set on any rank (one all-reduce under DDP; ``flag`` itself otherwise)."""
    if not info.enabled:
        return flag
    value = torch.tensor([int(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def elastic_restart(info: DistInfo, device: torch.device) -> bool:
    """Whether torchrun (``--max-restarts``) started this group again after a failure, on any rank.

    torchrun counts restarts per node (``TORCHELASTIC_RESTART_COUNT``): on a node whose own
    workers did not fail the count can stay 0 while the other nodes' rises (pytorch/pytorch#108158),
    so the ranks agree by one all-reduce on ``device`` (this process's GPU under NCCL), and a rank
    0 on the healthy node continues the run too instead of refusing its directory.
    """
    restarted = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) > 0
    return any_rank(restarted, info, device)


def broadcast_batchnorm_buffers(model: nn.Module, info: DistInfo) -> None:
    """Copy rank 0's BatchNorm running statistics (mean, var, num_batches_tracked) to every rank.

    Without SyncBatchNorm each rank updates its running statistics from its own batches (DDP
    broadcasts buffers at the start of each forward, so they drift apart again within the step):
    validating then scores a slightly different model on each rank and sums their confusion
    matrices. After this every rank holds the model rank 0 would save.
    """
    if not info.enabled:
        return
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            for buffer in module.buffers(recurse=False):
                dist.broadcast(buffer, src=0)


def resume_batch(batch_in_epoch: int, batch_size: int, accum: int, saved_world_size: int, world_size: int) -> int:
    """Where an epoch stopped on ``saved_world_size`` ranks continues on ``world_size`` ranks (in batches per rank).

    :class:`SeededSampler` deals the epoch's order round-robin, so ``k`` batches on each of ``W``
    ranks consumed exactly the first ``k * batch_size * W`` samples of the order, whatever ``W``. On
    another number of ranks the run continues from that sample, rounded down to a whole
    accumulation window: at most ``world_size * batch_size * accum`` samples are seen twice.
    """
    if saved_world_size == world_size or batch_in_epoch == 0:
        return batch_in_epoch
    consumed = batch_in_epoch * batch_size * saved_world_size
    batches = consumed // (batch_size * world_size)
    return batches - batches % accum


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
