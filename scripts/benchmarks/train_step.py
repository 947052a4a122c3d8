"""Training step (forward, backward, SGD step) of a segkit architecture against its smp twin.

``--arch unet`` (default) times segkit's ``unet`` against ``smp.Unet`` with the same decoder widths
(smp's default 256, 128, 64, 32, 16); ``--arch deeplabv3`` against ``smp.DeepLabV3`` (output
stride 8); ``--arch deeplabv3plus`` against ``smp.DeepLabV3Plus`` (output stride 16), segkit built
in smp's layout (``separable=True, refine_convs=1, aspp_conv=True``: the same parameters), plus
a row with smp's ASPP rates too (12/24/36 at output stride 16, where segkit's default is the
paper's 6/12/18: the very same model) and one for the paper's layout (two plain 3x3
convolutions: more parameters, not smp's model);
``--arch fpn`` against ``smp.FPN``. Both models are built on the same encoder (resnet34 by
default; smp's is torchvision's), randomly initialised (smp with ``encoder_weights=None``: nothing
is downloaded), and trained with the same SGD optimiser and cross-entropy loss on the same random
batch. Candidates alternate in one process; the table gives median step times, ``ratio`` =
segkit / smp (<= 1.0 means segkit is no slower) and parameter counts. One row per segkit
upsampling mode (``--upsampling``; default: "transposed,nearest" for unet, where "nearest" is
architecturally smp's own decoder; "bilinear" for DeepLab, the papers' and smp's; "default"
for fpn, the papers' nearest pyramid and bilinear branch, smp's).
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
    parser.add_argument("--arch", default="unet", choices=sorted(ARCHS), help="architecture (default unet)")
    parser.add_argument("--widths", default="256,128,64,32,16", help="unet: decoder widths, deepest first (default smp's 256,128,64,32,16)")
    parser.add_argument("--upsampling", default=None,
                        help="comma-separated segkit modes to time (default: transposed,nearest for unet, bilinear for DeepLab, "
                             "'default' for fpn: its papers' mix)")
    parser.add_argument("--repeats", type=int, default=10, help="timed rounds (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first (default 2)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")


# arch -> (smp class name, default segkit modes)
ARCHS = {"unet": ("Unet", "transposed,nearest"), "deeplabv3": ("DeepLabV3", "bilinear"),
         "deeplabv3plus": ("DeepLabV3Plus", "bilinear"), "fpn": ("FPN", "default")}
SMP_V3PLUS = {"separable": True, "refine_convs": 1, "aspp_conv": True}  # smp's DeepLabV3Plus layout in segkit


def _candidates(args: argparse.Namespace, widths: tuple[int, ...]) -> list[tuple[str, dict[str, Any]]]:
    """``(row label, create_model keywords)`` of each segkit model to time."""
    modes = (args.upsampling or ARCHS[args.arch][1]).split(",")
    rows = []
    for mode in modes:
        options: dict[str, Any] = {"upsampling": None if mode == "default" else mode}
        if args.arch == "unet":
            options["decoder_channels"] = widths
        elif args.arch == "deeplabv3plus":
            options.update(SMP_V3PLUS)
        rows.append((mode if args.arch != "deeplabv3plus" else f"{mode} (smp's layout)", options))
    if args.arch == "deeplabv3plus":
        # smp's rates at output stride 16 are 12/24/36 (segkit's, the paper's: 6/12/18): the very same model.
        rows.append(("bilinear (smp's layout and rates)", {"upsampling": "bilinear", "atrous_rates": (12, 24, 36), **SMP_V3PLUS}))
        rows.append(("bilinear (paper's layout)", {"upsampling": "bilinear"}))
    return rows


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
    peer_name = ARCHS[args.arch][0]
    peer_options: dict[str, Any] = {"decoder_channels": widths} if args.arch == "unet" else {}
    peer = getattr(smp, peer_name)(args.encoder, encoder_weights=None, classes=args.classes, **peer_options).to(device)
    candidates = {"smp": _step(peer, x, target)}
    models = {"smp": peer}
    rows = _candidates(args, widths)
    for label, options in rows:
        models[label] = create_model(args.arch, encoder=args.encoder, num_classes=args.classes, **options).to(device)
        candidates[label] = _step(models[label], x, target)
    with torch.no_grad():
        shapes = {name: tuple(m.eval()(x).shape) for name, m in models.items()}
    if len(set(shapes.values())) != 1:
        raise RuntimeError(f"the models disagree on the output shape: {shapes}")
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    times = time_alternating(candidates, repeats=args.repeats, warmup=args.warmup, synchronize=sync)
    case = f"{args.arch}/{args.encoder} train step {args.batch}x3x{args.size}x{args.size}"
    return [
        comparison_row(
            f"{case} {label}",
            times[label],
            f"smp.{peer_name}",
            times["smp"],
            ratio=times[label] / times["smp"],
            segkit_params=_params(models[label]),
            peer_params=_params(peer),
            threads=torch.get_num_threads(),
        )
        for label, _ in rows
    ]
