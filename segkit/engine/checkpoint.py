"""Run checkpoints: written atomically, read without unpickling arbitrary objects.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts:
``{"model": state_dict, "optimizer": ..., "scheduler": ..., "scaler": ..., "epoch": int,
"step": int, "rng": {...}, "config": {...}, "metrics": {...}}``. It loads with
``torch.load(path, weights_only=True)``; segkit never loads one any other way, so a file that
needs arbitrary unpickling is refused with a ``SegkitError``.

Writes go to a temporary file in the same directory, are flushed to disk, then renamed over the
target (``os.replace`` is atomic on POSIX and Windows): a crash mid-write leaves the previous
``last.pt`` intact, never a truncated one.

:class:`CheckpointWriter` does those writes off the training thread: the state is first copied
to the CPU (so the next step may change the live tensors), then a single writer thread writes,
fsyncs and renames; the training loop only waits for a write still pending when it submits the
next one for the same file, and at the end of the run.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pickle
import random
import tempfile
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segkit.errors import SegkitError

__all__ = ["CheckpointWriter", "capture_rng", "cpu_copy", "load_checkpoint", "restore_grad_scaler", "restore_rng",
           "save_checkpoint"]


def _process_umask() -> int:
    """This process's umask, read without changing it where Linux tells it (os.umask sets it to read it)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return _UMASK  # elsewhere: as it was at import (os.umask sets the mask to read it: not from a writer thread)


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Write ``state`` to ``path`` atomically (temp file + fsync + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if hasattr(os, "fchmod"):  # mkstemp makes 0600: give the mode any new file gets (0644 under umask 022)
            os.fchmod(fd, 0o666 & ~_process_umask())
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    # A process killed mid-write (SIGKILL, out of memory) left its temp file: one writer per file, so
    # any other temp of this name is such a leftover (tens of MB each).
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        stale.unlink(missing_ok=True)


def cpu_copy(value: Any) -> Any:
    """``value`` with every tensor copied to the CPU (a new tensor even when it already lives there).

    A state dict aliases the live parameters and optimizer moments: written later, in another
    thread, it would hold whatever the next steps made of them. The copy freezes it now.
    """
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {key: cpu_copy(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(cpu_copy(item) for item in value)
    return value


class CheckpointWriter:
    """Writes checkpoints with :func:`save_checkpoint` in one background thread.

    ``submit`` copies the state to the CPU on the calling thread, then returns while the write goes
    on; a write still pending for the same path is waited for first (so files are written in
    order and at most one CPU copy per file is held). ``close`` waits for everything. A failed
    write (disk full) leaves the previous file intact and raises from the next ``submit`` or
    ``close``, on the training thread.
    """

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="segkit-checkpoint")
        self._pending: dict[Path, Future[None]] = {}
        self._lock = threading.Lock()

    def submit(self, state: dict[str, Any], path: str | os.PathLike[str]) -> None:
        path = Path(path)
        self.wait(path)
        frozen = cpu_copy(state)
        with self._lock:
            # looked up through the module at call time, so a test can slow or break the write
            self._pending[path] = self._pool.submit(lambda: save_checkpoint(frozen, path))

    def wait(self, path: str | os.PathLike[str] | None = None) -> None:
        """Wait for the pending write of ``path`` (of every path when None); re-raise its error."""
        with self._lock:
            keys = list(self._pending) if path is None else [Path(path)]
            futures = [(key, self._pending.pop(key)) for key in keys if key in self._pending]
        for _, future in futures:
            future.result()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._pool.shutdown(wait=True)

    def __enter__(self) -> CheckpointWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        if exc[0] is None:
            self.close()
            return
        # Leaving on an error: the pending writes still finish (or fail) before the error goes on,
        # but a write error must not replace the one already propagating.
        with contextlib.suppress(Exception):
            self.close()


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a segkit checkpoint with ``weights_only=True``; ``SegkitError`` for anything else."""
    path = Path(path)
    if not path.is_file():
        raise SegkitError(f"checkpoint {path} does not exist; pass a last.pt or best.pt from a run directory.")
    with path.open("rb") as file:
        head = file.read(4)
    # torch.save writes a zip archive (PK..), or a pickle (protocol byte 0x80) in the legacy format.
    if not (head.startswith(b"PK") or head[:1] == b"\x80"):
        raise SegkitError(f"{path} is not a PyTorch checkpoint (it is neither a torch.save archive nor a pickle); "
                          "pass a last.pt or best.pt from a run directory.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise SegkitError(
            f"checkpoint {path} refused: it needs unpickling arbitrary Python objects, which segkit never does; "
            f"save checkpoints as plain dicts of tensors and numbers."
        ) from err
    except Exception as err:
        raise SegkitError(f"checkpoint {path} is not a readable PyTorch checkpoint ({type(err).__name__}); it may be truncated or of another format.") from err
    if not isinstance(state, dict) or "model" not in state:
        raise SegkitError(f"checkpoint {path} has no 'model' entry; it is not a segkit run checkpoint.")
    return state


def capture_rng(device: torch.device | str | None = None) -> dict[str, Any]:
    """Every random generator training on ``device`` uses, as plain values (numpy's state as a tensor).

    On a GPU that is the training GPU's generator (``cuda_device``), not every GPU's as this
    process sees them: under torchrun rank 0 writes the checkpoint, and its view of GPU r is a
    generator rank r never drew from (rank r draws from its own process's). Every rank seeds
    alike and draws alike, so rank 0's own state is every rank's.
    """
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": list(random.getstate()[1]) + [random.getstate()[0], random.getstate()[2]],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
    }
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda":
        state["cuda_device"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict[str, Any], device: torch.device | str | None = None) -> str | None:
    """Inverse of :func:`capture_rng`, training on ``device``.

    A state saved on a GPU (``cuda_device``) goes to the training GPU, whichever it is now; on the
    CPU it is unused. Checkpoints before it held one state per GPU the saving process saw
    (``cuda``): resumed with fewer GPUs, the first ones are restored; with more, the extra GPUs keep
    the states ``torch.manual_seed`` gave them. Returns a line saying so when the counts differ
    (None when they match).
    """
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[-2], tuple(py[:-2]), py[-1]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    device = torch.device(device) if device is not None else None
    if "cuda_device" in state:
        if device is not None and device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_device"], device)
        return None
    saved = list(state.get("cuda") or [])
    # Per device, not torch.cuda.set_rng_state_all: that one indexes device i for every saved state
    # and fails on a machine with fewer GPUs than the one that saved.
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for index, cuda_state in enumerate(saved[:visible]):
        torch.cuda.set_rng_state(cuda_state, index)
    if saved and len(saved) != visible:
        return (f"the checkpoint holds CUDA random states for {len(saved)} GPU(s) and {visible} are visible now: "
                f"restored {min(len(saved), visible)}; the run continues, but not bit-identically on the GPU.")
    return None


def restore_grad_scaler(scaler: torch.amp.GradScaler, saved: dict[str, Any] | None) -> str | None:
    """Load a checkpoint's grad-scaler state into ``scaler`` where both use one.

    A disabled scaler (CPU, bfloat16, AMP off) saves ``{}``; an enabled one (float16 on CUDA)
    saves its scale. A run resumed with the other setting continues: an enabled scaler without a
    saved state starts fresh (GradScaler itself would raise on ``{}``), a disabled one drops the
    saved scale. Returns the line to log in those cases (None when the settings match).
    """
    saved = saved or {}
    if scaler.is_enabled() and not saved:
        return ("the checkpoint was saved without a grad scaler (CPU, bfloat16 or AMP off) and float16 AMP is on now: "
                f"starting a fresh grad scaler (scale {scaler.get_scale():g}).")
    if not scaler.is_enabled():
        return ("the checkpoint's grad-scaler state is not used: float16 AMP is off now (CPU, bfloat16 or AMP off)."
                if saved else None)
    try:
        scaler.load_state_dict(saved)
    except (KeyError, RuntimeError) as err:
        raise SegkitError(f"the checkpoint's grad-scaler state is not one GradScaler reads ({err}); "
                          f"the file may be damaged: resume from another checkpoint or set trainer.amp=false.") from err
    return None
