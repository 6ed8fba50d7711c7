"""Two named inputs (numbers, and a category id through an Embedding) and two named outputs (a
class and a value), with a loss and metrics per output and loss weights."""

from __future__ import annotations

import keras
import numpy as np

from dualtrain.data import DataInfo

CATEGORIES = 7


def load_data(rename: bool = False) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    rng = np.random.default_rng(3)
    n = 900
    numbers = rng.normal(size=(n, 4)).astype("float32")
    category = rng.integers(0, CATEGORIES, size=(n, 1)).astype("int32")
    kind = ((numbers[:, 0] + (category[:, 0] % 2)) > 0.5).astype("int32")
    value = (numbers @ np.array([1.0, -2.0, 0.5, 0.0]) + category[:, 0] / 3).astype("float32")
    inputs = {"nums" if rename else "numbers": numbers, "category": category}  # rename: a mistake
    return inputs, {"kind": kind, "value": value[:, None]}


def build_model(data: DataInfo) -> keras.Model:
    numbers = keras.Input(shape=data.input("numbers").shape, name="numbers")
    category = keras.Input(shape=data.input("category").shape, name="category", dtype="int32")
    embedded = keras.layers.Flatten()(keras.layers.Embedding(CATEGORIES, 4)(category))
    h = keras.layers.Dense(32, activation="relu")(keras.layers.Concatenate()([numbers, embedded]))
    kind = keras.layers.Dense(data.target("kind").num_classes, name="kind")(h)
    value = keras.layers.Dense(1, name="value")(h)
    return keras.Model({"numbers": numbers, "category": category}, {"kind": kind, "value": value})


def loss() -> dict[str, keras.losses.Loss]:
    return {
        "kind": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        "value": keras.losses.MeanSquaredError(),
    }


def metrics() -> dict[str, list[keras.metrics.Metric]]:
    return {
        "kind": [keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        "value": [keras.metrics.MeanAbsoluteError(name="mae")],
    }
