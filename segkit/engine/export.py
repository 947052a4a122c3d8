"""``segkit export``: a checkpoint's model as TorchScript or ONNX, checked against PyTorch.

The exported model takes standardised images ``(N, in_channels, H, W)`` (as the checkpoint's
config normalises them) and returns the main logits ``(N, num_classes, H, W)`` only (an
image-level auxiliary head is dropped).

- TorchScript: ``torch.jit.script``, which keeps the model's own padding to a multiple of 32, so
  any input size works; a model that does not script (segkit's encoders do not, today) is traced
  instead, which keeps batch, height and width dynamic for heights and widths that are multiples
  of 32, like the ONNX export.
- ONNX (TorchScript-based exporter, ``dynamo=False``, needs the ``onnx`` package): batch, height
  and width are dynamic axes, but the padding arithmetic is traced as constants, so the ONNX
  model takes heights and widths that are multiples of the model's deepest stride (32; 16 for
  the original U-Net with same padding; any size for DeepLabV3 and the FCN head with their
  bilinear logits, which are not padded; at other sizes most graphs fail and some give wrong
  logits, which the printed summary says; the valid-convolution U-Net takes sides of 16b + 60):
  pad images bottom/right and crop the logits back. Its outputs are compared with PyTorch's by
  onnxruntime when that is installed, and the check is skipped (and said so) when it is not.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from segkit.errors import SegkitError

__all__ = ["FORMATS", "ExportResult", "export_model"]

FORMATS = ("onnx", "torchscript")
_SUFFIX = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
_MAX_OPSET = 20  # torch.onnx's TorchScript-based exporter (dynamo=False) writes opsets up to 20


@dataclass
class ExportResult:
    path: Path
    format: str
    input_size: tuple[int, int]
    max_abs_diff: float | None  # exported vs PyTorch logits, over the sizes checked; None: not checked
    checked_with: str | None
    note: str = ""
    reference_scale: float = 1.0  # the largest |logit| PyTorch gave on the checked inputs

    @property
    def ok(self) -> bool:
        """Within 1e-4 of PyTorch's logits, relative to their size where they exceed 1 (float32
        kernels of another runtime differ by a few ulps: 4e-4 on logits of 200 is 2e-6 relative)."""
        return self.max_abs_diff is None or self.max_abs_diff <= 1e-4 * max(1.0, self.reference_scale)

    def summary(self) -> str:
        line = f"wrote {self.path} ({self.format}, example input {self.input_size[0]}x{self.input_size[1]})"
        if self.max_abs_diff is not None:
            verb = "match PyTorch's within" if self.ok else "DIFFER from PyTorch's by up to"
            line += f"; outputs {verb} {self.max_abs_diff:.2e} ({self.checked_with})"
        return line + (f"; {self.note}" if self.note else "")


def _multiple(model: nn.Module) -> int:
    """The step between input sides the model takes unpadded: its deepest stride (32; 16 for the
    original U-Net, whose valid-convolution form takes sides 16*b + 60 and nothing else)."""
    return int(getattr(model, "multiple", None) or (16 if hasattr(model, "valid") else 32))


def _example_size(model: nn.Module, size: tuple[int, int] | None) -> tuple[int, int]:
    valid = getattr(model, "valid", False)  # unet_original with valid convolutions: sides 188, 204, ..., 572
    if size is None:
        size = (188, 188) if valid else (256, 256)
    if any(s < 1 for s in size):
        raise SegkitError(f"--size must be two positive numbers (height width); got {list(size)}.")
    if valid:
        return tuple(size)  # type: ignore[return-value]  # as given: the model names the sides it takes
    multiple = _multiple(model)
    smallest = int(getattr(model, "min_size", multiple))
    # whole multiples of the deepest stride, so the ONNX graph's fixed padding is none at all
    return tuple(max(-(-s // multiple) * multiple, smallest) for s in size)  # type: ignore[return-value]


def _output_path(checkpoint: Path, out: str | os.PathLike[str] | None, fmt: str) -> Path:
    """``out``, or the checkpoint's name with the format's suffix (``RUN/model.<ext>`` for a run directory),
    checked writable before the model is exported (a failed save came after the whole trace, as a traceback)."""
    path = Path(out) if out else (checkpoint / "model" if checkpoint.is_dir() else checkpoint).with_suffix(_SUFFIX[fmt])
    existed = path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab"):
            pass
    except OSError as err:
        raise SegkitError(f"cannot write {path} ({err.strerror or err}); pass --out in a folder you can write to.") from err
    if not existed:
        path.unlink()
    return path


@contextlib.contextmanager
def _stdout_silenced() -> Iterator[None]:
    """Standard output dropped at the file-descriptor level: torch's C++ exporter writes its IR dump
    there, past Python's sys.stdout."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
            with contextlib.redirect_stdout(io.StringIO()):
                yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _scale(references: list[torch.Tensor]) -> float:
    return max(float(r.abs().max()) for r in references)


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        raise SegkitError(f"the exported model returned shape {tuple(a.shape)} instead of {tuple(b.shape)}; it does not match PyTorch.")
    return float((a.float() - b.float()).abs().max())


def export_model(
    checkpoint: str | os.PathLike[str],
    fmt: str,
    out: str | os.PathLike[str] | None = None,
    *,
    size: tuple[int, int] | None = None,
    opset: int = 17,
) -> ExportResult:
    """Export the checkpoint's model to ``out`` and compare its logits with PyTorch's on random inputs."""
    from segkit.engine.inference import load_model

    if fmt not in FORMATS:
        raise SegkitError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}.")
    model, cfg = load_model(checkpoint, "cpu")
    if getattr(model, "aux_head", None) is not None:
        model.aux_head = None  # logits only: the image-level head helps training, not deployment
    path = _output_path(Path(checkpoint), out, fmt)
    h, w = _example_size(model, tuple(size) if size else None)
    multiple = _multiple(model)
    generator = torch.Generator().manual_seed(0)
    inputs = [torch.randn(1, cfg.model.in_channels, h, w, generator=generator),
              torch.randn(2, cfg.model.in_channels, h + multiple, w, generator=generator)]  # another batch and size
    with torch.inference_mode():
        references = [model(inputs[0])]
        try:
            references.append(model(inputs[1]))
        except SegkitError:  # a model built for one input size (a timm Swin): checked at that size only
            inputs = inputs[:1]
    if fmt == "torchscript":
        return _torchscript(model, inputs, references, path, (h, w))
    return _onnx(model, inputs, references, path, (h, w), opset)


def _torchscript(model: nn.Module, inputs: list[torch.Tensor], references: list[torch.Tensor], path: Path,
                 size: tuple[int, int]) -> ExportResult:
    note = ""
    traced = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notices
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        try:
            exported = torch.jit.script(model)
        except Exception as err:  # noqa: BLE001 - any scripting failure falls back to tracing
            exported = torch.jit.trace(model, inputs[0])
            traced, note = True, f"traced, not scripted ({type(err).__name__})"
        exported.save(str(path))
        loaded = torch.jit.load(str(path))
    with torch.inference_mode():
        diff = _max_diff(loaded(inputs[0]), references[0])
        if len(inputs) == 1:
            note += ("; " if note else "") + f"the model takes only {size[0]}x{size[1]} inputs"
        else:
            try:  # another batch size and height: a traced model keeps them dynamic for multiples of 32
                diff = max(diff, _max_diff(loaded(inputs[1]), references[1]))
                if traced:
                    note += f": {size_rule(model)}"
            except Exception:  # noqa: BLE001 - the trace fixed the input size
                if not traced:
                    raise
                note += f": the input size is fixed to {size[0]}x{size[1]}"
    return ExportResult(path, "torchscript", size, diff, "torch.jit.load", note, _scale(references))


def size_rule(model: nn.Module) -> str:
    """The input sizes a traced export (ONNX, or a TorchScript trace) is right for, in words.

    The padding to the model's multiple is traced as constants, so other sizes fail or are wrong:
    DeepLab interpolates its logits back to the input size, so nothing fails, the numbers just differ.
    """
    if getattr(model, "valid", False):  # the paper's U-Net with valid convolutions: no padding at all
        return "H and W must be sizes the valid-convolution U-Net takes (e.g. 572, as in the paper)"
    multiple = _multiple(model)
    if multiple == 1:  # bilinear DeepLab / FCN head: no padding but up to the encoder's smallest input
        return f"any H and W of at least {getattr(model, 'min_size', 1)} (smaller ones give wrong logits: pad them bottom/right)"
    return f"H and W must be multiples of {multiple} (other sizes give wrong logits or fail: pad images bottom/right)"


def _onnx(model: nn.Module, inputs: list[torch.Tensor], references: list[torch.Tensor], path: Path,
          size: tuple[int, int], opset: int) -> ExportResult:
    try:
        import onnx  # noqa: F401 - the exporter needs it
    except ImportError as err:
        raise SegkitError("ONNX export needs the onnx package; install it with `pip install onnx onnxruntime`.") from err
    axes = {0: "batch", 2: "height", 3: "width"}
    # Max-location unpooling's sizes are traced as constants: the graph is right at the export
    # shape only (a static graph would be the honest export, but torch's exporter then emits a
    # ScatterElements onnxruntime cannot load). Checked at that shape, and the summary says so.
    static = any(getattr(m, "upsampling", None) == "max_unpool" for m in model.modules())
    if static:
        inputs, references = inputs[:1], references[:1]
    if opset > _MAX_OPSET:
        raise SegkitError(f"--opset {opset} is newer than torch's TorchScript-based ONNX exporter writes (up to {_MAX_OPSET}); "
                          "use the default --opset 17.")
    with warnings.catch_warnings(), _stdout_silenced():
        # The exporter prints its whole IR graph when an opset lacks an operator: the error below says it in one line.
        warnings.simplefilter("ignore")  # tracer and deprecation warnings about the TorchScript-based exporter
        try:
            torch.onnx.export(model, (inputs[0],), str(path), dynamo=False, opset_version=opset, input_names=["image"],
                              output_names=["logits"], dynamic_axes={"image": axes, "logits": axes})
        except Exception as err:  # noqa: BLE001 - the exporter's errors (an opset too old or unknown) name no fix
            first = str(err).strip().splitlines()[0].split(" [Caused by")[0].strip() if str(err).strip() else type(err).__name__
            raise SegkitError(f"ONNX export at --opset {opset} failed ({first}); use the default --opset 17 "
                              "(or another the installed torch supports).") from err
    if static:
        note = (f"max-location unpooling: the graph is right for 1x{inputs[0].shape[1]}x{size[0]}x{size[1]} inputs only, other "
                f"shapes give wrong logits (a TorchScript export takes any batch and sides that are multiples of {_multiple(model)})")
    else:
        note = size_rule(model) if len(inputs) > 1 else f"the model takes only {size[0]}x{size[1]} inputs"
    try:
        import onnxruntime
    except ImportError:
        return ExportResult(path, "onnx", size, None, None, "onnxruntime is not installed, so the outputs were not checked "
                            "(pip install onnxruntime)" + (f"; {note}" if note else ""))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    diff = max(_max_diff(torch.from_numpy(session.run(None, {"image": x.numpy()})[0]), ref) for x, ref in zip(inputs, references))
    return ExportResult(path, "onnx", size, diff, "onnxruntime", note, _scale(references))
