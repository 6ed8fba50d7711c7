"""Generated images with per-pixel labels: nothing is downloaded, and no framework is imported.

`shapes` draws a few filled circles, squares and triangles with NumPy on a noisy background,
seeded; the target is a mask of the same height and width that gives each pixel's kind of shape
(0 = background). Shapes are told apart by their outline only: every shape, whatever its kind,
gets a brightness drawn from the same range, so a model must segment by geometry.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from dualtrain.errors import ConfigError
from dualtrain.settings import Check, integer, number

SHAPE_CLASSES = ("background", "circle", "square", "triangle")


def shapes(
    seed: int,
    num_samples: int = 1600,
    image_size: Sequence[int] = (24, 24),
    max_shapes: int = 3,
    noise: float = 0.1,
    channels: int = 1,
) -> Any:
    """`num_samples` images (height, width, channels) in [0, 1] with 1..`max_shapes` shapes each,
    and their masks (height, width) of int32 labels: 0 background, 1 circle, 2 square, 3 triangle.

    A later shape is drawn over an earlier one where they overlap; the mask shows what is seen.
    The split into train and val is the loader's seeded random `data.val_fraction`.
    """
    from dualtrain.data.dataset import SourceData

    if not (
        isinstance(image_size, Sequence)
        and not isinstance(image_size, str)
        and len(image_size) == 2
        and all(isinstance(s, int) and not isinstance(s, bool) and s >= 12 for s in image_size)
    ):
        raise ConfigError(
            "data.image_size must be [height, width], integers each at least 12, e.g. "
            f"data.image_size=[24,24]; got {image_size!r}"
        )
    height, width = (int(s) for s in image_size)
    rng = np.random.default_rng(seed)
    x = np.empty((num_samples, height, width, channels), "float32")
    y = np.zeros((num_samples, height, width), "int32")
    rows, cols = np.mgrid[0:height, 0:width]
    small = min(height, width)
    for i in range(num_samples):
        background = rng.uniform(0.0, 0.3, size=channels)
        image = np.broadcast_to(background, (height, width, channels)).copy()
        mask = np.zeros((height, width), "int32")
        for _ in range(int(rng.integers(1, max_shapes + 1))):
            kind = int(rng.integers(1, len(SHAPE_CLASSES)))
            size = rng.uniform(0.12, 0.25) * small  # a radius, or half a side
            cy, cx = rng.uniform(size, height - size), rng.uniform(size, width - size)
            inside = _inside(kind, rows, cols, cy, cx, size, rng)
            image[inside] = rng.uniform(0.55, 1.0, size=channels)
            mask[inside] = kind
        image += rng.normal(0.0, noise, size=image.shape)
        x[i] = np.clip(image, 0.0, 1.0)
        y[i] = mask
    return SourceData(
        x=x, y=y, said=f"data source shapes (data.num_samples={num_samples}) gave",
        classes=SHAPE_CLASSES,
    )  # fmt: skip


def _inside(
    kind: int,
    rows: np.ndarray,
    cols: np.ndarray,
    cy: float,
    cx: float,
    size: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """The pixels (a boolean (height, width) array) inside a shape of `kind` at (cy, cx)."""
    dy, dx = rows + 0.5 - cy, cols + 0.5 - cx
    if kind == 1:  # a circle of radius `size`
        return np.asarray(dy**2 + dx**2 <= size**2)
    if kind == 2:  # an axis-aligned square of side 2 * size
        return np.asarray((np.abs(dy) <= size) & (np.abs(dx) <= size))
    # An upright or upside-down isosceles triangle in the same box: its width shrinks to 0 at
    # the apex.
    flip = 1.0 if rng.random() < 0.5 else -1.0
    depth = (flip * dy + size) / (2 * size)  # 0 at the apex, 1 at the base
    return np.asarray((depth >= 0) & (depth <= 1) & (np.abs(dx) <= size * depth))


CONFIG_KEYS: dict[str, dict[str, Check]] = {
    "shapes": {
        "num_samples": integer(2),
        "max_shapes": integer(1),
        "noise": number(lambda v: 0 <= v < 1, "a number in [0, 1) such as 0.1"),
        "channels": integer(1),
    }
}
