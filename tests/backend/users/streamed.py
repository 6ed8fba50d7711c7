"""Data made on the fly: a keras.utils.PyDataset that draws each batch from its index and
reshuffles the batch order from its own seed at each epoch's end, and the same data as a
function of the epoch that yields batches."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import keras
import numpy as np

from dualtrain.data import DataInfo

CENTERS = np.random.default_rng(5).normal(size=(3, 6)).astype("float32") * 2


def blob_batch(seed: int, index: int, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([seed, index])
    y = rng.integers(0, 3, size)
    return (CENTERS[y] + rng.normal(size=(size, 6))).astype("float32"), y.astype("int64")


class Blobs(keras.utils.PyDataset):
    num_classes = 3  # the labels' class count: a batch source is not read whole

    def __init__(self, seed: int, batches: int, shuffle: bool, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.seed, self.batches, self.shuffle = seed, batches, shuffle
        self.order = np.arange(batches)
        self.epochs = 0

    def __len__(self) -> int:
        return self.batches

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return blob_batch(self.seed, int(self.order[index]))

    def on_epoch_end(self) -> None:
        self.epochs += 1
        if self.shuffle:
            self.order = np.random.default_rng([self.seed, self.epochs]).permutation(self.batches)


def load_data(workers: int = 2) -> tuple[Blobs, Blobs]:
    return Blobs(0, 12, shuffle=True, workers=workers), Blobs(1, 3, shuffle=False)


def load_generated() -> tuple[Callable[[int], Iterator[Any]], Callable[[], Iterator[Any]]]:
    def train(epoch: int) -> Iterator[Any]:
        order = np.random.default_rng([0, epoch]).permutation(12)
        return (blob_batch(0, int(i)) for i in order)

    def val() -> Iterator[Any]:
        return (blob_batch(1, i) for i in range(3))

    return train, val


def load_varied() -> tuple[Callable[[int], Iterator[Any]], Callable[[], Iterator[Any]]]:
    """Batches of 12 different sizes (20 to 31 samples), as a source of variable-length
    records might give them."""

    def train(epoch: int) -> Iterator[Any]:
        order = np.random.default_rng([0, epoch]).permutation(12)
        return (blob_batch(0, int(i), size=20 + int(i)) for i in order)

    def val() -> Iterator[Any]:
        return (blob_batch(1, i, size=20 + i) for i in range(3))

    return train, val


def build_model(data: DataInfo) -> keras.Model:
    inputs = keras.Input(shape=data.input_shape)
    hidden = keras.layers.Dense(16, activation="relu")(inputs)
    return keras.Model(inputs, keras.layers.Dense(data.num_classes)(hidden))


def loss() -> keras.losses.Loss:
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def metrics() -> list[keras.metrics.Metric]:
    return [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
