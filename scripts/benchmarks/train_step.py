"""Training step (forward, backward, SGD step) of segkit's unet against segmentation_models_pytorch.Unet.

Both models are built on the same encoder (resnet34 by default; smp's is torchvision's) with the
same decoder widths (smp's default 256, 128, 64, 32, 16), randomly initialised (smp with
``encoder_weights=None``: nothing is downloaded), and trained with the same SGD optimiser and
cross-entropy loss on the same random batch. Candidates alternate in one process; the table gives
median step times, ``ratio`` = segkit / smp (<= 1.0 means segkit is no slower) and parameter
counts. One row per segkit upsampling mode: "transposed" is segkit's default, "nearest" is
architecturally smp's own decoder.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks._timing import comparison_row, time_alternating
from segkit import create_model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch", type=int, default=4, help="images per step (default 4)")
    parser.add_argument("--size", type=int, default=256, help="image height and width (default 256)")
    parser.add_argument("--classes", type=int, default=2, help="number of classes (default 2)")
    parser.add_argument("--encoder", default="resnet34", help="encoder, a name both libraries know (default resnet34; tu-NAME: timm's NAME in both)")
    parser.add_argument("--widths", default="256,128,64,32,16", help="decoder widths, deepest first (default smp's 256,128,64,32,16)")
    parser.add_argument("--upsampling", default="transposed,nearest", help="comma-separated segkit modes to time (default transposed,nearest)")
    parser.add_argument("--repeats", type=int, default=10, help="timed rounds (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first (default 2)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")


def _step(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> Callable[[], None]:
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    model.train()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), target)
        loss.backward()
        optimizer.step()

    return step


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    import segmentation_models_pytorch as smp  # a test dependency, imported only here

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    widths = tuple(int(w) for w in args.widths.split(","))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size, generator=gen).to(device)
    target = torch.randint(0, args.classes, (args.batch, args.size, args.size), generator=gen).to(device)
    torch.manual_seed(0)
    peer = smp.Unet(args.encoder, encoder_weights=None, decoder_channels=widths, classes=args.classes).to(device)
    candidates = {"smp": _step(peer, x, target)}
    models = {"smp": peer}
    modes = args.upsampling.split(",")
    for mode in modes:
        models[mode] = create_model("unet", encoder=args.encoder, num_classes=args.classes, upsampling=mode, decoder_channels=widths).to(device)
        candidates[mode] = _step(models[mode], x, target)
    with torch.no_grad():
        shapes = {name: tuple(m.eval()(x).shape) for name, m in models.items()}
    if len(set(shapes.values())) != 1:
        raise RuntimeError(f"the models disagree on the output shape: {shapes}")
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    times = time_alternating(candidates, repeats=args.repeats, warmup=args.warmup, synchronize=sync)
    case = f"unet/{args.encoder} train step {args.batch}x3x{args.size}x{args.size}"
    return [
        comparison_row(
            f"{case} {mode}",
            times[mode],
            "smp.Unet",
            times["smp"],
            ratio=times[mode] / times["smp"],
            segkit_params=_params(models[mode]),
            peer_params=_params(peer),
            threads=torch.get_num_threads(),
        )
        for mode in modes
    ]
