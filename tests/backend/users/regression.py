"""Regression on float targets (scikit-learn's diabetes set), with Keras's regression metrics."""

from __future__ import annotations

import keras
import numpy as np

from dualtrain.data import DataInfo


def load_data(width: int = 1) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_diabetes

    x, y = load_diabetes(return_X_y=True)
    y = (y / 100.0).astype("float32").reshape(-1, 1)
    return x.astype("float32"), np.repeat(y, width, axis=1)  # width > 1: a mistake, for tests


def build_model(data: DataInfo, l2: float = 0.0, outputs: int | None = None) -> keras.Model:
    regularizer = keras.regularizers.L2(l2) if l2 else None
    inputs = keras.Input(shape=data.input_shape)
    hidden = keras.layers.Dense(32, activation="relu", kernel_regularizer=regularizer)(inputs)
    width = outputs or data.target_shape[-1]  # outputs: a mistake, for tests
    out = keras.layers.Dense(width, kernel_regularizer=regularizer)(hidden)
    return keras.Model(inputs, out)


def loss() -> keras.losses.Loss:
    return keras.losses.MeanSquaredError()


def metrics() -> list[keras.metrics.Metric]:
    return [keras.metrics.MeanAbsoluteError(name="mae"), keras.metrics.R2Score(name="r2")]
