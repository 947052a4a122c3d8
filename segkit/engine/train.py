"""The training loop: one function, ``train(cfg, out_dir)``, in the manner of torchvision's reference.

What a run does, in order: pick the device and join the torchrun process group if there is one;
seed; build the datasets, the model (DDP, SyncBatchNorm, channels_last, torch.compile as the
config asks), the loss, the optimizer and the per-iteration schedule; resume from ``last.pt`` if
asked; then for each epoch train (AMP on CUDA, gradient accumulation and clipping), validate every
``val_interval`` epochs, and write ``last.pt`` (every epoch and on SIGINT/SIGTERM), ``best.pt``
(best validation score), ``metrics.jsonl`` and the plots. Only rank 0 writes files and prints.

The ``task`` (:mod:`segkit.engine.tasks`) supplies what differs: segmentation scores with the
ConfusionMatrix and keeps the best mIoU; classification (``task: classification``) adds the
auxiliary heads' losses, logs training and validation top-1 error, and keeps the best top-1
accuracy. Checkpoints hold ``best_score`` (and ``best_miou`` for segmentation, as before).

Exact resume: the data order and every sample's augmentation are functions of (seed, epoch,
index) (:class:`~segkit.engine.distributed.SeededSampler`), the data loader draws from its own
generator rather than torch's global one, and the checkpoint carries every RNG state, the step
within the epoch, optimizer, schedule and grad-scaler states. On CPU a run stopped after k steps
and resumed ends bit-identical to an uninterrupted run (tested).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor, nn
from torch.utils.data import DataLoader

from segkit.config import save_config, to_dict
from segkit.engine.builders import build_datasets, build_loss_fn, build_model_from_config, resolve_normalisation
from segkit.engine.checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint
from segkit.engine.distributed import DistInfo, SeededSampler, cleanup_distributed, init_distributed
from segkit.engine.optim import build_optimizer, build_scheduler
from segkit.engine.report import json_safe
from segkit.engine.tasks import make_task
from segkit.engine.validate import validate
from segkit.errors import SegkitError

__all__ = ["TrainResult", "resolve_device", "train"]

logger = logging.getLogger("segkit")


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
    if name == "cuda" and not torch.cuda.is_available():
        raise SegkitError("--device cuda was asked for but PyTorch sees no CUDA GPU; use --device cpu.")
    return torch.device(name)


class _StopFlag:
    """Turns SIGINT/SIGTERM into a flag the loop checks after each step (then saves and exits)."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is not None:  # a second Ctrl-C: stop at once
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _use_channels_last(cfg: DictConfig, device: torch.device) -> bool:
    """channels_last pays on CUDA tensor cores; on the CPU it is left off."""
    return device.type == "cuda" and cfg.trainer.channels_last


def _amp_settings(cfg: DictConfig, device: torch.device) -> tuple[bool, torch.dtype, bool]:
    """(use autocast, its dtype, use a grad scaler). AMP runs on CUDA only."""
    if device.type != "cuda" or not cfg.trainer.amp:
        return False, torch.float32, False
    want = cfg.trainer.amp_dtype
    if want == "bfloat16" or (want == "auto" and torch.cuda.is_bf16_supported()):
        return True, torch.bfloat16, False
    return True, torch.float16, True


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
    try:
        result = _train(cfg, out_dir, device, info, max_steps=max_steps, resume=resume, progress=progress)
        if info.enabled:
            # Leave together: a rank that tears down its process group while rank 0 still writes the
            # last checkpoint can abort in gloo's threads ("terminate called without an active exception").
            torch.distributed.barrier()
        return result
    finally:
        cleanup_distributed()


def _train(cfg: DictConfig, out_dir: Path, device: torch.device, info: DistInfo, *, max_steps: int | None, resume: bool, progress: bool) -> TrainResult:
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.backends.cudnn.benchmark = True
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    if resume and not last_path.is_file():
        raise SegkitError(f"--resume needs {last_path}, which does not exist; start the run without --resume.")
    resolve_normalisation(cfg)
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        if not resume and (last_path.exists() or (out_dir / "metrics.jsonl").exists()):
            raise SegkitError(f"run directory {out_dir} already holds a run; pass --resume to continue it or choose another --out.")
        save_config(cfg, out_dir / "config.yaml")
    log = _Log(out_dir, info.is_main, cfg.output.tensorboard)

    torch.manual_seed(cfg.trainer.seed)
    task = make_task(cfg)
    train_set, val_set = build_datasets(cfg, info)
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
        train_set, batch_size=batch_size, sampler=sampler, num_workers=workers,
        pin_memory=device.type == "cuda", drop_last=len(sampler) >= batch_size,
        persistent_workers=workers > 0,
        # Its own generator: creating an iterator must not draw from torch's global RNG (exact resume).
        generator=torch.Generator().manual_seed(cfg.trainer.seed),
    )
    batches_per_epoch = len(loader)
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
    if resume:
        state = load_checkpoint(last_path)
        trained_with = state.get("config", {}).get("optimizer", {}).get("name")
        if trained_with != cfg.optimizer.name:
            raise SegkitError(f"optimizer.name is {cfg.optimizer.name!r} but the run in {out_dir} was trained with "
                              f"{trained_with!r}; resume with the run's own config ({out_dir}/config.yaml).")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, batch_in_epoch, step = state["epoch"], state["batch_in_epoch"], state["step"]
        best = state.get("best_score", state.get("best_miou"))
        restore_rng(state["rng"])
        log.print(f"resumed from {last_path}: epoch {start_epoch + 1}, step {step}")

    train_model: nn.Module = model
    if info.enabled:
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.trainer.compile:
        train_model = torch.compile(train_model)

    def checkpoint_state(epoch: int, batch: int, metrics: dict[str, Any] | None = None) -> dict[str, Any]:
        return {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(), "epoch": epoch, "batch_in_epoch": batch, "step": step,
            "best_miou": best if task.score_key == "miou" else None, "best_score": best, "score_key": task.score_key,
            "rng": capture_rng(), "config": to_dict(cfg), "metrics": json_safe(metrics or {}),
            "segkit_checkpoint": 1,
        }

    last_metrics: dict[str, Any] = {}
    interrupted = False
    epoch = start_epoch
    with _StopFlag() as stop:
        for epoch in range(start_epoch, cfg.trainer.epochs):
            sampler.set_epoch(epoch, start=batch_in_epoch * batch_size)
            train_model.train()
            for norm in frozen_norms:
                norm.eval()
            task.start_epoch(device)
            seen, loss_sum, loss_count, t0 = 0, 0.0, 0, time.perf_counter()
            bar = _progress(loader, epoch, cfg.trainer.epochs, enabled=progress and info.is_main)
            for images, targets in bar:  # targets: masks (N, H, W) or labels (N,)
                images = images.to(device, non_blocking=True)
                targets = targets.to(device, non_blocking=True)
                if channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                    loss, logits = task.loss(loss_fn, train_model(images), targets)
                task.observe(logits, targets)
                if not torch.isfinite(loss):
                    raise SegkitError(
                        f"the loss became {loss.item()} at step {step + 1} (epoch {epoch + 1}); training stopped and "
                        f"{last_path} keeps the last good state; lower optimizer.lr or enable trainer.clip_grad_norm."
                    )
                if batch_in_epoch % accum == 0:  # the first batch of an accumulation window
                    # Cleared here, just before backward (as torchvision's reference does), not after the
                    # step: the new gradients then reuse the freed ones' memory; clearing right after the
                    # step cost 5-8 % of CPU throughput in allocations (scripts/benchmark.py training).
                    optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss / accum).backward()
                batch_in_epoch += 1
                stepped = batch_in_epoch % accum == 0 or batch_in_epoch == batches_per_epoch
                if stepped:
                    if cfg.trainer.clip_grad_norm:
                        scaler.unscale_(optimizer)
                        nn.utils.clip_grad_norm_(model.parameters(), cfg.trainer.clip_grad_norm)
                    scaler.step(optimizer)
                    scaler.update()
                    scheduler.step()
                    step += 1
                seen += images.shape[0]
                loss_sum += loss.item()
                loss_count += 1
                if hasattr(bar, "set_postfix"):
                    bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}",
                                    img_s=f"{seen * info.world_size / (time.perf_counter() - t0):.1f}")
                if stepped and step % cfg.trainer.log_interval == 0:
                    log.write({"kind": "train", "epoch": epoch + 1, "step": step, "loss": loss.item(), "lr": optimizer.param_groups[0]["lr"]})
                # Stop only between optimizer steps, so no accumulated gradient is lost.
                if stepped and (stop.signal is not None or (max_steps is not None and step >= max_steps)):
                    break
            epoch_done = batch_in_epoch >= batches_per_epoch
            if not epoch_done:  # stopped inside the epoch: save the exact position and leave
                interrupted = stop.signal is not None
                if info.is_main:
                    save_checkpoint(checkpoint_state(epoch, batch_in_epoch), last_path)
                reason = "interrupted" if interrupted else f"reached --max-steps {max_steps}"
                log.print(f"{reason} at step {step}; saved {last_path} (continue with --resume)")
                break
            batch_in_epoch = 0
            elapsed = time.perf_counter() - t0
            summary: dict[str, Any] = {"kind": "epoch", "epoch": epoch + 1, "step": step,
                                       "train_loss": loss_sum / max(loss_count, 1), "images_per_s": seen * info.world_size / elapsed,
                                       **task.train_metrics()}
            last_epoch = epoch + 1 == cfg.trainer.epochs
            if (epoch + 1) % cfg.trainer.val_interval == 0 or last_epoch or (max_steps is not None and step >= max_steps):
                metrics = validate(model, val_set, cfg, device, info, amp=(use_amp, amp_dtype), channels_last=channels_last)
                summary.update({"val_" + k: v for k, v in metrics.items() if k in task.val_keys})
                last_metrics = metrics
                score = metrics[task.score_key]
                if info.is_main and score == score and (best is None or score > best):
                    best = score
                    save_checkpoint(checkpoint_state(epoch + 1, 0, metrics), best_path)
            if info.is_main:
                save_checkpoint(checkpoint_state(epoch + 1, 0, last_metrics), last_path)
            log.write(json_safe(summary))
            log.print(_summary_line(summary, cfg.trainer.epochs, task.line_keys))
            if info.is_main and cfg.output.plots:
                task.plot_curves(log.path, out_dir / "curves.png")
            if stop.signal is not None:
                interrupted = True
                log.print(f"interrupted after epoch {epoch + 1}; saved {last_path} (continue with --resume)")
                break
            if max_steps is not None and step >= max_steps:
                break
    if info.is_main and cfg.output.plots and last_metrics:
        task.plot_final(model, val_set, device, out_dir)
    closing = task.final_line(best, best_path)
    if closing:
        log.print(closing)
    log.close()  # (each write flushed: a run that fails still leaves its TensorBoard events)
    return TrainResult(out_dir=out_dir, steps=step, epochs_done=epoch + (0 if interrupted else 1),
                       best_miou=best if task.score_key == "miou" else None, last_metrics=last_metrics,
                       interrupted=interrupted, best_score=best, score_key=task.score_key)


def _progress(loader: DataLoader, epoch: int, epochs: int, enabled: bool) -> Iterator[Any]:
    if not enabled:
        return iter(loader)
    from tqdm import tqdm

    return tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", leave=False, dynamic_ncols=True, file=sys.stderr)


def _summary_line(summary: dict[str, Any], epochs: int, keys: tuple[tuple[str, str], ...]) -> str:
    parts = [f"epoch {summary['epoch']}/{epochs}", f"step {summary['step']}", f"loss {summary['train_loss']:.4f}",
             f"{summary['images_per_s']:.1f} img/s"]
    for key, label in keys:
        if summary.get(key) is not None:
            parts.append(f"{label} {summary[key]:.4f}")
    return " | ".join(parts)


