"""cnn: a small convolutional classifier for images such as the 8x8 digits."""

from __future__ import annotations

from collections.abc import Sequence

import keras

from dualtrain.data import DataInfo
from dualtrain.errors import RunError


def build_model(
    data: DataInfo, filters: Sequence[int] = (32, 64), dense_units: int = 128, dropout: float = 0.25
) -> keras.Model:
    """Conv-ReLU blocks ('same' padding), max-pooling after the last, a dense head, class logits.

    Images larger than 8x8 (the digits) are pooled after each block and after the last until at
    most 8 pixels a side remain, so the dense head stays small for any image size.
    """
    if len(data.input_shape) != 3:
        raise RunError(
            f"recipe cnn takes images of shape (height, width, channels); the data has samples "
            f"of shape {tuple(data.input_shape)}: use recipe=mlp for feature vectors"
        )
    inputs = keras.Input(shape=data.input_shape, name="image")
    x = inputs
    for n in filters:
        x = keras.layers.Conv2D(n, 3, padding="same", activation="relu")(x)
        if min(x.shape[1], x.shape[2]) > 8:
            x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.MaxPooling2D(2)(x)
    while min(x.shape[1], x.shape[2]) > 8:
        x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(dense_units, activation="relu")(x)
    x = keras.layers.Dropout(dropout)(x)
    logits = keras.layers.Dense(data.num_classes, name="logits")(x)
    return keras.Model(inputs, logits, name="cnn")


def loss() -> keras.losses.Loss:
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def metrics() -> list[keras.metrics.Metric]:
    return [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
