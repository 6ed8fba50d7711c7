"""`data=image_folder`: one sub-folder of images per class, decoded with Pillow as batches are read.

Every file is decoded once before training (in threads: Pillow's decoders release the GIL), so a
file that does not decode is named before the first step, or skipped and counted with
`data.on_bad_file=skip`. During training, images are decoded again batch by batch, by the torch
DataLoader's worker processes or tf.data's parallel map: the folder never has to fit in memory.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from dualtrain.data.dataset import SourceData
from dualtrain.data.rows import Rows
from dualtrain.data.sources import DATA_PATH, NUM_CLASSES, VAL_PATH
from dualtrain.errors import ConfigError, RunError
from dualtrain.settings import Check, choice

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
COLOR_MODES = {"rgb": "RGB", "grayscale": "L"}
ON_BAD_FILE = ("error", "skip")


class ImageFiles(Rows):
    """Image files decoded, converted to RGB or grayscale, resized, scaled to [0, 1]."""

    finite_by_construction = True

    def __init__(self, files: list[Path], image_size: tuple[int, int], color_mode: str) -> None:
        self.files = files
        self.size = image_size
        self.mode = COLOR_MODES[color_mode]
        super().__init__(
            len(files), (*image_size, 3 if self.mode == "RGB" else 1), np.dtype("float32")
        )

    def _read(self, rows: np.ndarray) -> np.ndarray:
        batch = np.empty((len(rows), *self.row_shape), np.float32)
        for i, row in enumerate(rows):
            batch[i] = decode(self.files[int(row)], self.size, self.mode)
        return batch


def decode(path: Path, size: tuple[int, int], mode: str) -> np.ndarray:
    """One image as float32 (height, width, channels) in [0, 1]."""
    from PIL import Image

    height, width = size
    with Image.open(path) as image:
        image.draft(mode, (width, height))  # JPEG: decode at a reduced scale where it can
        converted = image.convert(mode).resize((width, height), Image.Resampling.BILINEAR)
    pixels = np.asarray(converted, dtype=np.float32) / 255.0
    return pixels[..., None] if mode == "L" else pixels


def image_folder(
    path: str,
    seed: int,
    image_size: list[int] | tuple[int, int] = (64, 64),
    color_mode: str = "rgb",
    val_path: str | None = None,
    on_bad_file: str = "error",
    transform: dict[str, Any] | None = None,
) -> SourceData:
    """Images in `path/<class>/`, labels by class folder (sorted names); the val split is the
    same layout in `val_path`, or a seeded stratified `data.val_fraction`."""
    if color_mode not in COLOR_MODES:
        raise ConfigError(f"data.color_mode must be one of rgb, grayscale; got {color_mode!r}")
    size = (int(image_size[0]), int(image_size[1]))
    classes = list(transform["classes"]) if transform else _class_folders(Path(path), "data.path")
    files, labels, notes = _files(Path(path), classes, size, color_mode, on_bad_file, "data.path")
    record = {"kind": "image_folder", "classes": classes, "image_size": list(size)}
    record["color_mode"] = color_mode
    said = f"data.path={path} has"
    x = ImageFiles(files, size, color_mode)
    if val_path is None:
        return SourceData(
            x=x, y=labels, said=said, transform=record, classes=tuple(classes), notes=notes
        )
    val_classes = _class_folders(Path(val_path), "data.val_path")
    unknown = sorted(set(val_classes) - set(classes))
    if unknown:
        raise RunError(
            f"data.val_path={val_path} has class folders {unknown} that data.path={path} lacks; "
            f"the classes are {classes}"
        )
    val_files, val_labels, val_notes = _files(
        Path(val_path), classes, size, color_mode, on_bad_file, "data.val_path"
    )
    return SourceData(
        x=x,
        y=labels,
        x_val=ImageFiles(val_files, size, color_mode),
        y_val=val_labels,
        said=said,
        transform=record,
        classes=tuple(classes),
        notes=notes + val_notes,
    )


def _image_size(value: Any, label: str) -> list[int]:
    if not (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in value)
    ):
        raise ConfigError(f"{label} must be [height, width] in pixels, e.g. [64,64]; got {value!r}")
    return value


# Checked when the config is read (settings.py), before any framework starts.
CONFIG_KEYS: dict[str, dict[str, Check]] = {
    "image_folder": {
        "path": DATA_PATH,
        "val_path": VAL_PATH,
        "num_classes": NUM_CLASSES,
        "image_size": _image_size,
        "on_bad_file": choice(ON_BAD_FILE),
    }
}


def _class_folders(root: Path, label: str) -> list[str]:
    if not root.is_dir():
        raise ConfigError(
            f"{label}={root} is not a folder; give a folder with one sub-folder per class"
        )
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise RunError(
            f"{label}={root} has {len(classes)} class folders; expected one sub-folder of images "
            "per class, at least two (e.g. cats/ and dogs/)"
        )
    return classes


def _files(
    root: Path,
    classes: list[str],
    size: tuple[int, int],
    color_mode: str,
    on_bad_file: str,
    label: str,
) -> tuple[list[Path], np.ndarray, tuple[str, ...]]:
    """The image files of each class folder that decode, their labels, and notes for the log."""
    files: list[Path] = []
    labels: list[int] = []
    empty: list[str] = []
    for index, name in enumerate(classes):
        folder = root / name
        found = (
            sorted(p for p in folder.iterdir() if p.suffix.lower() in EXTENSIONS)
            if folder.is_dir()
            else []
        )
        if folder.is_dir() and not found:
            empty.append(name)
        files += found
        labels += [index] * len(found)
    if not files:
        raise RunError(
            f"{label}={root} has no image files ({', '.join(EXTENSIONS)}) in its class folders "
            f"{', '.join(classes)}; expected images in each, e.g. {root / classes[0] / '001.png'}"
        )
    # A class with no training images would still get a logit that nothing ever trains. Val
    # folders may lack classes, or hold no images of one: a val split of some classes only.
    if empty and label == "data.path":
        raise RunError(
            f"{label}={root} has class folders with no image files ({', '.join(EXTENSIONS)}): "
            f"{', '.join(empty)}; expected images in every class folder: add some, or remove "
            "the empty folders"
        )
    bad = _undecodable(files, size, COLOR_MODES[color_mode])
    if not bad:
        return files, np.array(labels, "int32"), ()
    first, why = bad[0]
    if on_bad_file == "error":
        raise RunError(
            f"{label}={root}: {len(bad)} image files do not decode, the first {first} ({why}); "
            "remove or replace them, or skip them with data.on_bad_file=skip"
        )
    skipped = {path for path, _ in bad}
    keep = [i for i, path in enumerate(files) if path not in skipped]
    names = ", ".join(str(path.relative_to(root)) for path, _ in bad[:5])
    note = (
        f"data.on_bad_file=skip: skipped {len(bad)} of {len(files)} image files in {root} that "
        f"do not decode: {names}{', ...' if len(bad) > 5 else ''}"
    )
    return [files[i] for i in keep], np.array(labels, "int32")[keep], (note,)


def _undecodable(files: list[Path], size: tuple[int, int], mode: str) -> list[tuple[Path, str]]:
    def check(path: Path) -> str | None:
        try:
            decode(path, size, mode)
        except Exception as err:  # Pillow raises several kinds for a broken file
            return f"{type(err).__name__}: {err}"
        return None

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        results = list(pool.map(check, files))
    return [(path, why) for path, why in zip(files, results, strict=True) if why is not None]
