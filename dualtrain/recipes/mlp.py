"""mlp: a multilayer perceptron for tabular features, standardized inside the model."""

from __future__ import annotations

from collections.abc import Sequence

import keras

from dualtrain.data import DataInfo, moments


def build_model(
    data: DataInfo, hidden_units: Sequence[int] = (64, 32), dropout: float = 0.1
) -> keras.Model:
    """Standardization with train-split statistics, then Dense-ReLU-Dropout blocks, class logits.

    The statistics are part of the model, so whatever runs the model (eval, export) applies the
    same transform; val data never contributes to them.
    """
    mean, variance = moments(data.x_train)  # read chunk by chunk where x_train is on disk
    inputs = keras.Input(shape=data.input_shape, name="features")
    x = keras.layers.Flatten()(inputs) if len(data.input_shape) > 1 else inputs
    x = keras.layers.Normalization(mean=mean, variance=variance)(x)
    for units in hidden_units:
        x = keras.layers.Dense(units, activation="relu")(x)
        x = keras.layers.Dropout(dropout)(x)
    logits = keras.layers.Dense(data.num_classes, name="logits")(x)
    return keras.Model(inputs, logits, name="mlp")


def loss() -> keras.losses.Loss:
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def metrics() -> list[keras.metrics.Metric]:
    return [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
