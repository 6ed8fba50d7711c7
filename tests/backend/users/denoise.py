"""Self-supervised: no targets at all (y is None); the recipe's phase reconstructs its input."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from dualtrain.data import DataInfo
from dualtrain.recipe import Phase


def load_data() -> tuple[np.ndarray, None]:
    rng = np.random.default_rng(4)
    basis = rng.normal(size=(3, 10))
    return (rng.normal(size=(500, 3)) @ basis).astype("float32"), None


def build_model(data: DataInfo) -> keras.Model:
    inputs = keras.Input(shape=data.input_shape)
    code = keras.layers.Dense(3)(inputs)
    return keras.Model(inputs, keras.layers.Dense(data.input_shape[-1])(code))


def phases(model: keras.Model) -> list[Phase]:
    def reconstruction(m: Any, x: Any, y: Any, training: bool) -> Any:
        assert y is None
        return keras.ops.mean(keras.ops.square(m(x, training=training) - x))

    return [Phase("reconstruction", reconstruction)]
