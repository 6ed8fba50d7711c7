"""mlp: a multilayer perceptron for tabular features, standardized inside the model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

from dualtrain.data import DataInfo, moments


class Standardize(keras.layers.Layer):
    """(x - mean) / std with train-split statistics kept as non-trainable variables.

    As variables they are part of every checkpoint, so a model rebuilt without its data
    (`dualtrain.run.load_model`) gets them back with the weights. A feature that is constant in
    the train split (digits' corner pixels) keeps std 1: dividing by its near-zero spread would
    blow up any val sample that differs there.
    """

    def __init__(self, mean: Any = None, variance: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._initial = (mean, variance)

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        mean, variance = self._initial
        features = input_shape[-1]  # the batch axis may be None; the features' never is
        assert features is not None
        shape = (int(features),)
        if mean is None:  # rebuilt without data: the checkpoint restores the values
            mean, variance = np.zeros(shape, "float32"), np.ones(shape, "float32")
        std = np.sqrt(np.asarray(variance, "float32"))
        std = np.where(std > 1e-3, std, 1.0).astype("float32")
        self.mean = self.add_weight(
            shape=shape, initializer=keras.initializers.Constant(mean), trainable=False, name="mean"
        )
        self.std = self.add_weight(
            shape=shape, initializer=keras.initializers.Constant(std), trainable=False, name="std"
        )

    def call(self, inputs: Any) -> Any:
        return (inputs - self.mean) / self.std


def build_model(
    data: DataInfo, hidden_units: Sequence[int] = (64, 32), dropout: float = 0.1
) -> keras.Model:
    """Standardization with train-split statistics, then Dense-ReLU-Dropout blocks, class logits.

    The statistics are part of the model, so whatever runs the model (eval, export) applies the
    same transform; val data never contributes to them.
    """
    # Read chunk by chunk where x_train is on disk; None when rebuilt from a checkpoint.
    mean, variance = moments(data.x_train) if data.x_train is not None else (None, None)
    inputs = keras.Input(shape=data.input_shape, name="features")
    x = keras.layers.Flatten()(inputs) if len(data.input_shape) > 1 else inputs
    x = Standardize(mean, variance, name="standardize")(x)
    for units in hidden_units:
        x = keras.layers.Dense(units, activation="relu")(x)
        x = keras.layers.Dropout(dropout)(x)
    logits = keras.layers.Dense(data.num_classes, name="logits")(x)
    return keras.Model(inputs, logits, name="mlp")


def loss() -> keras.losses.Loss:
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def metrics() -> list[keras.metrics.Metric]:
    return [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
