"""A recipe with a two-phase training step, for the phase tests: each phase trains one layer with
its own optimizer; a third layer belongs to no phase and must not move."""

from __future__ import annotations

from typing import Any

import keras

from dualtrain.data import DataInfo
from dualtrain.recipe import Phase


def build_model(data: DataInfo) -> keras.Model:
    inputs = keras.Input(shape=data.input_shape)
    x = keras.layers.Flatten()(inputs)
    x = keras.layers.Dense(16, activation="relu", name="first")(x)
    x = keras.layers.Dense(16, activation="relu", name="frozen")(x)
    return keras.Model(inputs, keras.layers.Dense(data.num_classes, name="second")(x))


def _cross_entropy(model: Any, x: Any, y: Any, training: bool) -> Any:
    logits = model(x, training=training)
    return keras.ops.mean(keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True))


def phases(model: keras.Model) -> list[Phase]:
    return [
        Phase("first", _cross_entropy, lambda m: m.get_layer("first").trainable_variables),
        Phase(
            "second",
            _cross_entropy,
            lambda m: m.get_layer("second").trainable_variables,
            optimizer={"lr": 0.01},
        ),
    ]
