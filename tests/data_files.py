"""Small data files built on the fly for the data tests: arrays, CSV, a folder of images."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

# Images of class c are noisy pictures dominated by channel c: learnable in a few epochs.
COLORS = ("red", "green", "blue")


def blobs(
    num_samples: int, num_features: int = 6, num_classes: int = 3, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Well-separated classes: a prototype per class plus noise of a third of its scale."""
    rng = np.random.default_rng(seed)
    prototypes = rng.normal(size=(num_classes, num_features)).astype("float32") * 2
    y = rng.integers(0, num_classes, num_samples).astype("int64")
    x = prototypes[y] + 0.3 * rng.normal(size=(num_samples, num_features)).astype("float32")
    return x.astype("float32"), y


def write_npz(path: Path, num_samples: int = 300, with_val: bool = True) -> Path:
    x, y = blobs(num_samples + 100)
    arrays = {"x": x[:num_samples], "y": y[:num_samples]}
    if with_val:
        arrays.update(x_val=x[num_samples:], y_val=y[num_samples:])
    np.savez(path, **arrays)
    return path


def write_npy_folder(folder: Path, num_samples: int = 300) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    x, y = blobs(num_samples)
    np.save(folder / "x.npy", x)
    np.save(folder / "y.npy", y)
    return folder


def write_csv(path: Path, num_rows: int = 300, seed: int = 0) -> Path:
    """Columns: size (numeric, large scale), weight (numeric), color (text), kind (the label:
    'small' or 'large', which size, weight and color all tell)."""
    rng = np.random.default_rng(seed)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["size", "weight", "color", "kind"])
        for i in range(num_rows):
            large = i % 2
            size = 1000 + 400 * large + rng.normal(scale=100)
            weight = 3 * large + rng.normal()
            color = ("red", "green", "blue")[int(rng.integers(2)) + large]
            writer.writerow([f"{size:.2f}", f"{weight:.3f}", color, ("small", "large")[large]])
    return path


def write_image_folder(
    root: Path,
    per_class: int = 24,
    classes: int = 2,
    seed: int = 0,
    sizes: tuple[int, int] = (12, 30),
) -> Path:
    """root/<color>/<i>.png|jpg: images of several sizes, PNG and JPEG mixed."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in range(classes):
        folder = root / COLORS[c]
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            h, w = (int(s) for s in rng.integers(*sizes, size=2))
            pixels = rng.integers(0, 90, size=(h, w, 3))
            pixels[..., c] += 150
            image = Image.fromarray(pixels.astype("uint8"))
            image.save(folder / (f"{i:03d}.png" if i % 2 else f"{i:03d}.jpg"))
    return root
