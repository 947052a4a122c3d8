"""The training loop: one function, ``train(cfg, out_dir)``, in the manner of torchvision's reference.

What a run does, in order: pick the device and join the torchrun process group if there is one;
seed; build the datasets, the model (DDP, SyncBatchNorm, channels_last, torch.compile as the
config asks), the loss, the optimizer and the per-iteration schedule; resume from ``last.pt`` if
asked; then for each epoch train (:func:`segkit.engine.loop.train_epoch`: AMP on CUDA, gradient
accumulation and clipping, one host synchronisation per log interval), validate every
``val_interval`` epochs (rank 0's BatchNorm statistics on every rank first), and write ``last.pt``,
``best.pt`` (best validation score), ``metrics.jsonl`` and the plots. Only rank 0 writes files and
prints.

Checkpoints: ``last.pt`` (everything resume needs: model, optimizer, schedule, grad scaler, RNG
states, position) is written at the end of an epoch when ``trainer.checkpoint_interval`` seconds
have passed since the previous one (0: every epoch), and always at the end of the run, on
SIGINT/SIGTERM and at ``--max-steps``. ``best.pt`` holds what evaluation, deployment and
fine-tuning need (model weights, config with its normalisation, metrics, epoch and step), not the
optimizer state, so it is about a third of ``last.pt`` with AdamW; ``--resume`` refuses one.
Both are written by a background thread (:class:`~segkit.engine.checkpoint.CheckpointWriter`:
copied to the CPU first, then written, fsynced and renamed), so the next step does not wait; the
run waits for pending writes before it returns. On resume the best score is the higher of
``last.pt``'s and ``best.pt``'s, so a ``best.pt`` written after the ``last.pt`` resumed from is
never replaced by a worse model.

Under torchrun the ranks leave together: a rank-0-only check (the run directory already holds a
run) raises on every rank; a signal or a non-finite loss on any rank stops every rank at the same
step (:mod:`segkit.engine.loop`); ``last.pt`` is written once, by rank 0; every rank exits with
the same code (130 after a signal, 2 for a SegkitError, from ``segkit train``).

The ``task`` (:mod:`segkit.engine.tasks`) supplies what differs: segmentation scores with the
ConfusionMatrix and keeps the best mIoU; classification (``task: classification``) adds the
auxiliary heads' losses, logs training and validation top-1 error, and keeps the best top-1
accuracy. Checkpoints hold ``best_score`` (and ``best_miou`` for segmentation, as before).

Exact resume: the data order and every sample's augmentation are functions of (seed, epoch,
index) (:class:`~segkit.engine.distributed.SeededSampler`), the data loader draws from its own
generator rather than torch's global one, and the checkpoint carries every RNG state, the step
within the epoch, optimizer, schedule and grad-scaler states. On CPU a run stopped after k steps
and resumed ends bit-identical to an uninterrupted run (tested). A run may also resume with other
settings (CPU or GPU, float16 or bfloat16 AMP, another number of GPUs or processes): it continues,
not bit-identically, and says what changed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor, nn
from torch.utils.data import DataLoader

from segkit.config import save_config, to_dict
from segkit.engine.amp import resolve_amp
from segkit.engine.builders import build_datasets, build_loss_fn, build_model_from_config, resolve_normalisation
from segkit.engine.checkpoint import CheckpointWriter, capture_rng, load_checkpoint, restore_grad_scaler, restore_rng
from segkit.engine.distributed import (DistInfo, SeededSampler, any_rank, broadcast_batchnorm_buffers, cleanup_distributed,
                                       elastic_restart, init_distributed, main_then_share, resume_batch)
from segkit.engine.inputs import collate_interleaved
from segkit.engine.loop import Run, StopFlag, epoch_progress, ignore_foreign_sigterm, train_epoch
from segkit.engine.optim import build_optimizer, build_scheduler
from segkit.engine.report import json_safe
from segkit.engine.tasks import make_task
from segkit.engine.validation import score_validation_split
from segkit.errors import SegkitError

__all__ = ["TrainResult", "resolve_device", "train"]

logger = logging.getLogger("segkit")

_PLOT_EVERY_S = 30.0  # curves.png redrawn at most this often during a run (always at its last validation)


@dataclass
class TrainResult:
    out_dir: Path
    steps: int
    epochs_done: int
    best_miou: float | None  # segmentation; None for classification
    last_metrics: dict[str, Any] = field(default_factory=dict)
    interrupted: bool = False
    best_score: float | None = None  # the task's score: mIoU, or top-1 accuracy for classification
    score_key: str = "miou"


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise SegkitError(f"device {name!r} is not a device; use auto, cpu, cuda or cuda:N.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SegkitError(f"device {name} was asked for but PyTorch sees no CUDA GPU; use device cpu (--device cpu).")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise SegkitError(f"device {name} was asked for but PyTorch sees {torch.cuda.device_count()} CUDA GPU(s); use cuda:0 to cuda:{torch.cuda.device_count() - 1}.")
    return device


def _use_channels_last(cfg: DictConfig, device: torch.device) -> bool:
    """channels_last pays on CUDA tensor cores; on the CPU it is left off."""
    return device.type == "cuda" and cfg.trainer.channels_last


def _amp_settings(cfg: DictConfig, device: torch.device) -> tuple[bool, torch.dtype, bool]:
    """(use autocast, its dtype, use a grad scaler): :func:`segkit.engine.amp.resolve_amp` (bfloat16 only where native)."""
    return resolve_amp(cfg.trainer.amp, cfg.trainer.amp_dtype, device)


def _device_scaling(train_set: Any) -> Callable[[Tensor], Tensor]:
    """Segmentation: the loader's workers only decode and augment (``device_scaling``); the step
    scales and standardises on the device. Classification datasets give model input already."""
    from segkit.data.base import SegmentationDataset
    from segkit.engine.inputs import DeviceScaling

    base = getattr(train_set, "dataset", train_set)
    if not isinstance(base, SegmentationDataset):
        return lambda images, memory_format=torch.contiguous_format: images.contiguous(memory_format=memory_format)
    base.device_scaling = True
    return DeviceScaling.of(base)


def _frozen_norms(model: nn.Module) -> list[nn.Module]:
    """BatchNorm layers whose parameters are all frozen: they run in eval mode (fixed statistics)."""
    norms = (nn.modules.batchnorm._BatchNorm,)
    return [m for m in model.modules() if isinstance(m, norms) and m.affine and not any(p.requires_grad for p in m.parameters())]


class _Log:
    """Metrics log (JSON lines), optional TensorBoard scalars and console lines, rank 0 only."""

    def __init__(self, out_dir: Path, enabled: bool, tensorboard: bool = False) -> None:
        self.enabled = enabled
        self.path = out_dir / "metrics.jsonl"
        self.writer = _tensorboard_writer(out_dir / "tensorboard") if enabled and tensorboard else None

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record, allow_nan=False, default=_json_default) + "\n")
        if self.writer is not None:  # train/loss, train/lr per log interval; epoch/val_miou, ... per epoch
            for key, value in record.items():
                if key not in ("kind", "epoch", "step") and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.writer.add_scalar(f"{record['kind']}/{key}", value, record["step"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def print(self, line: str) -> None:
        if self.enabled:
            print(line, flush=True)


def _tensorboard_writer(log_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:  # torch's writer needs the tensorboard package
        raise SegkitError("output.tensorboard is true but the tensorboard package is not installed; "
                          "pip install 'segkit[tensorboard]' or set output.tensorboard=false.") from err
    return SummaryWriter(log_dir=str(log_dir))


def _json_default(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.tolist()
    raise TypeError(type(value).__name__)


def train(
    cfg: DictConfig,
    out_dir: str | Path,
    *,
    max_steps: int | None = None,
    resume: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Train the model ``cfg`` describes, writing the run directory ``out_dir``.

    ``max_steps`` stops after that many optimizer steps in all (the schedule still spans the
    configured epochs, so a run cut short and resumed follows the same learning rates).
    """
    out_dir = Path(out_dir)
    device = resolve_device(cfg.trainer.device)
    info = init_distributed(device.type)
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)  # this process's GPU
    try:
        _check_sync_bn(cfg, device, info)
        # torchrun --max-restarts started this group again after a worker failed: the same command
        # continues the run from its last.pt (or starts it over when the failure came before the first).
        restarted = elastic_restart(info, device)
        if restarted and not resume and (out_dir / "last.pt").is_file():
            resume = True
        with _warnings_on_rank0_only(info):
            result = _train(cfg, out_dir, device, info, max_steps=max_steps, resume=resume, progress=progress, restarted=restarted)
        if info.enabled:
            # Leave together: a rank that tears down its process group while rank 0 still writes the
            # last checkpoint can abort in gloo's threads ("terminate called without an active exception").
            # A late SIGTERM (torchrun forwarding one more) must not kill a rank in this barrier either.
            with StopFlag():
                torch.distributed.barrier()
        return result
    finally:
        cleanup_distributed()


def _check_sync_bn(cfg: DictConfig, device: torch.device, info: DistInfo) -> None:
    """SyncBatchNorm has CUDA kernels only: under torchrun off CUDA it is a user error, raised before any work.

    In a single process there is nothing to synchronise and ``trainer.sync_bn`` is ignored on any device.
    """
    if cfg.trainer.sync_bn and info.enabled and device.type != "cuda":
        raise SegkitError(f"trainer.sync_bn needs CUDA GPUs (SyncBatchNorm has no {device.type} implementation); "
                          f"set trainer.sync_bn=false to train on the {device.type} (BatchNorm statistics then stay per process).")


def _schedule_at(optimizer: torch.optim.Optimizer, cfg: DictConfig, total_steps: int, step: int) -> Any:
    """The config's schedule for ``total_steps``, advanced to ``step`` from the base learning rates."""
    import warnings

    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "lr_scheduler.step() before optimizer.step()": a replay, not a step
        scheduler = build_scheduler(optimizer, cfg, total_steps)
        for _ in range(step):
            scheduler.step()
    return scheduler


def _check_trainable(model: nn.Module, batch: int) -> None:
    """Models the training loop cannot train as configured (``batch``: the images a process's batches
    hold): a SegkitError naming the key, before any step."""
    from segkit.decoders.deeplab import ASPPPooling

    if getattr(model, "valid", False):
        raise SegkitError("model.arch unet_original with valid convolutions (model.decoder.padding: valid, the default) predicts "
                          "a smaller map than its input, which training cannot compare with the masks; set "
                          "model.decoder.padding: same to train it.")
    if batch < 2 and any(isinstance(m, ASPPPooling) for m in model.modules()):
        raise SegkitError("each process's batch holds 1 image (trainer.batch_size, or a training split that small per process), "
                          "but DeepLab's image pooling normalises one value per channel, which BatchNorm cannot do in training; "
                          "set trainer.batch_size: 2 or more (grad_accum keeps the memory low), with at least 2 training images a process.")


def _prepare_run_dir(cfg: DictConfig, out_dir: Path, last_path: Path, resume: bool, restarted: bool = False) -> None:
    """Rank 0: check --resume has a run to continue, create the run directory, refuse one that holds a
    run (unless resuming), write config.yaml (a new run's; a resumed run writes it once it has loaded). ``restarted``: an elastic restart before the first
    last.pt starts the run over (its own partial metrics.jsonl is dropped)."""
    if resume and not last_path.is_file():
        raise SegkitError(f"--resume needs {last_path}, which does not exist; start the run without --resume.")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise SegkitError(f"--out {out_dir} is a file, or lies under one; give a directory for the run.") from None
    log_path, best_path = out_dir / "metrics.jsonl", out_dir / "best.pt"
    if not resume:
        if last_path.exists():
            raise SegkitError(f"run directory {out_dir} already holds a run; pass --resume to continue it or choose another --out.")
        if restarted:
            log_path.unlink(missing_ok=True)
        elif best_path.exists():
            raise SegkitError(f"run directory {out_dir} holds a best.pt but no last.pt, so its run cannot be continued; "
                              "choose another --out (or move that directory away to start over).")
        elif log_path.exists():
            # A run that stopped (e.g. on a data error) before any checkpoint: nothing to resume or keep,
            # so it starts over rather than leave a directory that can be neither restarted nor resumed.
            logger.warning("%s holds the log of a run that stopped before its first checkpoint; starting it over.", out_dir)
            log_path.unlink()
        save_config(cfg, out_dir / "config.yaml")  # a resumed run's, once its checkpoint has loaded (_train)


def trim_log(path: Path, step: int) -> None:
    """Drop the records of ``metrics.jsonl`` past ``step`` (and a line cut short), which a run killed
    after its last checkpoint wrote: the resumed run writes them again, and twice would be wrong."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    kept = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # cut short by the kill
        if not isinstance(record, dict) or record.get("step", 0) <= step:
            kept.append(line if line.endswith("\n") else line + "\n")
    if kept != lines:
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text("".join(kept))
        os.replace(temporary, path)


def _train(cfg: DictConfig, out_dir: Path, device: torch.device, info: DistInfo, *, max_steps: int | None, resume: bool, progress: bool,
           restarted: bool = False) -> TrainResult:
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    resolve_normalisation(cfg)
    # Checked on rank 0 only (it owns the directory); every rank raises its error, none waits for it.
    main_then_share(lambda: _prepare_run_dir(cfg, out_dir, last_path, resume, restarted), info)
    log = _Log(out_dir, info.is_main, cfg.output.tensorboard)

    torch.manual_seed(cfg.trainer.seed)
    task = make_task(cfg)
    train_set, val_set = build_datasets(cfg, info)
    if info.is_main:  # the masks are sampled once, by rank 0
        _warn_about_labels(getattr(train_set, "dataset", train_set))  # segmentation sets are wrapped (SeededDataset)
    model = build_model_from_config(cfg).to(device)
    if cfg.trainer.sync_bn and info.enabled:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    channels_last = _use_channels_last(cfg, device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    loss_fn = build_loss_fn(cfg).to(device)

    batch_size = cfg.trainer.batch_size
    sampler = SeededSampler(train_set, shuffle=True, seed=cfg.trainer.seed, rank=info.rank, world_size=info.world_size)
    workers = cfg.data.num_workers
    loader = DataLoader(
        train_set, batch_size=batch_size, sampler=sampler, num_workers=workers, collate_fn=collate_interleaved,
        pin_memory=device.type == "cuda", drop_last=len(sampler) >= batch_size,
        persistent_workers=workers > 0, worker_init_fn=ignore_foreign_sigterm,
        # Its own generator: creating an iterator must not draw from torch's global RNG (exact resume).
        generator=torch.Generator().manual_seed(cfg.trainer.seed),
    )
    batches_per_epoch = len(loader)
    _check_trainable(model, min(batch_size, len(sampler)))
    if batches_per_epoch == 0:
        raise SegkitError(f"the training split of {cfg.data.root} has no samples for this rank; add data or use fewer processes.")
    accum = cfg.trainer.grad_accum
    steps_per_epoch = math.ceil(batches_per_epoch / accum)
    total_steps = steps_per_epoch * cfg.trainer.epochs

    optimizer = build_optimizer(model, cfg)
    # A frozen encoder computes its pretrained function: its BatchNorm statistics stay fixed too.
    frozen_norms = _frozen_norms(model) if cfg.model.freeze_encoder else []
    scheduler = build_scheduler(optimizer, cfg, total_steps)
    use_amp, amp_dtype, use_scaler = _amp_settings(cfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)

    start_epoch, batch_in_epoch, step, best = 0, 0, 0, None
    carried: dict[str, Any] | None = None  # the counts of an epoch stopped midway, continued after the resume
    if resume:
        state = load_checkpoint(last_path)
        start_epoch, batch_in_epoch, step, best = _resume(state, cfg, out_dir, info, log, model, optimizer, scheduler, scaler, device)
        finished = start_epoch >= cfg.trainer.epochs and not batch_in_epoch
        if finished:  # a no-op (scripts resume whatever has a last.pt), said, and config.yaml stays the run's
            log.print(f"the run in {out_dir} has trained {start_epoch} epochs already and trainer.epochs is {cfg.trainer.epochs}: "
                      f"nothing to resume (pass trainer.epochs={start_epoch + 1} or more to train on)")
        if max_steps is not None and step >= max_steps:  # (the loop checks after a step: it would take one more)
            raise SegkitError(f"the run in {out_dir} is at step {step} already, --max-steps {max_steps} counts every step of the "
                              "run: pass a larger --max-steps, or leave it out to train to the end.")
        if info.is_main and not finished:  # not before: a resume refused for its config leaves the run's own config.yaml
            save_config(cfg, out_dir / "config.yaml")
        carried = state.get("epoch_progress") if batch_in_epoch else None
        saved_total, saved_world = state.get("total_steps"), int(state.get("world_size", info.world_size))
        if carried and saved_world != info.world_size and "seen" in carried:
            # The images each process trained on, counted on the old number of processes: the epoch's
            # images/s multiplies this rank's count by the new one (it showed 21 img/s for 15).
            carried = {**carried, "seen": carried["seen"] * saved_world / info.world_size}
        if not finished and saved_total != total_steps and (saved_total is not None or saved_world != info.world_size):
            # Another process count (or epochs) makes the run another length: the schedule spans the steps
            # as they now are, at the position the data reached in them (epochs done, then the windows of
            # this epoch on this many processes); the saved step counts steps of the old length.
            position = start_epoch * steps_per_epoch + math.ceil(batch_in_epoch / accum)
            scheduler = _schedule_at(optimizer, cfg, total_steps, position)
            logger.warning("the run now has %d steps (%s before): the learning-rate schedule continues at step %d of the new length.",
                           total_steps, saved_total if saved_total is not None else "another count", position)
        if info.is_main:
            trim_log(log.path, step)  # records a hard kill left past last.pt: the resumed run writes them again
        best = _best_of(best, best_path, task.score_key)
        if not finished:
            log.print(f"resumed from {last_path}: epoch {start_epoch + 1}, step {step}")

    train_model: nn.Module = model
    if info.enabled:
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.trainer.compile:
        train_model = torch.compile(train_model)

    # GoogLeNet / Inception-v3: whether the net rescaled its input, so that loading the file gives back this model.
    trained_with = {"transform_input": bool(model.transform_input)} if hasattr(model, "transform_input") else {}

    def checkpoint_state(epoch: int, batch: int, metrics: dict[str, Any] | None = None,
                         progress: dict[str, Any] | None = None) -> dict[str, Any]:
        """last.pt: everything an exact resume needs (``progress``: the counts of an epoch stopped midway)."""
        return {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(), "epoch": epoch, "batch_in_epoch": batch, "step": step, "total_steps": total_steps,
            "epoch_progress": json_safe(progress or {}),
            "best_miou": best if task.score_key == "miou" else None, "best_score": best, "score_key": task.score_key,
            "rng": capture_rng(device), "config": to_dict(cfg), "metrics": json_safe(metrics or {}),
            "world_size": info.world_size, "segkit_checkpoint": 1, "kind": "last", **trained_with,
        }

    def best_state(epoch: int, metrics: dict[str, Any]) -> dict[str, Any]:
        """best.pt: what evaluation, export and fine-tuning read; no optimizer, schedule, scaler or RNG state."""
        return {
            "model": model.state_dict(), "epoch": epoch, "step": step,
            "best_miou": best if task.score_key == "miou" else None, "best_score": best, "score_key": task.score_key,
            "config": to_dict(cfg), "metrics": json_safe(metrics), "world_size": info.world_size,
            "segkit_checkpoint": 1, "kind": "best", **trained_with,
        }

    last_metrics: dict[str, Any] = {}
    interrupted = False
    epoch = start_epoch
    interval = float(cfg.trainer.checkpoint_interval)
    last_saved = time.monotonic()
    plotted = -math.inf
    # The StopFlag outlives the writer: a signal while the last checkpoints are written waits for them.
    with StopFlag() as stop, CheckpointWriter() as writer:
        run = Run(cfg=cfg, info=info, device=device, model=model, train_model=train_model, loss_fn=loss_fn, optimizer=optimizer,
                  scheduler=scheduler, scaler=scaler, task=task, loader=loader, stop=stop, log=log, amp=(use_amp, amp_dtype),
                  channels_last=channels_last, frozen_norms=frozen_norms, batches_per_epoch=batches_per_epoch,
                  max_steps=max_steps, progress=progress, last_path=last_path, writer=writer,
                  scaling=_device_scaling(train_set))
        for epoch in range(start_epoch, cfg.trainer.epochs):
            sampler.set_epoch(epoch, start=batch_in_epoch * batch_size)
            end = train_epoch(run, epoch, batch_in_epoch, step, carried)  # SegkitError on a non-finite loss (all ranks)
            carried = None
            step, batch_in_epoch = end.step, end.batch_in_epoch
            if batch_in_epoch < batches_per_epoch:  # stopped inside the epoch: save the exact position and leave
                interrupted = end.interrupted
                progress = epoch_progress(run, end)  # every rank stops here: its collective call is safe
                if info.is_main:
                    writer.submit(checkpoint_state(epoch, batch_in_epoch, progress=progress), last_path)
                    writer.wait(last_path)  # "saved" below is said once the file is there
                reason = "interrupted" if interrupted else f"reached --max-steps {max_steps}"
                log.print(f"{reason} at step {step}; saved {last_path} (continue with --resume)")
                break
            batch_in_epoch = 0
            summary: dict[str, Any] = {"kind": "epoch", "epoch": epoch + 1, "step": step,
                                       "train_loss": end.loss_sum / max(end.loss_batches, 1),
                                       "images_per_s": end.seen * info.world_size / end.seconds, **task.train_metrics()}
            last_epoch = epoch + 1 == cfg.trainer.epochs
            validated = (epoch + 1) % cfg.trainer.val_interval == 0 or last_epoch or (max_steps is not None and step >= max_steps)
            if validated:
                broadcast_batchnorm_buffers(model, info)  # every rank scores rank 0's model, the one saved
                metrics = score_validation_split(model, val_set, cfg, device, info, amp=(use_amp, amp_dtype), channels_last=channels_last)
                summary.update({"val_" + k: v for k, v in metrics.items() if k in task.val_keys})
                last_metrics = metrics
                score = metrics[task.score_key]
                if info.is_main and score == score and (best is None or score > best):
                    best = score
                    writer.submit(best_state(epoch + 1, metrics), best_path)
            # A signal after the epoch's last log point (e.g. during validation) may have reached some
            # ranks only: they agree here (one all-reduce per epoch) and stop together.
            stopping = end.interrupted or any_rank(stop.signal is not None, info, device)
            final = stopping or last_epoch or (max_steps is not None and step >= max_steps)
            if info.is_main and (final or time.monotonic() - last_saved >= interval):
                writer.submit(checkpoint_state(epoch + 1, 0, last_metrics), last_path)
                last_saved = time.monotonic()
            log.write(json_safe(summary))
            log.print(_summary_line(summary, cfg.trainer.epochs, task.line_keys))
            # curves.png at validation points only, and at most every _PLOT_EVERY_S until the last one (a
            # matplotlib figure costs ~0.1-0.2 s: after each of many tiny epochs it would rival the steps)
            if info.is_main and cfg.output.plots and validated and (final or time.monotonic() - plotted >= _PLOT_EVERY_S):
                task.plot_curves(log.path, out_dir / "curves.png")
                plotted = time.monotonic()
            if stopping:
                interrupted = True
                if info.is_main:
                    writer.wait(last_path)
                log.print(f"interrupted after epoch {epoch + 1}; saved {last_path} (continue with --resume)")
                break
            if max_steps is not None and step >= max_steps:
                break
        if info.is_main and cfg.output.plots and last_metrics:  # drawn while the last checkpoints are written
            task.plot_final(model, val_set, device, out_dir)
    closing = task.final_line(best, best_path)
    if closing:
        log.print(closing)
    log.close()  # (each write flushed: a run that fails still leaves its TensorBoard events)
    return TrainResult(out_dir=out_dir, steps=step, epochs_done=epoch + (0 if interrupted else 1),
                       best_miou=best if task.score_key == "miou" else None, last_metrics=last_metrics,
                       interrupted=interrupted, best_score=best, score_key=task.score_key)


# What a resumed run continues as it was: the optimizer's state holds its learning rates and
# hyperparameters (a new optimizer.lr was ignored but recorded in config.yaml), the schedule counts
# its steps, the position in the epoch counts batches of the saved size, the loss and the model
# are the run's. trainer.epochs, devices, AMP, process counts, workers and intervals may change.
# trainer.seed: the interrupted epoch's order and augmentations continue from it.
_FIXED_ON_RESUME = ("optimizer", "schedule", "loss", "model", "trainer.batch_size", "trainer.grad_accum", "trainer.seed")
_FREE_IN_FIXED = ("model.weights", "model.encoder_weights")  # initial weights: the checkpoint's replace them


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _check_resumed_settings(saved: dict[str, Any], now: dict[str, Any], out_dir: Path) -> None:
    """A SegkitError naming the settings a resumed run cannot change (``_FIXED_ON_RESUME``) that differ
    from the run's saved config; nothing when the checkpoint holds no config."""
    if not saved:
        return
    old, new = _flat(saved), _flat(now)

    def fixed(key: str) -> bool:
        return any(key == k or key.startswith(k + ".") for k in _FIXED_ON_RESUME) and not any(
            key == k or key.startswith(k + ".") for k in _FREE_IN_FIXED)

    changed = sorted(k for k in set(old) | set(new) if fixed(k) and old.get(k) != new.get(k))
    if changed:
        key = changed[0]
        more = f" (and {len(changed) - 1} more: {', '.join(changed[1:4])}{', ...' if len(changed) > 4 else ''})" if len(changed) > 1 else ""
        raise SegkitError(
            f"{key} is {new.get(key)!r} here but the run in {out_dir} was trained with {old.get(key)!r}{more}; a resumed run "
            f"keeps its optimizer, schedule, loss, model and batches: drop the change (the run's config is {out_dir}/config.yaml), "
            f"or train a new run (another --out) from its weights with model.weights={out_dir}/best.pt (written at its first "
            "validation)."
        )


def _resume(state: dict[str, Any], cfg: DictConfig, out_dir: Path, info: DistInfo, log: _Log, model: nn.Module,
            optimizer: torch.optim.Optimizer, scheduler: Any, scaler: torch.amp.GradScaler,
            device: torch.device) -> tuple[int, int, int, float | None]:
    """Load ``last.pt`` into the run's objects; ``(epoch, batch in epoch, step, best score)`` to continue from.

    Settings that may differ from the saved run's (CPU or GPU, AMP dtype, number of GPUs or
    processes) continue, with a logged line; what cannot continue (another model or optimizer) is a
    SegkitError naming why.
    """
    if state.get("kind") == "best" or "optimizer" not in state:
        raise SegkitError(f"{out_dir}/last.pt holds model weights only (a best.pt: no optimizer, schedule or RNG state), so --resume "
                          f"cannot continue it; restore the run's own last.pt, or fine-tune from it in a new run with model.weights=<that file>.")
    _check_resumed_settings(state.get("config") or {}, to_dict(cfg), out_dir)
    if "transform_input" in state and hasattr(model, "transform_input"):
        model.transform_input = bool(state["transform_input"])  # GoogLeNet / Inception-v3: as the run trained
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as err:
        first = str(err).strip().splitlines()[0][:200]
        raise SegkitError(f"{out_dir}/last.pt does not fit the model or optimizer this config builds ({first}); "
                          f"resume with the run's own config ({out_dir}/config.yaml).") from err
    scheduler.load_state_dict(state["scheduler"])
    notes = [restore_grad_scaler(scaler, state.get("scaler")), restore_rng(state["rng"], device) if "rng" in state else None]
    epoch, batch, step = state["epoch"], state["batch_in_epoch"], state["step"]
    saved_world = int(state.get("world_size", info.world_size))
    moved = resume_batch(batch, cfg.trainer.batch_size, cfg.trainer.grad_accum, saved_world, info.world_size)
    if moved != batch:
        notes.append(f"the run was saved on {saved_world} process(es) and continues on {info.world_size}: epoch {epoch + 1} "
                     f"resumes at batch {moved} of each process (batch {batch} of {saved_world}); a few samples repeat.")
    for note in notes:
        if note:  # one line, not one per process: other ranks' warnings are dropped (_warnings_on_rank0_only)
            logger.warning(note)
    return epoch, moved, step, state.get("best_score", state.get("best_miou"))


@contextlib.contextmanager
def _warnings_on_rank0_only(info: DistInfo) -> Iterator[None]:
    """Under torchrun, segkit's warnings from ranks other than 0 are dropped: every rank sees the same
    config and data, so each would print the same line (errors still come from every rank)."""
    if info.is_main:
        yield
        return
    previous = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(previous)


def _warn_about_labels(dataset: Any) -> None:
    """Say so before training when the masks look like 0/255 binary masks without ``binary: true``
    (their whole foreground would be ignored, and validation would score background alone)."""
    sampled_hint = getattr(dataset, "sampled_label_hint", None)  # folder datasets
    hint = sampled_hint("data.options.binary: true") if sampled_hint is not None else None
    if hint:
        logger.warning("the training masks need a look: %s.", hint)


def _best_of(best: float | None, best_path: Path, score_key: str) -> float | None:
    """The higher of ``last.pt``'s best score and ``best.pt``'s: with last.pt written by time, best.pt
    may be newer than it, and the resumed run must not replace it with a worse model."""
    if not best_path.is_file():
        return best
    try:
        saved = load_checkpoint(best_path)
    except SegkitError as err:  # a damaged best.pt does not stop a resume; it is rewritten at the next best
        logger.warning(f"{best_path} is not readable ({err}); the best score is taken from last.pt.")
        return best
    score = saved.get("best_score")
    if saved.get("score_key", score_key) != score_key or not isinstance(score, (int, float)) or score != score:
        return best
    return float(score) if best is None or score > best else best


def _summary_line(summary: dict[str, Any], epochs: int, keys: tuple[tuple[str, str], ...]) -> str:
    parts = [f"epoch {summary['epoch']}/{epochs}", f"step {summary['step']}", f"loss {summary['train_loss']:.4f}",
             f"{summary['images_per_s']:.1f} img/s"]
    for key, label in keys:
        if summary.get(key) is not None:
            parts.append(f"{label} {summary[key]:.4f}")
    return " | ".join(parts)


