"""A recipe and its data for the non-finite-loss tests: one train sample makes the loss NaN.

Its features are finite (the data checks let them through), but the model squares them first:
3e38 squared overflows float32 to inf, and inf times weights of both signs gives NaN.
"""

from __future__ import annotations

import keras
import numpy as np

from dualtrain.data import DataInfo

OVERFLOW_SAMPLE = 3  # of the train split; in the 3rd batch of 32 of epoch 0 with seed 0


def load_data() -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 8)).astype("float32")
    y = rng.integers(0, 4, 200).astype("int32")
    x[OVERFLOW_SAMPLE] = 3e38
    return x[:160], y[:160], x[160:], y[160:]


def build_model(data: DataInfo) -> keras.Model:
    inputs = keras.Input(shape=data.input_shape)
    squared = keras.layers.Multiply()([inputs, inputs])
    hidden = keras.layers.Dense(16)(squared)
    return keras.Model(inputs, keras.layers.Dense(data.num_classes)(hidden))


def loss() -> keras.losses.Loss:
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)
