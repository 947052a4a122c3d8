"""Training throughput (images/s) of the segkit engine against a plain PyTorch loop; on CUDA, AMP+channels_last vs fp32 and the fraction of peak.

Engine row: ``segkit.engine.train.train`` on a config (default ``configs/quickstart.yaml``: the
built-in synthetic data, generated into a temporary folder), its own per-epoch ``images_per_s``
from ``metrics.jsonl``, the first epoch (warm-up) left out. Peer row: the loop of torchvision's
reference ``train.py`` written out by hand (DataLoader with shuffle, forward, loss, backward,
optimizer and scheduler step) over the very same datasets, model, loss and optimizer built from
the same config. The two alternate, ``--rounds`` times each, in one process; the table gives the
median images/s and ``ratio`` = engine / plain loop (1.0: the engine's seeded sampling, logging,
checkpointing and NaN checks cost nothing measurable).

On CUDA (``--device cuda``; elsewhere with ``--amp-rows``) two more rows: a training step with
autocast (bf16 where supported, else fp16 with a grad scaler) and channels_last against the fp32
step, and the model FLOPs per second of each (``torch.utils.flop_counter``) as a fraction of the
GPU's peak (``--peak-tflops``, or a table of known GPUs).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks._plain import plain_pieces
from segkit.config import load_config
from segkit.engine.train import train

REPO = Path(__file__).resolve().parents[2]

# Dense tensor-core peaks (TFLOP/s) for bf16/fp16 and fp32 (non-tensor) of the GPUs we meet.
PEAK_TFLOPS = {"H100": (989.0, 67.0), "H200": (989.0, 67.0), "A100": (312.0, 19.5), "L4": (121.0, 30.3),
               "A10": (125.0, 31.2), "V100": (125.0, 15.7), "T4": (65.0, 8.1)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=str(REPO / "configs" / "quickstart.yaml"), help="training config (default: the quickstart)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per engine run; the first is warm-up (default 3)")
    parser.add_argument("--rounds", type=int, default=2, help="engine and plain runs, alternating (default 2 each)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--amp-rows", action="store_true", help="add the AMP+channels_last rows off CUDA too (bf16 autocast on the CPU)")
    parser.add_argument("--gpu-batch", type=int, default=16, help="AMP rows: images per step (default 16)")
    parser.add_argument("--gpu-size", type=int, default=512, help="AMP rows: image size (default 512)")
    parser.add_argument("--gpu-encoder", default="resnet50", help="AMP rows: the U-Net's encoder (default resnet50)")
    parser.add_argument("--gpu-repeats", type=int, default=20, help="AMP rows: timed steps of each (default 20)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="CUDA rows: the GPU's peak (TFLOP/s) at the AMP dtype")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. trainer.batch_size=16")


def _engine_run(args: argparse.Namespace, data_root: Path, out_dir: Path) -> float:
    overrides = [f"data.root={data_root}", f"trainer.epochs={args.epochs}", f"trainer.val_interval={args.epochs}",
                 "output.plots=false", f"trainer.device={args.device}", *args.overrides]
    train(load_config(args.config, overrides), out_dir, progress=False)
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    rates = [r["images_per_s"] for r in records if r["kind"] == "epoch"][1:]
    return statistics.median(rates)


def _plain_run(args: argparse.Namespace, data_root: Path) -> float:
    """torchvision reference style: the same pieces, a bare loop; images/s of epochs 2.. (median)."""
    device = torch.device(args.device)
    cfg = load_config(args.config, [f"data.root={data_root}", f"trainer.epochs={args.epochs}", *args.overrides])
    pieces = plain_pieces(cfg, device, args.epochs)
    model, loss_fn, loader, optimizer, scheduler = pieces.model, pieces.loss_fn, pieces.loader, pieces.optimizer, pieces.scheduler
    rates = []
    model.train()
    for _epoch in range(args.epochs):
        seen, start = 0, time.perf_counter()
        for images, masks in loader:
            images, masks = images.to(device, non_blocking=True), masks.to(device, non_blocking=True)
            loss = loss_fn(model(images), masks)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            seen += images.shape[0]
        if device.type == "cuda":
            torch.cuda.synchronize()
        rates.append(seen / (time.perf_counter() - start))
    return statistics.median(rates[1:])


def _amp_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    from torch.utils.flop_counter import FlopCounterMode

    from benchmarks._timing import time_alternating
    from segkit import create_model

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    torch.backends.cudnn.benchmark = True
    x = torch.randn(args.gpu_batch, 3, args.gpu_size, args.gpu_size, device=device)
    y = torch.randint(0, 21, (args.gpu_batch, args.gpu_size, args.gpu_size), device=device)
    bf16 = torch.cuda.is_bf16_supported() if cuda else True
    dtype = torch.bfloat16 if bf16 else torch.float16
    steps = {}
    for name, amp in (("fp32", False), ("amp+channels_last", True)):
        model = create_model("unet", encoder=args.gpu_encoder, num_classes=21).to(device)
        if amp:
            model = model.to(memory_format=torch.channels_last)
        inputs = x.contiguous(memory_format=torch.channels_last) if amp else x
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        scaler = torch.amp.GradScaler(device.type, enabled=amp and not bf16)

        def step(model=model, inputs=inputs, optimizer=optimizer, scaler=scaler, amp=amp) -> None:
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=dtype, enabled=amp):
                loss = torch.nn.functional.cross_entropy(model(inputs), y)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()

        steps[name] = step
    with FlopCounterMode(display=False) as counter:
        steps["fp32"]()
    flops = counter.get_total_flops()
    times = time_alternating(steps, repeats=args.gpu_repeats, warmup=min(3, args.gpu_repeats),
                             synchronize=torch.cuda.synchronize if cuda else None)
    gpu = torch.cuda.get_device_name() if cuda else "cpu"
    peaks = next((p for key, p in PEAK_TFLOPS.items() if key in gpu), None)
    rows = []
    for name, seconds in times.items():
        peak = args.peak_tflops if (args.peak_tflops and name != "fp32") else (peaks[1 if name == "fp32" else 0] if peaks else None)
        achieved = flops / seconds / 1e12  # model FLOPs of one step (forward + backward) per second
        rows.append({"case": f"unet/{args.gpu_encoder} step {args.gpu_batch}x3x{args.gpu_size}^2 {name}", "gpu": gpu,
                     "images_per_s": args.gpu_batch / seconds, "speedup_vs_fp32": times["fp32"] / seconds,
                     "tflops": achieved, "peak_tflops": peak, "fraction_of_peak": achieved / peak if peak else None,
                     "amp_dtype": str(dtype).replace("torch.", "") if name != "fp32" else "float32"})
    return rows


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    if args.threads:
        torch.set_num_threads(args.threads)
    engine, plain = [], []
    with tempfile.TemporaryDirectory() as tmp:
        data_root = Path(tmp) / "data"
        for round_ in range(args.rounds):  # the order alternates from round to round
            runs = [lambda: engine.append(_engine_run(args, data_root, Path(tmp) / f"run{round_}")),
                    lambda: plain.append(_plain_run(args, data_root))]
            for run_one in runs[:: 1 if round_ % 2 == 0 else -1]:
                run_one()
    cfg = load_config(args.config, args.overrides)
    case = f"{cfg.model.arch}/{cfg.model.encoder} {Path(args.config).name} batch {cfg.trainer.batch_size} {args.device}"
    rows: list[dict[str, Any]] = [{
        "case": case, "engine_images_per_s": statistics.median(engine), "plain_loop_images_per_s": statistics.median(plain),
        "ratio": statistics.median(engine) / statistics.median(plain), "threads": torch.get_num_threads(),
    }]
    if args.device == "cuda" or args.amp_rows:
        rows += _amp_rows(args)
    return rows
