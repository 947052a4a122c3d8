"""Reading torchvision-format checkpoint files into segkit backbones.

The files torchvision publishes (``resnet50-0676ba61.pth``, ``vgg16-397923af.pth``, ...) are plain
state dicts; segkit's backbones use the same parameter names, so they load without conversion.
Nothing here downloads anything: ``weights`` is always a local path.

Loading is strict in what matters and forgiving in what is routine:

* every tensor of the architecture must be found in the file, and every tensor of the file must
  belong to the architecture, else a ``SegkitError`` names the file and the first offenders;
* a 3-channel first convolution adapts to any ``in_channels`` (see :func:`adapt_first_conv`);
* a classification head of another size than the checkpoint's keeps its fresh initialisation,
  with a log line saying so (fine-tuning on new classes);
* an encoder silently drops the classifier head it does not have;
* a ``{"model": state_dict}`` or ``{"state_dict": ...}`` wrapper and DDP's ``module.`` prefix are
  unwrapped.

Files are read with ``torch.load(weights_only=True)``: a file that needs arbitrary unpickling is
refused, never executed.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from segkit.errors import SegkitError

__all__ = ["adapt_first_conv", "load_weights", "read_checkpoint"]

logger = logging.getLogger("segkit")

_SHOW = 5  # how many offending tensor names an error message lists


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Read a state dict of tensors from ``path`` (torchvision format, or segkit's ``{"model": ...}``)."""
    path = Path(path)
    if not path.exists():
        raise SegkitError(f"weights file {path} does not exist; pass the path of a checkpoint file you have locally (segkit never downloads).")
    if not path.is_file():
        raise SegkitError(f"weights path {path} is not a file; pass the checkpoint file itself, e.g. resnet50-0676ba61.pth.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if found is None:
            raise SegkitError(f"weights file {path} is not a readable PyTorch checkpoint (it does not unpickle); check that the download or copy is complete.") from err
        raise SegkitError(
            f"weights file {path} holds a Python object ({found.group(1)}) that only unsafe unpickling could load; "
            f"re-save it as a plain state dict (torch.save(model.state_dict(), ...))."
        ) from err
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise SegkitError(f"weights file {path} is not a readable PyTorch checkpoint ({type(err).__name__}: {err}); check that the download or copy is complete.") from err
    for wrapper in ("model", "state_dict"):
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
            break
    if not isinstance(obj, Mapping) or not obj:
        raise SegkitError(f"weights file {path} does not hold a state dict (a mapping of names to tensors); save one with torch.save(model.state_dict(), ...).")
    state: dict[str, Tensor] = {}
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, Tensor):
            raise SegkitError(f"weights file {path} has an entry {key!r} that is not a named tensor; save a plain state dict instead.")
        state[key.removeprefix("module.")] = value
    return state


def adapt_first_conv(weight: Tensor, in_channels: int) -> Tensor:
    """Adapt a first-convolution weight ``(O, I, k, k)`` to ``in_channels`` inputs, as smp does.

    One channel: the sum over the checkpoint's channels (a grey image repeated over RGB gives the
    same response). Otherwise the checkpoint's channels are repeated cyclically and scaled by
    ``I / in_channels`` so the expected activation size is kept.
    """
    old = weight.shape[1]
    if in_channels == old:
        return weight
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    index = torch.arange(in_channels) % old
    return weight[:, index] * (old / in_channels)


def _starts(key: str, prefixes: Iterable[str]) -> bool:
    return any(key.startswith(p) for p in prefixes)


def load_weights(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    first_conv: str,
    head_prefixes: Iterable[str] = (),
    ignore_prefixes: Iterable[str] = (),
) -> None:
    """Load the checkpoint at ``path`` into ``model`` in place, with the rules of the module doc.

    ``first_conv`` is the state-dict prefix of the image convolution (``"conv1"``,
    ``"features.0"``); ``head_prefixes`` those of classification layers whose size may differ from
    the checkpoint's; ``ignore_prefixes`` those checkpoint entries the model is known not to have.
    """
    source = read_checkpoint(path)
    head_prefixes, ignore_prefixes = tuple(head_prefixes), tuple(ignore_prefixes)
    target = model.state_dict()
    conv_key = f"{first_conv}.weight"
    if conv_key in source and conv_key in target and source[conv_key].dim() == 4:
        source[conv_key] = adapt_first_conv(source[conv_key], target[conv_key].shape[1])

    # Old checkpoints predate BatchNorm's step counter; BatchNorm itself fills it in.
    missing = [k for k in target if k not in source and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in source if k not in target and not _starts(k, ignore_prefixes)]
    reinit, mismatched, to_load = [], [], {}
    for key, value in source.items():
        if key not in target:
            continue
        if value.shape == target[key].shape:
            to_load[key] = value
        elif _starts(key, head_prefixes):
            reinit.append(key)
        else:
            mismatched.append(f"{key} {tuple(value.shape)} in the file vs {tuple(target[key].shape)} in the model")

    problems = []
    if missing:
        problems.append(f"missing {_first(missing)}")
    if unexpected:
        problems.append(f"unexpected {_first(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatch {_first(mismatched)}")
    if problems:
        raise SegkitError(
            f"weights file {path} does not fit {type(model).__name__}: {'; '.join(problems)}; "
            f"check that the file is the checkpoint of this architecture."
        )
    model.load_state_dict(to_load, strict=False)
    if reinit:
        layers = sorted({k.rsplit(".", 1)[0] for k in reinit})
        logger.info("segkit: %s: classification layer(s) %s have another number of classes than %s; they keep their fresh initialisation.", type(model).__name__, ", ".join(layers), path)


def _first(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOW])
    return f"{shown} (+{len(keys) - _SHOW} more)" if len(keys) > _SHOW else shown
