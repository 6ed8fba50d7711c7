"""One classifier in each model style a researcher writes: Sequential, a subclassed model with
its own build, and a functional model around a layer of the user's own."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from dualtrain.data import DataInfo


def load_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(6)
    y = rng.integers(0, 3, 600)
    centers = rng.normal(size=(3, 5)) * 2
    return (centers[y] + rng.normal(size=(600, 5))).astype("float32"), y.astype("int32")


class Scale(keras.layers.Layer):
    """A learned per-feature scale and shift: a user's own layer, with its own weights."""

    def build(self, input_shape: tuple[Any, ...]) -> None:
        self.scale = self.add_weight(shape=(input_shape[-1],), initializer="ones", name="scale")
        self.shift = self.add_weight(shape=(input_shape[-1],), initializer="zeros", name="shift")

    def call(self, x: Any) -> Any:
        return x * self.scale + self.shift


class BuiltNet(keras.Model):
    """Subclassed, with its own build: the weights exist before the first call."""

    def __init__(self, classes: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.classes = classes

    def build(self, input_shape: tuple[Any, ...]) -> None:
        self.hidden = keras.layers.Dense(16, activation="relu")
        self.hidden.build(input_shape)
        self.out = keras.layers.Dense(self.classes)
        self.out.build((input_shape[0], 16))

    def call(self, x: Any, training: bool = False) -> Any:
        return self.out(self.hidden(x))


def build_model(data: DataInfo, style: str = "sequential") -> keras.Model:
    classes = data.num_classes
    if style == "sequential":
        return keras.Sequential(
            [
                keras.Input(shape=data.input_shape),
                keras.layers.Dense(16, activation="relu"),
                keras.layers.Dense(classes),
            ]
        )
    if style == "subclassed_build":
        model = BuiltNet(classes)
        model.build((None, *data.input_shape))
        return model
    if style == "custom_layer":
        inputs = keras.Input(shape=data.input_shape)
        hidden = keras.layers.Dense(16, activation="relu")(Scale()(inputs))
        return keras.Model(inputs, keras.layers.Dense(classes)(hidden))
    raise ValueError(f"no style {style!r}")


def loss() -> keras.losses.Loss:
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def metrics() -> list[keras.metrics.Metric]:
    return [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
