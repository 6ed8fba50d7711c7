"""Data sets that ship with dualtrain's dependencies or are generated: nothing is downloaded."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from dualtrain.data.dataset import split_problem
from dualtrain.errors import ConfigError
from dualtrain.settings import Check, existing_path, integer, optional

# A source's own config keys: the module's CONFIG_KEYS table, source function -> data.<key> -> its
# check, is run by settings.py when the config is read (before any framework is imported), on the
# keys the config gives. These checks are shared by the sources of files.
DATA_PATH = existing_path("the path of an existing file or folder", "file or folder")
VAL_PATH = existing_path("the path of an existing file or folder")
NUM_CLASSES = optional(integer(2))  # also the number of classes the labels are checked against


def digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 handwritten digits: 8x8x1 images scaled to [0, 1], labels 0-9."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images / 16.0).astype("float32")[..., None]
    return x, bunch.target.astype("int32")


def breast_cancer() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's Wisconsin breast cancer set: 569 samples, 30 raw features, 2 classes.

    Features are returned unscaled; recipes standardize them with train-split statistics.
    """
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    return bunch.data.astype("float32"), bunch.target.astype("int32")


def synthetic(
    seed: int,
    num_samples: int = 2048,
    shape: Sequence[int] = (8, 8, 1),
    num_classes: int = 10,
    noise: float = 1.0,
    val_fraction: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded random classification data of any shape: a prototype per class plus Gaussian noise.

    Learnable (the classes differ by their prototypes), so tests can check that training works.
    With `val_fraction`, too few samples for a stratified train/val split are refused here, where
    the message can name data.num_samples.
    """
    num_samples = _whole(num_samples, "data.num_samples", "e.g. data.num_samples=2048", 1)
    num_classes = _whole(num_classes, "data.num_classes", "e.g. data.num_classes=10", 2)
    if not (
        isinstance(shape, Sequence)
        and not isinstance(shape, str)
        and len(shape) > 0
        and all(_is_int(s) and s >= 1 for s in shape)
    ):
        raise ConfigError(
            f"data.shape must be a sample's shape, a list of integers each at least 1, e.g. "
            f"data.shape=[8,8,1] or data.shape=[20]; got {_shown(shape)}"
        )
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not 0 <= noise < math.inf:
        raise ConfigError(f"data.noise must be a number >= 0, e.g. data.noise=1.0; got {noise!r}")
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in shape)
    prototypes = rng.normal(size=(num_classes, *shape)).astype("float32")
    y = rng.integers(0, num_classes, size=num_samples).astype("int32")
    x = prototypes[y] + noise * rng.normal(size=(num_samples, *shape)).astype("float32")
    if val_fraction is not None and (problem := split_problem(y, val_fraction)) is not None:
        raise ConfigError(
            f"data.num_samples={num_samples} is too few to split into train and val: {problem}; "
            "raise data.num_samples"
        )
    return x.astype("float32"), y


CONFIG_KEYS: dict[str, dict[str, Check]] = {"synthetic": {"num_classes": NUM_CLASSES}}


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _whole(value: Any, key: str, example: str, minimum: int) -> int:
    if not _is_int(value) or value < minimum:
        kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ConfigError(f"{key} must be {kind}, {example}; got {_shown(value)}")
    return int(value)


def _shown(value: Any) -> str:
    """A config value for a message: a list (or tuple) as a list, anything else as repr."""
    listed = isinstance(value, Sequence) and not isinstance(value, str)
    return repr(list(value)) if listed else repr(value)
