"""One training epoch: the steps, the loss statistics kept on the device, and when (and how) to stop.

Host synchronisation: the device runs ahead of Python as long as nothing reads a value back.
The loop reads back once per *log point*: every ``trainer.log_interval`` optimizer steps, at the
end of the epoch, and where it stops (``--max-steps``, a signal). In between, the loss of every
batch is summed on the device and a non-finite loss is recorded there (its step and value, with
``torch.where``), so a run that diverges stops at the next log point naming the step where the
loss first became non-finite. A step whose loss is finite but whose gradients are not (an
overflow in the backward pass) is recorded the same way, from the gradients' norm: its update
makes the weights NaN while every loss of the window was computed before it. The steps after
it (at most ``log_interval - 1``) train on NaN weights, which are never saved: checkpoints are
written only after a log point found the window finite, and ``last.pt`` keeps the last good
state. (A float16 grad scaler reads its inf/NaN check back in every step and skips such steps;
that is GradScaler's own synchronisation, and its steps are not checked again.)

Stopping under torchrun: ranks must leave at the same step, or the ones still training hang in
DDP's gradient all-reduce. At each log point the ranks exchange one small row of statistics (one
``all_gather``, also the point's one read-back) holding their loss sums, the first non-finite
step, and whether SIGINT/SIGTERM arrived; every rank then takes the same decision from the same
rows: a signal on any rank stops all of them at that step (so under torchrun a signal is acted on
within ``log_interval`` steps; in a single process at once, after the step in flight), a
non-finite loss on any rank stops all of them with the same SegkitError. ``--max-steps`` is the
same number on every rank.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from omegaconf import DictConfig
from torch import Tensor, nn
from torch.utils.data import DataLoader

from segkit.engine.distributed import DistInfo
from segkit.engine.tasks import Task
from segkit.errors import SegkitError

__all__ = ["EpochEnd", "LossWindow", "Run", "StopFlag", "WindowStats", "ignore_foreign_sigterm", "train_epoch"]


class StopFlag:
    """Turns SIGINT/SIGTERM into a flag the loop checks after each step (then saves and exits)."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is not None and signum == signal.SIGINT:  # a second Ctrl-C: stop at once
            raise KeyboardInterrupt
        # A repeated SIGTERM is the same request (SLURM signals every process, and torchrun forwards
        # it once more): the run keeps stopping cleanly and writes its last.pt.
        self.signal = self.signal or signum

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def ignore_foreign_sigterm(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: the worker outlives a SIGTERM sent to the whole job, and
    still leaves when its own parent terminates it.

    SLURM (scancel, the time limit), ``timeout`` and systemd signal every process of the job.
    torch's workers died of it at once, and the training process, which keeps stepping until its
    step ends (under torchrun until the next log point), failed with "DataLoader worker is killed
    by signal" before it could write ``last.pt``. Ignoring SIGTERM outright is not enough: the
    parent's multiprocessing terminates leftover workers with SIGTERM at exit and then waits for
    them. So the worker blocks SIGTERM and a thread takes each one (``sigtimedwait``), exiting
    only when the sender is the parent (torch's own handler tells the two apart the same way, but
    dies of the foreign one). The thread also checks every second that the parent lives, and ends
    the worker when it does not: a parent without a stop flag (``segkit predict``) dies of that
    SIGTERM at once, and a worker that outlived it could hang in its exit, writing its last batch
    into a queue nobody reads. Where ``sigtimedwait`` is missing (macOS, Windows) the worker keeps
    torch's behaviour.
    """
    if not hasattr(signal, "sigtimedwait") or threading.current_thread() is not threading.main_thread():
        return
    parent = os.getppid()

    def watch() -> None:
        while True:
            received = signal.sigtimedwait({signal.SIGTERM}, 1.0)  # None after a second without one
            if (received is not None and received.si_pid == parent) or os.getppid() != parent:
                # Exit code 0, as torch's own worker handler leaves on its parent's SIGTERM: the
                # parent's SIGCHLD check would report any other code as a failed worker.
                os._exit(0)

    # Blocked in this (the worker's only) thread before the watcher starts, so every thread
    # created from now on inherits the block and the watcher alone takes the signal.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    threading.Thread(target=watch, name="segkit-sigterm", daemon=True).start()


@contextlib.contextmanager
def _one_value_per_channel_named(images: Tensor) -> Iterator[None]:
    """BatchNorm's "Expected more than 1 value per channel when training" as a SegkitError naming the fix:
    a batch of one image small enough that the deepest map is 1x1 (or a split that leaves one image)."""
    try:
        yield
    except ValueError as err:
        if "more than 1 value per channel" not in str(err):
            raise
        raise SegkitError(f"a training batch of {images.shape[0]} image(s) of {images.shape[-2]}x{images.shape[-1]} leaves one value "
                          "per channel at the model's deepest BatchNorm, which cannot normalise it in training; set "
                          "trainer.batch_size: 2 or more (with at least 2 training images a process), or train on larger "
                          "images or crops.") from err


@dataclass(frozen=True)
class WindowStats:
    """What a log point read back (the same on every rank)."""

    window_loss: float  # mean batch loss since the previous log point, over all ranks
    epoch_loss_sum: float  # summed batch losses of the epoch so far, over all ranks
    epoch_batches: int  # batches behind epoch_loss_sum, over all ranks
    bad_step: int | None  # the first step with a non-finite loss or gradient norm (any rank), or None
    bad_value: float  # that loss or norm (nan, inf or -inf)
    bad_gradients: bool  # the loss of bad_step was finite, its gradients were not
    signal: bool  # SIGINT/SIGTERM arrived on some rank


def gradient_norm(parameters: Iterable[nn.Parameter]) -> Tensor:
    """The 2-norm of all gradients together, on their device (no read-back): what
    ``clip_grad_norm_`` measures, for a step that does not clip."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(())
    if hasattr(nn.utils, "get_total_norm"):  # torch >= 2.6: fused per device and dtype
        return nn.utils.get_total_norm(grads)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.detach()) for g in grads]))


class LossWindow:
    """Batch losses summed, and the first non-finite one recorded, on the device: no read-back per step."""

    # Row layout of the per-rank statistics exchanged at a log point.
    _FIELDS = 8  # window sum, window count, epoch sum, epoch count, first bad step, its value, signal, bad in gradients

    def __init__(self, device: torch.device) -> None:
        # float64: exact integer steps and counts, and sums of many losses without drift (CPU/CUDA).
        self._zero = torch.zeros((), dtype=torch.float64, device=device)
        self.epoch_sum, self.epoch_count = self._zero.clone(), 0
        self._reset_window()

    def _reset_window(self) -> None:
        self.window_sum, self.window_count = self._zero.clone(), 0
        self.first_bad = torch.full_like(self._zero, float("inf"))  # inf: none yet (min-reduced across ranks)
        self.bad_value = self._zero.clone()
        self.bad_gradients = self._zero.clone()

    def add(self, loss: Tensor, step: int) -> None:
        """Count one batch's loss, which belongs to optimizer step ``step`` (1-based)."""
        value = loss.detach().to(torch.float64)
        self.window_sum += value
        self.epoch_sum += value
        self.window_count += 1
        self.epoch_count += 1
        self._record_if_first_bad(value, step, in_gradients=False)

    def add_gradient_norm(self, norm: Tensor, step: int) -> None:
        """Record step ``step`` (1-based) as the first bad one when its gradients' norm is not finite
        (and no earlier step was bad); its loss, counted by :meth:`add` before, was finite."""
        self._record_if_first_bad(norm.detach().to(torch.float64), step, in_gradients=True)

    def _record_if_first_bad(self, value: Tensor, step: int, in_gradients: bool) -> None:
        """On the device: ``step``, ``value`` and where it was bad, when ``value`` is the window's first non-finite one."""
        first = ~torch.isfinite(value) & torch.isinf(self.first_bad)
        self.first_bad = torch.where(first, step, self.first_bad)
        self.bad_value = torch.where(first, value, self.bad_value)
        self.bad_gradients = torch.where(first, float(in_gradients), self.bad_gradients)

    def sync(self, info: DistInfo, signal: bool) -> WindowStats:
        """Read the window back (once; under DDP one all_gather of every rank's row first) and start a new window."""
        row = torch.stack([self.window_sum, self._zero + self.window_count, self.epoch_sum, self._zero + self.epoch_count,
                           self.first_bad, self.bad_value, self._zero + int(signal), self.bad_gradients])
        rows = row[None]
        if info.enabled:
            gathered = [torch.empty_like(row) for _ in range(info.world_size)]
            dist.all_gather(gathered, row)
            rows = torch.stack(gathered)
        values: list[list[float]] = rows.tolist()  # the log point's one host synchronisation
        self._reset_window()
        window_sum = sum(r[0] for r in values)
        window_count = sum(r[1] for r in values)
        bad = min(values, key=lambda r: (r[4], r[7]))  # the rank that went bad first; at one step, a bad loss before the NaN gradients it causes
        return WindowStats(
            window_loss=window_sum / max(window_count, 1), epoch_loss_sum=sum(r[2] for r in values),
            epoch_batches=int(sum(r[3] for r in values)), bad_step=None if bad[4] == float("inf") else int(bad[4]),
            bad_value=bad[5], bad_gradients=bool(bad[7]), signal=any(r[6] for r in values),
        )


@dataclass
class Run:
    """Everything an epoch of training uses (built once by :func:`segkit.engine.train.train`)."""

    cfg: DictConfig
    info: DistInfo
    device: torch.device
    model: nn.Module  # the bare model (parameters to clip)
    train_model: nn.Module  # what runs forward: the model, DDP-wrapped and/or compiled
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    task: Task
    loader: DataLoader
    stop: StopFlag
    log: Any  # segkit.engine.train._Log
    amp: tuple[bool, torch.dtype]
    channels_last: bool
    frozen_norms: list[nn.Module]
    batches_per_epoch: int
    max_steps: int | None
    progress: bool
    last_path: Any  # named in the non-finite-loss error
    writer: Any  # segkit.engine.checkpoint.CheckpointWriter: its pending last.pt is waited for before that error
    scaling: Callable[..., Tensor]  # (images as the loader gives them, memory format) -> model input (segkit.engine.inputs.DeviceScaling)


@dataclass(frozen=True)
class EpochEnd:
    """Where an epoch's loop ended."""

    step: int
    batch_in_epoch: int  # == batches_per_epoch when the epoch is complete
    interrupted: bool  # a signal (on any rank) stopped it
    loss_sum: float  # summed batch losses, all ranks (for the epoch record)
    loss_batches: int
    seen: int  # images this rank trained on
    seconds: float


def epoch_progress(run: Run, end: EpochEnd) -> dict[str, Any]:
    """What an epoch stopped midway has counted (a collective call under DDP: every rank stops there):
    saved in last.pt, so the resumed epoch's record (train loss, img/s, training metrics) covers the whole epoch."""
    return {"loss_sum": end.loss_sum, "loss_batches": end.loss_batches, "seen": end.seen, "seconds": end.seconds,
            "task": run.task.epoch_state()}


def train_epoch(run: Run, epoch: int, batch_in_epoch: int, step: int, carried: dict[str, Any] | None = None) -> EpochEnd:
    """Train epoch ``epoch`` from batch ``batch_in_epoch`` on; stop at its end, a signal or ``max_steps``.

    ``carried``: :func:`epoch_progress` of the same epoch before a resume, added to this part's counts.
    Raises SegkitError when a loss was not finite (on every rank, at the same log point).
    """
    carried = carried or {}
    cfg, info, device = run.cfg, run.info, run.device
    accum, log_interval = cfg.trainer.grad_accum, cfg.trainer.log_interval
    use_amp, amp_dtype = run.amp
    run.train_model.train()
    for norm in run.frozen_norms:
        norm.eval()
    run.task.start_epoch(device)
    if carried.get("task"):
        run.task.restore_epoch_state(carried["task"])
    window = LossWindow(device)
    stats: WindowStats | None = None
    seen, interrupted, t0 = 0, False, time.perf_counter()
    bar = _progress(run.loader, epoch, cfg.trainer.epochs, enabled=run.progress and info.is_main)
    for batch in bar:  # (images, targets) or (images, targets, weight_map); targets: masks (N, H, W) or labels (N,)
        images, targets, *rest = batch
        # uint8 / [0, 1] -> standardised, on the device, in the model's memory layout
        images = run.scaling(images.to(device, non_blocking=True), torch.channels_last if run.channels_last else torch.contiguous_format)
        targets = targets.to(device, non_blocking=True).long()  # 8-bit masks travel as uint8
        extra = {"weight_map": rest[0].to(device, non_blocking=True)} if rest else {}
        closes_window = (batch_in_epoch + 1) % accum == 0 or batch_in_epoch + 1 == run.batches_per_epoch
        # DDP all-reduces the gradients in every backward: inside a window only its last one needs to
        # (the sums are the same), so the others run under no_sync and the window costs one exchange.
        no_sync = getattr(run.train_model, "no_sync", None)
        with no_sync() if no_sync is not None and not closes_window else contextlib.nullcontext():
            with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp), _one_value_per_channel_named(images):
                loss, logits = run.task.loss(run.loss_fn, run.train_model(images), targets, **extra)
            run.task.observe(logits, targets)
            window.add(loss, step + 1)
            if batch_in_epoch % accum == 0:  # the first batch of an accumulation window
                # Cleared here, just before backward (as torchvision's reference does), not after the
                # step: the new gradients then reuse the freed ones' memory; clearing right after the
                # step cost 5-8 % of CPU throughput in allocations (scripts/benchmark.py training).
                run.optimizer.zero_grad(set_to_none=True)
            # The window's mean loss: its last window in an epoch may hold fewer than accum batches.
            window_start = batch_in_epoch - batch_in_epoch % accum
            run.scaler.scale(loss / min(accum, run.batches_per_epoch - window_start)).backward()
        batch_in_epoch += 1
        seen += images.shape[0]
        if not (batch_in_epoch % accum == 0 or batch_in_epoch == run.batches_per_epoch):
            continue  # stop only between optimizer steps, so no accumulated gradient is lost
        norm = None
        if cfg.trainer.clip_grad_norm:
            run.scaler.unscale_(run.optimizer)
            norm = nn.utils.clip_grad_norm_(run.model.parameters(), cfg.trainer.clip_grad_norm)
        if not run.scaler.is_enabled():  # (a float16 grad scaler skips a step with inf/NaN gradients itself)
            window.add_gradient_norm(gradient_norm(run.model.parameters()) if norm is None else norm, step + 1)
        run.scaler.step(run.optimizer)
        run.scaler.update()
        step_lr = run.optimizer.param_groups[0]["lr"]  # the rate this step ran at (logged), before the schedule moves on
        run.scheduler.step()
        step += 1
        signalled = run.stop.signal is not None
        at_max = run.max_steps is not None and step >= run.max_steps
        log_point = step % log_interval == 0
        # Log points fall on the same step on every rank (same batches per epoch, same max_steps);
        # only a single process may also stop at a step of its own, for a signal only it saw.
        if not (log_point or at_max or batch_in_epoch == run.batches_per_epoch or (signalled and not info.enabled)):
            continue
        stats = window.sync(info, signalled)
        if stats.bad_step is not None:
            if info.enabled:
                dist.barrier()  # every rank raises here, none is left waiting in a collective
            run.writer.wait(run.last_path)  # a last.pt still being written in the background counts
            kept = (f"{run.last_path} keeps the last good state" if run.last_path.exists() else
                    f"no {run.last_path.name} was written yet (it is written every trainer.checkpoint_interval seconds)")
            if stats.bad_gradients:
                raise SegkitError(
                    f"the gradients' norm became {stats.bad_value} at step {stats.bad_step} (epoch {epoch + 1}) while the loss "
                    f"stayed finite; training stopped and {kept}; lower optimizer.lr, or check the loss for a term that is "
                    "not differentiable everywhere (trainer.clip_grad_norm cannot mend an infinite gradient)."
                )
            raise SegkitError(
                f"the loss became {stats.bad_value} at step {stats.bad_step} (epoch {epoch + 1}); training stopped and "
                f"{kept}; lower optimizer.lr or enable trainer.clip_grad_norm."
            )
        if log_point:
            lr = step_lr
            run.log.write({"kind": "train", "epoch": epoch + 1, "step": step, "loss": stats.window_loss, "lr": lr})
            if hasattr(bar, "set_postfix"):  # at log points only: the bar never reads a value back itself
                bar.set_postfix(loss=f"{stats.window_loss:.4f}", lr=f"{lr:.2e}",
                                img_s=f"{seen * info.world_size / (time.perf_counter() - t0):.1f}")
        if stats.signal or at_max:
            interrupted = stats.signal
            break
    return EpochEnd(step=step, batch_in_epoch=batch_in_epoch, interrupted=interrupted,
                    loss_sum=(stats.epoch_loss_sum if stats else 0.0) + carried.get("loss_sum", 0.0),
                    loss_batches=(stats.epoch_batches if stats else 0) + carried.get("loss_batches", 0),
                    seen=seen + carried.get("seen", 0), seconds=time.perf_counter() - t0 + carried.get("seconds", 0.0))


def _progress(loader: DataLoader, epoch: int, epochs: int, enabled: bool) -> Iterator[Any]:
    if not enabled:
        return iter(loader)
    from tqdm import tqdm

    return tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", leave=False, dynamic_ncols=True, file=sys.stderr)
