"""``segkit predict``: index masks (palette PNGs) and overlays for a folder of images.

Each image is read, scaled and standardised as the checkpoint's training data was (its config's
``data.options`` and ``data.val_transforms``, see ``segkit.engine.inputs``), run through the
model whole or by sliding window, and its prediction written at the image's own size:

- ``OUTPUT/masks/<stem>.png``: the class indices as a palette PNG (pixel value = class, colours from
  ``segkit.engine.plots.palette`` for viewing; more than 256 classes: a 16-bit grayscale PNG);
- ``OUTPUT/overlays/<stem>.png``: the class colours blended over the image.

Nested input folders keep their structure (``in/a/b.tif`` -> ``OUTPUT/masks/a/b.png``). The masks
read back as labels with ``segkit.data`` and score with ``segkit evaluate --pred OUTPUT/masks --gt ...``.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from segkit.errors import SegkitError

__all__ = ["predict_folder", "predict_image", "save_index_png"]


def save_index_png(labels: np.ndarray, num_classes: int, path: Path) -> None:
    """Class indices ``(H, W)`` as a palette PNG (or 16-bit grayscale beyond 256 classes)."""
    from segkit.engine.plots import palette

    path.parent.mkdir(parents=True, exist_ok=True)
    if num_classes > 256:
        Image.fromarray(labels.astype(np.uint16)).save(path)
        return
    image = Image.fromarray(labels.astype(np.uint8))  # mode L; putpalette makes it P, keeping the indices
    colors = palette(num_classes).reshape(-1).tolist()
    image.putpalette(colors + [0] * (768 - len(colors)))
    image.save(path)


def _list_images(source: Path, output: Path) -> tuple[list[Path], list[str]]:
    """Image files under ``source`` (or ``source`` itself) and their output names, outputs excluded."""
    from segkit.data.layout import find_files
    from segkit.data.io import IMAGE_EXTENSIONS

    if not source.exists():
        raise SegkitError(f"input {source} does not exist; pass an image file or a folder of images.")
    if output.resolve() == source.resolve():
        what = "file" if source.is_file() else "folder"
        raise SegkitError(f"--output {output} is the input {what}; write the predictions to another folder.")
    folder = source.resolve().parent if source.is_file() else source.resolve()
    if output.resolve() in folder.parents:
        # Its masks/ would be written where a dataset keeps its ground truth (images/ beside masks/), or
        # over the input itself. A single file directly in --output is fine: masks/ goes beside it.
        raise SegkitError(f"the input {source} lies inside --output {output}, whose masks/ folder predict would fill "
                          "(a dataset's ground truth is often there); write the predictions to a folder outside it.")
    if source.is_file():
        return [source], [source.stem]
    if not source.is_dir():
        raise SegkitError(f"input {source} is not an image file or a folder; pass an image file or a folder of images.")
    files, problems = find_files(source, IMAGE_EXTENSIONS, None, "image")
    if problems:  # "keep one of them" would lose an image here: predictions are named by stem
        raise SegkitError(problems[0].replace("; keep one of them", "; rename one of them (predictions are named by stem)") + ".")
    inside = output.resolve()  # an output folder inside the input: its earlier predictions are not inputs
    names = [stem for stem, path in sorted(files.items()) if inside not in path.resolve().parents]
    if not names:
        raise SegkitError(f"no images found in {source} (looked for {'/'.join(e.lstrip('.') for e in IMAGE_EXTENSIONS)}).")
    return [files[stem] for stem in names], names


def _make_output_folder(output: Path) -> None:
    """Create ``output`` before any inference, or say why it cannot be (a file there, no permission)."""
    if output.exists() and not output.is_dir():
        raise SegkitError(f"--output {output} is a file; give a folder for the masks (and overlays) to go in.")
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SegkitError(f"--output {output} cannot be created ({err.strerror or err}); give a folder you can write to.") from err


def predict_folder(
    checkpoint: str | os.PathLike[str],
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    device: str = "auto",
    tile: int | None = None,
    overlap: float = 0.25,
    tta: bool = False,
    amp: bool = True,
    batch_size: int | None = None,
    workers: int | None = None,
    overlays: bool = True,
    progress: bool = False,
) -> list[Path]:
    """Predict every image under ``source`` with the checkpoint's model; return the mask files written."""
    from omegaconf import OmegaConf

    from segkit.engine.builders import transform_steps
    from segkit.engine.inference import check_tile_options, load_model, warn_heavy_overlap
    from segkit.engine.inputs import ImageFiles, InferenceItems, InputPipeline, checkpoint_amp, iterate_logits, loader_workers, normalisation_options
    from segkit.engine.plots import overlay
    from segkit.engine.train import resolve_device

    check_tile_options(tile, overlap, batch_size)
    warn_heavy_overlap(tile, overlap)
    source, output = Path(source), Path(output)
    paths, names = _list_images(source, output)
    _make_output_folder(output)
    dev = resolve_device(device)
    model, cfg = load_model(checkpoint, dev)
    options: dict[str, Any] = OmegaConf.to_container(cfg.data.options, resolve=True)  # type: ignore[assignment]
    dataset = ImageFiles(paths, cfg.model.in_channels, **normalisation_options(options))
    pipeline = InputPipeline(transform_steps(cfg, train=False), cfg.data.ignore_index, cfg.trainer.seed)
    items = InferenceItems(dataset, pipeline, masks=False, keep_image=overlays)
    num_classes = cfg.model.num_classes
    batch = batch_size or cfg.trainer.val_batch_size or cfg.trainer.batch_size
    if tile is not None and not pipeline.identity:
        logging.getLogger("segkit").warning(
            "the checkpoint's data.val_transforms resize or pad the image, so --tile runs on the whole image in memory "
            "(image and logits as float32), not stripe by stripe; for slides too big for that, train without val_transforms.")
    if tile is not None and pipeline.identity:  # bounded memory for images of any size
        return _predict_striped(model, cfg, dataset, names, output, dev, tile=tile, overlap=overlap, tta=tta, amp=amp,
                                batch_size=batch, overlays=overlays, progress=progress)
    written: list[Path] = []
    for item, logits in iterate_logits(model, items, dev, batch_size=batch,
                                       workers=loader_workers(workers, cfg.data.num_workers), tile=tile, overlap=overlap, tta=tta,
                                       amp=checkpoint_amp(cfg, amp, dev), channels_last=dev.type == "cuda" and cfg.trainer.channels_last,
                                       progress="predict" if progress else None):
        labels = logits.argmax(1)[0].cpu().numpy()
        target = output / "masks" / f"{names[item.index]}.png"
        save_index_png(labels, num_classes, target)
        written.append(target)
        if overlays and item.unit_image is not None:
            from segkit.engine import stripes

            # subsampled as the striped path draws them: a 20k image's overlay would be a 1.2 GB RGB array
            step = max(1, math.ceil(max(labels.shape) / stripes.OVERLAY_MAX_SIDE))
            unit = item.unit_image[::step, ::step]
            shown = unit if unit.shape[2] == 3 else unit[..., 0]
            picture = (overlay(shown, labels[::step, ::step], num_classes) * 255.0 + 0.5).astype(np.uint8)
            shown_path = output / "overlays" / f"{names[item.index]}.png"
            shown_path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(picture).save(shown_path)
    return written


def predict_image(
    model: Any,
    cfg: Any,
    image: str | os.PathLike[str] | np.ndarray | Image.Image,
    *,
    tile: int | None = None,
    overlap: float = 0.25,
    tta: bool = False,
    amp: bool = True,
    logits: bool = False,
) -> Any:
    """One image's labels ``(H, W)`` (int64 numpy), prepared exactly as ``segkit predict`` prepares a file.

    ``model, cfg`` are :func:`segkit.engine.inference.load_model`'s pair. ``image`` is a file path,
    pixels ``(H, W)`` or ``(H, W, C)`` as stored (uint8, uint16 or float, as
    :func:`segkit.data.io.read_image` gives them), or a Pillow image: the checkpoint's config
    scales them (8-bit by 1/255, 16-bit by percentiles), repeats grey for an RGB model,
    standardises with its mean/std and applies its validation transforms, so the result equals
    ``segkit predict``'s mask for the same pixels. ``tile``, ``overlap``, ``tta`` and ``amp`` as
    for ``segkit predict``. ``logits=True`` returns the float32 logits ``(K, H, W)`` (a tensor on
    the model's device) instead.
    """
    from omegaconf import OmegaConf

    from segkit.data.io import pil_pixels
    from segkit.engine.builders import transform_steps
    from segkit.engine.inference import check_tile_options
    from segkit.engine.inputs import ImageFiles, InferenceItems, InputPipeline, checkpoint_amp, iterate_logits, normalisation_options

    check_tile_options(tile, overlap)
    if isinstance(image, Image.Image):
        image = _file_of_16_bit_rgb_png(image) or pil_pixels(image)
    if isinstance(image, np.ndarray):
        if image.ndim not in (2, 3) or image.size == 0:
            raise SegkitError(f"predict_image takes pixels (H, W) or (H, W, C); got an array of shape {image.shape}.")
        pixels = image[:, :, None] if image.ndim == 2 else image
        path = Path("<array>")
    elif isinstance(image, (str, os.PathLike)):
        pixels, path = None, Path(image)
        if not path.is_file():
            raise SegkitError(f"image {path} is not a file; pass an image file, a numpy array or a Pillow image.")
    else:
        raise SegkitError(f"predict_image takes a file path, a numpy array or a Pillow image; got {type(image).__name__}.")
    options: dict[str, Any] = OmegaConf.to_container(cfg.data.options, resolve=True)  # type: ignore[assignment]
    dataset = ImageFiles([path], cfg.model.in_channels, **normalisation_options(options))
    if pixels is not None:
        dataset.read_raw_image = lambda index: pixels  # type: ignore[method-assign]
    pipeline = InputPipeline(transform_steps(cfg, train=False), cfg.data.ignore_index, cfg.trainer.seed)
    items = InferenceItems(dataset, pipeline, masks=False)
    device = next(model.parameters()).device
    [(_, output)] = iterate_logits(model, items, device, batch_size=1, tile=tile, overlap=overlap, tta=tta,
                                   amp=checkpoint_amp(cfg, amp, device), channels_last=device.type == "cuda" and cfg.trainer.channels_last)
    return output[0] if logits else output[0].argmax(0).cpu().numpy()


def _file_of_16_bit_rgb_png(image: Image.Image) -> str | None:
    """The file of a Pillow image opened from a 16-bit RGB PNG, as it was opened: Pillow keeps only
    the high byte of its pixels (12-bit data became 0-15), segkit's reader keeps all 16 bits."""
    source = getattr(image, "filename", "")
    if not source or image.format != "PNG" or image.mode != "RGB" or not os.path.isfile(source):
        return None
    with open(source, "rb") as file:
        header = file.read(26)
    return source if len(header) == 26 and header[24] == 16 and header[25] == 2 else None


def _predict_striped(model: Any, cfg: Any, dataset: Any, names: list[str], output: Path, dev: Any, *, tile: int, overlap: float,
                     tta: bool, amp: bool, batch_size: int, overlays: bool, progress: bool) -> list[Path]:
    """``predict_folder`` with ``--tile`` and no resizing transforms: each image read, standardised and
    labelled by stripes (:mod:`segkit.engine.stripes`), the same labels in memory bounded by the tile."""
    from segkit.engine.inference import flip_tta, model_forward
    from segkit.engine.inputs import checkpoint_amp
    from segkit.engine.stripes import RowReader, overlay_rows, striped_labels

    forward = model_forward(model, checkpoint_amp(cfg, amp, dev), channels_last=dev.type == "cuda" and cfg.trainer.channels_last)
    if tta:
        forward = flip_tta(forward)
    num_classes = cfg.model.num_classes
    indices: Any = range(len(dataset))
    if progress:
        from tqdm import tqdm

        indices = tqdm(indices, desc="predict", leave=False, dynamic_ncols=True, disable=None)
    written: list[Path] = []
    for index in indices:
        reader = RowReader(dataset.image_path(index), dataset, dev)
        labels = striped_labels(forward, reader, num_classes, tile, overlap, batch_size=batch_size)
        target = output / "masks" / f"{names[index]}.png"
        save_index_png(labels, num_classes, target)
        written.append(target)
        if overlays:
            shown_path = output / "overlays" / f"{names[index]}.png"
            shown_path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(overlay_rows(reader, labels, num_classes)).save(shown_path)
    return written
