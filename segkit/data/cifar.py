"""CIFAR-10/100 "python version" batch files, read without unpickling arbitrary objects; a synthetic twin.

The archives ``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz`` (Krizhevsky 2009) extract to
Python pickles: CIFAR-10 has ``data_batch_1`` ... ``data_batch_5``, ``test_batch`` and
``batches.meta``; CIFAR-100 has ``train``, ``test`` and ``meta``. Each batch is a dict with
``b"data"``, a uint8 numpy array ``(N, 3072)`` holding each image as three 32x32 planes (R, G, B,
row-major), and ``b"labels"`` (CIFAR-10) or ``b"fine_labels"`` / ``b"coarse_labels"``
(CIFAR-100), lists of ints; the meta file names the classes (``b"label_names"``,
``b"fine_label_names"``, ``b"coarse_label_names"``).

segkit never downloads them: point ``data.root`` at the extracted folder (or its parent). The
files are read by an unpickler that only admits what such files contain (dicts, lists, bytes and
numpy's array reconstruction); any other Python object in a file is refused with a
``SegkitError``, never constructed. Images of any square size ``(N, 3 * s * s)`` are accepted,
so the synthetic data of :func:`make_synthetic_cifar` (16x16 by default) uses the same reader.
"""

from __future__ import annotations

import codecs
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from segkit.data.classification import ClassificationDataset, ClassificationTransform
from segkit.errors import SegkitError

__all__ = ["CifarDataset", "SYNTHETIC_SHAPES", "find_cifar", "make_synthetic_cifar", "read_cifar_batch"]


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """The only globals a CIFAR pickle needs: numpy's array and scalar reconstruction, and the bytes codec."""
    try:
        from numpy._core import multiarray, numeric  # numpy >= 2
    except ImportError:  # pragma: no cover (numpy 1.x)
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
                                           ("_codecs", "encode"): codecs.encode}
    for package in ("numpy.core", "numpy._core"):  # files pickled under numpy 1 and numpy 2
        allowed[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = multiarray.scalar
        allowed[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer
    return allowed


class _Refused(pickle.UnpicklingError):
    """A global outside :func:`_allowed_globals` (its dotted name is the message)."""


class _CifarUnpickler(pickle.Unpickler):
    allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        found = self.allowed.get((module, name))
        if found is None:
            raise _Refused(f"{module}.{name}")
        return found


def _str_keys(obj: dict[Any, Any]) -> dict[str, Any]:
    return {(k.decode("latin1") if isinstance(k, bytes) else str(k)): v for k, v in obj.items()}


def read_cifar_batch(path: str | os.PathLike[str]) -> dict[str, Any]:
    """One CIFAR pickle as a dict with str keys (bytes keys of the original files decoded)."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            obj = _CifarUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise SegkitError(f"CIFAR file {path} does not exist; extract the 'python version' archive into data.root.") from None
    except _Refused as err:
        raise SegkitError(f"CIFAR file {path} holds a Python object ({err}) that no CIFAR batch contains; segkit refuses to "
                          f"unpickle it. Use the original files from the 'python version' archive.") from None
    except pickle.UnpicklingError as err:
        raise SegkitError(f"CIFAR file {path} is not a readable pickle ({err}); it may be truncated: extract the archive again.") from None
    except Exception as err:  # EOFError, ValueError, ... of truncated or foreign files
        raise SegkitError(f"CIFAR file {path} is not a readable pickle ({type(err).__name__}); it may be truncated: extract the archive again.") from None
    if not isinstance(obj, dict):
        raise SegkitError(f"CIFAR file {path} holds a {type(obj).__name__}, not the dict of a CIFAR batch; check the file.")
    return _str_keys(obj)


def find_cifar(root: str | os.PathLike[str]) -> tuple[Path, str]:
    """The folder holding the batches (``root`` or its cifar-10-batches-py / cifar-100-python) and "cifar10" or "cifar100"."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise SegkitError(f"CIFAR folder {root} does not exist; set data.root to the folder the 'python version' archive "
                          "extracts to (cifar-10-batches-py or cifar-100-python, or their parent).")
    for folder in (root, root / "cifar-10-batches-py", root / "cifar-100-python"):
        if (folder / "data_batch_1").is_file():
            return folder, "cifar10"
        if (folder / "train").is_file() and (folder / "test").is_file():
            return folder, "cifar100"
    raise SegkitError(f"{root} holds no CIFAR batch files (data_batch_1..5 and test_batch for CIFAR-10, train and test for "
                      f"CIFAR-100); set data.root to the folder the 'python version' archive extracts to.")


def _images_and_labels(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    batch = read_cifar_batch(path)
    for key in ("data", label_key):
        if key not in batch:
            raise SegkitError(f"CIFAR file {path} has no '{key}' entry (it has {', '.join(sorted(batch)) or 'nothing'}); "
                              f"is it a CIFAR-10 file read as CIFAR-100 or the reverse?")
    data, labels = batch["data"], batch[label_key]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        kind = f"a {data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise SegkitError(f"CIFAR file {path}: 'data' is {kind}, not a uint8 array (N, 3072); the file is damaged or not a CIFAR batch.")
    side = int(round((data.shape[1] / 3) ** 0.5))
    if 3 * side * side != data.shape[1]:
        raise SegkitError(f"CIFAR file {path}: rows of {data.shape[1]} values are not three square planes (3072 = 3 x 32 x 32).")
    try:
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError):
        raise SegkitError(f"CIFAR file {path}: '{label_key}' is not a list of integer labels.") from None
    if len(labels) != len(data):
        raise SegkitError(f"CIFAR file {path} has {len(data)} images but {len(labels)} labels in '{label_key}'; the file is damaged.")
    return data.reshape(-1, 3, side, side), labels


class CifarDataset(ClassificationDataset):
    """A CIFAR-10/100 split from the extracted "python version" folder.

    Args:
        root: the folder with the batch files (or its parent).
        split: ``"train"`` (all training batches, minus the last ``holdout`` images), ``"val"``
            (those last ``holdout`` training images: the ResNet paper's 45k/5k split with
            ``holdout=5000``) or ``"test"``.
        transform: a :class:`ClassificationTransform` (None: scaled to [0, 1]).
        labels: CIFAR-100's ``"fine"`` (100 classes) or ``"coarse"`` (20) labels.
        holdout: training images kept back for ``"val"``.

    ``images`` is the split as one uint8 tensor ``(N, 3, s, s)``, ``targets`` its int64 labels.
    """

    def __init__(self, root: str | os.PathLike[str], split: str = "train", transform: ClassificationTransform | None = None,
                 labels: str = "fine", holdout: int = 0) -> None:
        folder, kind = find_cifar(root)
        if split not in ("train", "val", "test"):
            raise SegkitError(f"CIFAR has the splits train and test (and val with data.options.holdout); got split {split!r}.")
        if isinstance(holdout, bool) or not isinstance(holdout, int) or holdout < 0:
            raise SegkitError(f"data.options.holdout is {holdout!r}; give the number of training images to keep back for "
                              "data.val_split=val, a whole number >= 0 (5000: the ResNet paper's 45k/5k split).")
        if split == "val" and holdout <= 0:
            raise SegkitError("CIFAR has no val split of its own: set data.val_split=test, or data.options.holdout=N to keep "
                              "the last N training images back (5000: the ResNet paper's 45k/5k split).")
        if labels not in ("fine", "coarse"):
            raise SegkitError(f"data.options.labels is {labels!r}; CIFAR-100 has 'fine' (100 classes) or 'coarse' (20) labels.")
        if kind == "cifar10" and labels != "fine":
            raise SegkitError(f"data.options.labels is {labels!r}, but {folder} holds CIFAR-10, which has one set of 10 labels; "
                              "remove the option (coarse labels are CIFAR-100's).")
        if kind == "cifar10":
            label_key, meta_name, names_key = "labels", "batches.meta", "label_names"
            train_files = sorted(folder.glob("data_batch_*"), key=lambda p: (len(p.name), p.name))
            test_files = [folder / "test_batch"]
        else:
            label_key, meta_name, names_key = f"{labels}_labels", "meta", f"{labels}_label_names"
            train_files, test_files = [folder / "train"], [folder / "test"]
        parts = [_images_and_labels(p, label_key) for p in (test_files if split == "test" else train_files)]
        images = np.concatenate([p[0] for p in parts])
        targets = np.concatenate([p[1] for p in parts])
        if split != "test" and holdout:
            if holdout >= len(images):
                raise SegkitError(f"data.options.holdout={holdout} keeps back every one of the {len(images)} training images; use fewer (e.g. {max(1, len(images) // 10)}, a tenth).")
            keep = slice(len(images) - holdout, None) if split == "val" else slice(0, len(images) - holdout)
            images, targets = images[keep], targets[keep]
        self.classes = self._class_names(folder / meta_name, names_key, kind, labels)
        bad = targets[(targets < 0) | (targets >= len(self.classes))]
        if bad.size:
            raise SegkitError(f"CIFAR data in {folder} has label {int(bad[0])}, outside the {len(self.classes)} classes of its meta file; the files do not belong together.")
        self.root, self.kind, self.split = folder, kind, split
        self.images = torch.from_numpy(np.ascontiguousarray(images))
        self.targets = torch.from_numpy(targets)
        self.in_channels = 3
        self.transform = transform

    @staticmethod
    def _class_names(meta: Path, key: str, kind: str, labels: str) -> list[str]:
        if not meta.is_file():  # the names are a convenience: count the classes the archive has
            count = 10 if kind == "cifar10" else (100 if labels == "fine" else 20)
            return [str(i) for i in range(count)]
        names = read_cifar_batch(meta).get(key)
        if not isinstance(names, list) or not names:
            raise SegkitError(f"CIFAR meta file {meta} has no '{key}' list of class names; the file is damaged.")
        return [n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in names]

    def __len__(self) -> int:
        return len(self.targets)

    def load(self, index: int) -> tuple[Tensor, int]:
        return self.images[index], int(self.targets[index])


# -- synthetic CIFAR-format data ---------------------------------------------------------------

def _shapes(u: np.ndarray, v: np.ndarray) -> list[np.ndarray]:
    """Masks of the ten shapes at normalised coordinates (u right, v down; radius 1). All survive a horizontal flip."""
    r, box = np.hypot(u, v), np.maximum(abs(u), abs(v))
    return [
        r < 1.0,  # disk
        (r > 0.55) & (r < 1.0),  # ring
        box < 0.8,  # square
        (box > 0.5) & (box < 0.9),  # frame
        ((abs(u) < 0.3) & (abs(v) < 1.0)) | ((abs(v) < 0.3) & (abs(u) < 1.0)),  # plus
        (abs(abs(u) - abs(v)) < 0.35) & (box < 1.0),  # cross (X)
        (v < 0.8) & (abs(u) < (v + 1.0) / 2),  # triangle, apex up
        (v > -0.8) & (abs(u) < (1.0 - v) / 2),  # triangle, apex down
        (abs(u) < 1.0) & ((abs(v - 0.5) < 0.22) | (abs(v + 0.5) < 0.22)),  # two horizontal bars
        (abs(v) < 1.0) & ((abs(u - 0.5) < 0.22) | (abs(u + 0.5) < 0.22)),  # two vertical bars
    ]


SYNTHETIC_SHAPES = ["disk", "ring", "square", "frame", "plus", "cross", "triangle_up", "triangle_down", "hbars", "vbars"]


def _render(rng: np.random.Generator, labels: np.ndarray, size: int, noise: float) -> np.ndarray:
    n = len(labels)
    grid = np.arange(size) + 0.5
    cx, cy = rng.uniform(0.3, 0.7, n) * size, rng.uniform(0.3, 0.7, n) * size
    radius = rng.uniform(0.2, 0.4, n) * size
    u = (grid[None, None, :] - cx[:, None, None]) / radius[:, None, None]
    v = (grid[None, :, None] - cy[:, None, None]) / radius[:, None, None]
    masks = np.stack(_shapes(u, v))  # (10, n, s, s)
    mask = masks[labels, np.arange(n)]
    background = rng.uniform(0, 1, (n, 3))
    foreground = (background + rng.uniform(0.3, 0.7, (n, 3))) % 1.0  # every channel differs by >= 0.3 (circularly)
    image = np.where(mask[:, None], foreground[:, :, None, None], background[:, :, None, None])
    image = image + noise * rng.standard_normal(image.shape)
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8).reshape(n, -1)


def make_synthetic_cifar(root: str | os.PathLike[str], n: int = 6000, size: int = 16, seed: int = 0, noise: float = 0.15,
                         test_fraction: float = 1 / 6) -> Path:
    """Write a CIFAR-10-format folder of generated images (``data_batch_1``, ``test_batch``, ``batches.meta``).

    Ten classes of shapes (:data:`SYNTHETIC_SHAPES`) at random position and size, in random
    colours on a random background, with Gaussian noise of std ``noise``; ``size`` x ``size``
    RGB, classes balanced. ``n`` images in all, ``test_fraction`` of them in ``test_batch``
    (CIFAR's own ratio by default). Returns ``root``.
    """
    if n < 20 or size < 8:
        raise SegkitError(f"synthetic CIFAR data needs n >= 20 images of size >= 8; got n={n}, size={size}.")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % len(SYNTHETIC_SHAPES))
    data = _render(rng, labels, size, noise)
    n_test = max(int(round(n * test_fraction)), 1)
    batches = {"data_batch_1": slice(0, n - n_test), "test_batch": slice(n - n_test, n)}
    for name, part in batches.items():
        batch = {b"batch_label": name.encode(), b"data": data[part], b"labels": labels[part].tolist(),
                 b"filenames": [f"{i:06d}.png".encode() for i in range(part.start, part.stop)]}
        with (root / name).open("wb") as f:
            pickle.dump(batch, f, protocol=2)  # the protocol of the original files
    with (root / "batches.meta").open("wb") as f:
        pickle.dump({b"label_names": [s.encode() for s in SYNTHETIC_SHAPES], b"num_vis": 3 * size * size}, f, protocol=2)
    return root
