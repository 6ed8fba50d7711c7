"""regression: an MLP with a linear path for float targets (scikit-learn's diabetes set).

The model standardizes its features with train-split statistics kept as model variables (the mlp
recipe's `Standardize` layer, so a checkpoint rebuilds without data), then adds two paths into
one output per target value:

- a linear path, `Dense(outputs)` on the standardized features: on a small, nearly linear data
  set (442 patients) it carries most of the signal, as a ridge regression would;
- a hidden path, `Dense(units, relu)` blocks and `Dense(outputs)`, for what is not linear.

Trained with the mean squared error; logged metrics: mean absolute error and R² (Keras's
`R2Score`, one value over the whole val split). No dropout: the model is small, and without
random layers `mode=parity` compares it as it trains.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras

from dualtrain.data import DataInfo, moments
from dualtrain.recipes.mlp import Standardize


def build_model(data: DataInfo, hidden_units: Sequence[int] = (16,)) -> keras.Model:
    """Standardize, then the sum of a linear and a hidden path, one output per target value."""
    mean, variance = moments(data.x_train) if data.x_train is not None else (None, None)
    outputs = data.target_shape[-1] if data.target_shape else 1
    inputs = keras.Input(shape=data.input_shape, name="features")
    x = Standardize(mean, variance, name="standardize")(inputs)
    linear = keras.layers.Dense(outputs, name="linear")(x)
    h = x
    for units in hidden_units:
        h = keras.layers.Dense(units, activation="relu")(h)
    hidden = keras.layers.Dense(outputs, name="hidden_out")(h)
    return keras.Model(inputs, keras.layers.Add(name="value")([linear, hidden]), name="regression")


def loss() -> keras.losses.Loss:
    return keras.losses.MeanSquaredError()


def metrics() -> list[keras.metrics.Metric]:
    return [keras.metrics.MeanAbsoluteError(name="mae"), keras.metrics.R2Score(name="r2")]
