"""A subclassed model (layers made in __init__, used in call) with BatchNorm and Dropout, on
integer class labels."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from dualtrain.data import DataInfo


def load_data(as_float: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 600).astype("int64")
    centers = rng.normal(size=(3, 6)) * 2
    x = (centers[y] + rng.normal(size=(600, 6))).astype("float32")
    return x, y.astype("float32") if as_float else y  # as_float: a mistake, for tests


class Net(keras.Model):
    def __init__(self, classes: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.hidden = keras.layers.Dense(32)
        self.norm = keras.layers.BatchNormalization()
        self.drop = keras.layers.Dropout(0.1)
        self.out = keras.layers.Dense(classes)

    def call(self, x: Any, training: bool = False) -> Any:
        h = keras.ops.relu(self.norm(self.hidden(x), training=training))
        return self.out(self.drop(h, training=training))


def build_model(data: DataInfo) -> keras.Model:
    return Net(data.num_classes)


def loss() -> keras.losses.Loss:
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def metrics() -> list[keras.metrics.Metric]:
    return [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
