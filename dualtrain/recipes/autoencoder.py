"""autoencoder: a convolutional autoencoder on images such as the 8x8 digits.

Its training step is its own: one phase whose loss is the reconstruction error of the input, not
a loss on labels. The engines compute the gradients (autograd on torch, GradientTape on tf).
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from dualtrain.data import DataInfo
from dualtrain.recipe import Phase


def build_model(data: DataInfo, latent: int = 16, filters: int = 32) -> keras.Model:
    """Conv (stride 2) -> dense code of `latent` numbers -> dense -> transposed conv -> image."""
    height, width, channels = data.input_shape
    inputs = keras.Input(shape=data.input_shape, name="image")
    x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", activation="relu")(inputs)
    x = keras.layers.Flatten()(x)
    code = keras.layers.Dense(latent, activation="relu", name="code")(x)
    x = keras.layers.Dense((height // 2) * (width // 2) * filters, activation="relu")(code)
    x = keras.layers.Reshape((height // 2, width // 2, filters))(x)
    x = keras.layers.Conv2DTranspose(filters, 3, strides=2, padding="same", activation="relu")(x)
    outputs = keras.layers.Conv2D(channels, 3, padding="same", activation="sigmoid")(x)
    return keras.Model(inputs, outputs, name="autoencoder")


def reconstruction_error(model: Any, x: Any, y: Any, training: bool) -> Any:
    """Mean squared error between the images and their reconstructions (labels unused)."""
    return ops.mean(ops.square(model(x, training=training) - x))


def phases(model: keras.Model) -> list[Phase]:
    return [Phase("reconstruction", reconstruction_error)]


def metrics() -> list[keras.metrics.Metric]:
    return [keras.metrics.MeanAbsoluteError(name="mae")]


def update_metrics(metrics: list[keras.metrics.Metric], model: Any, x: Any, y: Any) -> None:
    """Val metrics compare the images with their reconstructions."""
    reconstruction = model(x, training=False)
    for metric in metrics:
        metric.update_state(x, reconstruction)
