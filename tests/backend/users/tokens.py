"""Token ids (int32) through an Embedding and an LSTM: does the sequence hold token 1?"""

from __future__ import annotations

import keras
import numpy as np

from dualtrain.data import DataInfo

VOCAB = 20


def load_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(2)
    x = rng.integers(1, VOCAB, size=(800, 12)).astype("int64")
    y = (x == 1).any(axis=1).astype("int32")  # about half of the sequences (1 - (18/19)**12)
    return x, y


def build_model(data: DataInfo) -> keras.Model:
    inputs = keras.Input(shape=data.input_shape, dtype="int32")
    h = keras.layers.Embedding(VOCAB, 16)(inputs)
    h = keras.layers.LSTM(16)(h)
    return keras.Model(inputs, keras.layers.Dense(data.num_classes)(h))


def loss() -> keras.losses.Loss:
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def metrics() -> list[keras.metrics.Metric]:
    return [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
