"""A built-in dataset that looks like a microscopy task, generated on disk in seconds.

``make_synthetic(root, n, size, seed)`` writes a folder dataset::

    root/images/train/0000.png ... root/images/val/...    8-bit grayscale images
    root/masks/train/0000.png  ... root/masks/val/...     index masks: 0 background, 1 round cell,
                                                           2 elongated cell

Cells are ellipses of two types: small round cells with a darker nucleus, and larger elongated
cells with a granular interior; their brightness ranges overlap, so shape and texture (not
intensity alone) tell them apart. About a third of the cells are placed touching a neighbour.
The background is textured, the illumination uneven (a gradient and a bright spot), the image
blurred a little (optics) and noisy (signal-dependent Gaussian noise).

Same arguments, same bytes: every image comes from its own generator spawned from ``seed``, so
image ``i`` also does not depend on ``n``. The last ``round(n * val_fraction)`` images form the
val split.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from segkit.errors import SegkitError, positive_int

__all__ = ["SYNTHETIC_CLASSES", "SYNTHETIC_RECORD", "make_synthetic", "record_synthetic", "reuse_synthetic"]

SYNTHETIC_CLASSES = ["background", "round_cell", "elongated_cell"]


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian noise smoothed to blobs of about ``sigma`` pixels, rescaled to zero mean, unit std."""
    from scipy import ndimage  # here, not at the top: importing segkit.data stays cheap

    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return (field - field.mean()) / (field.std() + 1e-12)


def _render(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    scale = min(height, width) / 128.0
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    mask = np.zeros((height, width), np.uint8)
    cells = np.zeros((height, width), np.float32)
    granules = np.clip(_smooth_noise(rng, (height, width), 0.8), 0, None)
    cell_texture = _smooth_noise(rng, (height, width), 2.0 * scale)

    placed: list[tuple[float, float, float]] = []  # (cy, cx, mean radius)
    n_cells = int(rng.integers(14, 22) * (height * width) / (min(height, width) ** 2))
    for _ in range(n_cells):
        kind = int(rng.integers(1, 3))
        if kind == 1:
            a = rng.uniform(5.0, 8.0) * scale
            b = a * rng.uniform(0.8, 1.0)
        else:
            a = rng.uniform(9.0, 14.0) * scale
            b = rng.uniform(3.5, 5.5) * scale
        angle = rng.uniform(0.0, np.pi)
        radius = (a + b) / 2
        for _attempt in range(20):
            if placed and rng.random() < 0.35:  # touch a neighbour
                cy0, cx0, r0 = placed[int(rng.integers(len(placed)))]
                theta = rng.uniform(0, 2 * np.pi)
                dist = r0 + radius * 0.95
                cy, cx = cy0 + dist * np.sin(theta), cx0 + dist * np.cos(theta)
            else:
                cy, cx = rng.uniform(0, height), rng.uniform(0, width)
            if not (-0.3 * radius < cy < height + 0.3 * radius and -0.3 * radius < cx < width + 0.3 * radius):
                continue
            y0, y1 = max(int(cy - a - 2), 0), min(int(cy + a + 3), height)
            x0, x1 = max(int(cx - a - 2), 0), min(int(cx + a + 3), width)
            if y1 <= y0 or x1 <= x0:
                continue
            dy, dx = yy[y0:y1, x0:x1] - cy, xx[y0:y1, x0:x1] - cx
            u = (dx * np.cos(angle) + dy * np.sin(angle)) / a
            v = (-dx * np.sin(angle) + dy * np.cos(angle)) / b
            r2 = u * u + v * v
            inside = r2 <= 1.0
            if not inside.any() or (mask[y0:y1, x0:x1][inside] > 0).mean() > 0.15:
                continue
            brightness = rng.uniform(0.5, 0.85) if kind == 1 else rng.uniform(0.4, 0.75)
            profile = brightness * (0.8 + 0.2 * (1.0 - r2))
            if kind == 1:  # darker nucleus, off-centre a little
                nu, nv = rng.uniform(-0.2, 0.2, size=2)
                nucleus = (u - nu) ** 2 + (v - nv) ** 2 < 0.4**2
                profile = np.where(nucleus, profile * 0.6, profile)
                profile = profile + 0.04 * cell_texture[y0:y1, x0:x1]
            else:  # granular interior
                profile = profile * (0.85 + 0.3 * granules[y0:y1, x0:x1])
            cells[y0:y1, x0:x1][inside] = profile[inside]
            mask[y0:y1, x0:x1][inside] = kind
            placed.append((cy, cx, radius))
            break

    background = 0.12 + 0.05 * _smooth_noise(rng, (height, width), 6.0 * scale)
    image = np.where(mask > 0, cells, background)
    # Uneven illumination: a linear ramp in a random direction and a broad bright spot.
    phi = rng.uniform(0, 2 * np.pi)
    ramp = ((xx / width - 0.5) * np.cos(phi) + (yy / height - 0.5) * np.sin(phi)) * rng.uniform(0.3, 0.6)
    sy, sx = rng.uniform(0, height), rng.uniform(0, width)
    spot = np.exp(-((yy - sy) ** 2 + (xx - sx) ** 2) / (2 * (0.35 * max(height, width)) ** 2))
    image = image * (0.75 + ramp + 0.35 * spot)
    from scipy import ndimage

    image = ndimage.gaussian_filter(image, 0.8 * scale)
    image = image + rng.standard_normal((height, width)) * (0.025 + 0.05 * np.sqrt(np.clip(image, 0, None)))
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8), mask


def make_synthetic(
    root: str | os.PathLike,
    n: int = 32,
    size: int | Sequence[int] = 128,
    seed: int = 0,
    val_fraction: float = 0.25,
) -> Path:
    """Write ``n`` synthetic microscopy images and index masks under ``root``; return ``root``.

    ``size`` is an int or (height, width). Files are ``images/{train,val}/NNNN.png`` (8-bit
    grayscale) and ``masks/{train,val}/NNNN.png`` (values 0, 1, 2; see ``SYNTHETIC_CLASSES``).
    Existing files of the same names are overwritten.
    """
    message = f"make_synthetic needs n >= 1 and a size of at least 16 pixels (an int or (height, width)), got n={n!r}, size={size!r}"
    sizes = [size, size] if not isinstance(size, (list, tuple)) else list(size)
    if len(sizes) != 2:
        raise SegkitError(message)
    n = positive_int(n, message)
    height, width = (positive_int(s, message) for s in sizes)
    if height < 16 or width < 16:
        raise SegkitError(message)
    if not 0.0 <= val_fraction < 1.0:
        raise SegkitError(f"val_fraction is {val_fraction}; it must lie in [0, 1)")
    root = Path(root)
    n_val = min(max(round(n * val_fraction), 1 if val_fraction > 0 else 0), n - 1)  # n=2: one each, not none to validate
    digits = max(4, len(str(n - 1)))
    generators = np.random.SeedSequence(seed).spawn(n)
    for split in ("train", "val"):
        for sub in ("images", "masks"):
            (root / sub / split).mkdir(parents=True, exist_ok=True)
    for i, entropy in enumerate(generators):
        image, mask = _render(np.random.default_rng(entropy), height, width)
        split = "train" if i < n - n_val else "val"
        name = f"{i:0{digits}d}.png"
        Image.fromarray(image).save(root / "images" / split / name, format="PNG")
        Image.fromarray(mask).save(root / "masks" / split / name, format="PNG")
    return root


SYNTHETIC_RECORD = "segkit_synthetic.json"  # what a config's data.synthetic asked for, written beside the data


def reuse_synthetic(root: Path, present: bool, request: dict) -> bool:
    """Whether ``root`` (``present``: it holds a dataset) already holds the synthetic data
    ``request`` (``data.synthetic``'s seed, n and size) describes: True to reuse it, False to make it.

    A folder made for another request is an error, not reused in silence (the run's config.yaml
    would name data it did not train on). A folder without the record (made by an older segkit,
    or a user's own data) is reused as it is.
    """
    if not present:
        return False
    record = root / SYNTHETIC_RECORD
    if record.is_file():
        try:
            made = json.loads(record.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return True
        wanted = json.loads(json.dumps(request))  # as the record holds them

        def said(values: dict) -> str:
            return ", ".join(f"{key}={values[key]}" for key in sorted(values))

        if made != wanted:
            raise SegkitError(f"data.root {root} holds synthetic data made with {said(made)}, not the {said(wanted)} that "
                              f"data.synthetic asks for; point data.root at another folder, or delete {root} to make it again.")
    return True


def record_synthetic(root: Path, request: dict) -> None:
    """Write what ``root``'s synthetic data was made with (see :func:`reuse_synthetic`)."""
    (root / SYNTHETIC_RECORD).write_text(json.dumps(request, sort_keys=True) + "\n", encoding="utf-8")
