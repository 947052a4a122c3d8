"""Small writers for generated test data (images, masks, folder layouts); no fixtures here."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image


def write_png(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array) if mode is None else Image.fromarray(array, mode=mode)
    image.save(path)
    return path


def write_palette_png(path: Path, indices: np.ndarray, palette: list[tuple[int, int, int]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(indices.astype(np.uint8), mode="P")
    flat = [c for rgb in palette for c in rgb]
    image.putpalette(flat + [0] * (768 - len(flat)))
    image.save(path)
    return path


def gray(h: int = 24, w: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)


def rgb(h: int = 24, w: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def labels(h: int = 24, w: int = 32, num_classes: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed + 100).integers(0, num_classes, (h, w), dtype=np.uint8)


def make_folder(root: Path, stems: list[str], split: str | None = None, h: int = 24, w: int = 32) -> Path:
    """root/images[/split]/<stem>.png (grayscale) + root/masks[/split]/<stem>.png (labels 0..2)."""
    sub = Path(split) if split else Path()
    for i, stem in enumerate(stems):
        write_png(root / "images" / sub / f"{stem}.png", gray(h, w, i))
        write_png(root / "masks" / sub / f"{stem}.png", labels(h, w, 3, i))
    return root


def tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()
