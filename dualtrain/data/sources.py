"""Data sets that ship with dualtrain's dependencies or are generated: nothing is downloaded."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


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
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded random classification data of any shape: a prototype per class plus Gaussian noise.

    Learnable (the classes differ by their prototypes), so tests can check that training works.
    """
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in shape)
    prototypes = rng.normal(size=(num_classes, *shape)).astype("float32")
    y = rng.integers(0, num_classes, size=num_samples).astype("int32")
    x = prototypes[y] + noise * rng.normal(size=(num_samples, *shape)).astype("float32")
    return x.astype("float32"), y
