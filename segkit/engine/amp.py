"""Which autocast dtype (and whether a grad scaler) a device gets for ``trainer.amp`` / ``trainer.amp_dtype``.

One decision for training and inference, so that a checkpoint is run at inference in the precision
it was trained in, as far as the GPU at hand allows:

- AMP runs on CUDA only; on any other device it is off (float32, no scaler).
- ``auto``: bfloat16 where the GPU computes it natively (Ampere and newer), else float16 with a
  grad scaler. Older GPUs report bfloat16 as "supported" because it is emulated, at a fraction of
  float16's speed, so the check is ``torch.cuda.is_bf16_supported(including_emulation=False)``.
- ``bfloat16`` on a GPU without native bfloat16: float16 with a grad scaler instead, and a logged
  warning. (Decided so: a config or checkpoint made on an A100 must still train and predict on a
  T4 or V100; emulated bfloat16 would run slower than float32 there, and refusing would strand the
  checkpoint. Set ``trainer.amp_dtype=float16`` to silence the warning, or ``trainer.amp=false``.)
- ``float16``: float16 with a grad scaler (float16 gradients underflow without one).
"""

from __future__ import annotations

import logging

import torch

from segkit.errors import SegkitError

__all__ = ["native_bf16", "resolve_amp"]

logger = logging.getLogger("segkit")

_CHOICES = ("auto", "bfloat16", "float16")


def native_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` is a CUDA GPU that computes bfloat16 natively (not emulated)."""
    device = torch.device(device)
    if device.type != "cuda":
        return False
    if torch.version.hip:  # ROCm: every AMD GPU torch supports computes bfloat16 (torch's own rule)
        return True
    # torch.cuda.is_bf16_supported() asks about the current device, which is not the training one
    # for trainer.device cuda:1 in one process: a machine mixing GPU generations would pick wrongly.
    index = device.index if device.index is not None else torch.cuda.current_device()
    return torch.cuda.get_device_properties(index).major >= 8  # Ampere and later: bfloat16 tensor cores


def resolve_amp(amp: bool, amp_dtype: str, device: torch.device | str) -> tuple[bool, torch.dtype, bool]:
    """``(enabled, dtype, use_scaler)`` for autocast on ``device`` given ``trainer.amp`` and ``trainer.amp_dtype``.

    ``enabled`` is False (dtype float32, no scaler) off CUDA or with ``amp`` False. Inference uses
    ``enabled`` and ``dtype`` and ignores ``use_scaler``.
    """
    if amp_dtype not in _CHOICES:
        raise SegkitError(f"trainer.amp_dtype is {amp_dtype!r}; use one of {', '.join(_CHOICES)}.")
    device = torch.device(device)
    if device.type != "cuda" or not amp:
        return False, torch.float32, False
    if amp_dtype == "float16":
        return True, torch.float16, True
    if native_bf16(device):
        return True, torch.bfloat16, False
    if amp_dtype == "bfloat16":
        logger.warning("trainer.amp_dtype is bfloat16 but this GPU only emulates bfloat16 (slower than float32); "
                       "using float16 with a grad scaler instead (set trainer.amp_dtype=float16 to silence this).")
    return True, torch.float16, True
