"""The layers researchers put in their own models, one small classifier each: batch
normalization, seeded random layers, recurrent layers over features and over token ids, a
subclassed model with a layer of the user's own. The loss does arithmetic on shapes
(`ops.shape(logits)[-1]` into `ops.one_hot`), as README's blobs recipe does.

`kind=branches` is a model that cannot run as a graph: its `call` branches on a tensor's value.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

from dualtrain.data import DataInfo

STEPS, FEATURES, CLASSES, VOCABULARY = 12, 3, 3, 20


def load_data() -> tuple[np.ndarray, np.ndarray]:
    """Sequences of 12 steps of 3 features; the class shifts the mean of one feature."""
    rng = np.random.default_rng(3)
    y = rng.integers(0, CLASSES, 512)
    x = rng.normal(size=(512, STEPS, FEATURES)).astype("float32")
    x[np.arange(512), :, y] += 1.0
    return x, y.astype("int32")


def load_tokens() -> tuple[np.ndarray, np.ndarray]:
    """Token ids (0 pads the end of shorter sequences); the class is the most frequent of ids
    1-3 in a sequence."""
    rng = np.random.default_rng(4)
    x = rng.integers(1, VOCABULARY, size=(512, STEPS))
    x[:, STEPS // 2 :] *= rng.random((512, 1)) < 0.5  # half the sequences padded at the end
    counts = np.stack([(x == token).sum(axis=1) for token in (1, 2, 3)], axis=1)
    return x.astype("int32"), counts.argmax(axis=1).astype("int32")


class Gate(keras.layers.Layer):
    """A user's own layer: a learned sigmoid gate per feature, with its own weight."""

    def build(self, input_shape: tuple[Any, ...]) -> None:
        self.logit = self.add_weight(shape=(input_shape[-1],), initializer="zeros", name="logit")

    def call(self, x: Any) -> Any:
        return x * ops.sigmoid(self.logit)


class Net(keras.Model):
    """Subclassed: layers made in __init__ and used in call, BatchNorm, seeded Dropout, a user's
    own layer and a Python branch on the `training` argument."""

    def __init__(self, classes: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.conv = keras.layers.Conv1D(8, 3, padding="same")
        self.norm = keras.layers.BatchNormalization()
        self.gate = Gate()
        self.drop = keras.layers.Dropout(0.2, seed=5)
        self.out = keras.layers.Dense(classes)

    def call(self, x: Any, training: bool = False) -> Any:
        h = ops.relu(self.norm(self.conv(x), training=training))
        h = ops.mean(self.gate(h), axis=1)
        if training:
            h = self.drop(h, training=True)
        return self.out(h)


class Branches(keras.Model):
    """Branches on a tensor's value: a graph cannot record that."""

    def __init__(self, classes: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.out = keras.layers.Dense(classes)

    def call(self, x: Any, training: bool = False) -> Any:
        h = ops.mean(x, axis=1)
        if ops.max(h) > 100.0:
            h = h / 100.0
        return self.out(h)


def build_model(data: DataInfo, kind: str = "batchnorm") -> keras.Model:
    classes = data.num_classes
    if kind == "subclassed":
        return Net(classes)
    if kind == "branches":
        return Branches(classes)
    inputs = keras.Input(data.input_shape, dtype=data.inputs[0].dtype)
    if kind == "batchnorm":
        h = keras.layers.Conv1D(8, 3, padding="same")(inputs)
        h = keras.layers.ReLU()(keras.layers.BatchNormalization()(h))
        h = keras.layers.GlobalAveragePooling1D()(h)
    elif kind == "seeded_dropout":
        h = keras.layers.Dense(32, activation="relu")(keras.layers.Flatten()(inputs))
        h = keras.layers.Dropout(0.3, seed=1)(h)
    elif kind == "noise":
        h = keras.layers.GaussianNoise(0.3, seed=2)(keras.layers.Flatten()(inputs))
        h = keras.layers.Dense(16, activation="relu")(h)
    elif kind == "conv2d_leaky":  # a DCGAN discriminator's block: Conv2D, its bias, LeakyReLU
        h = keras.layers.Reshape((STEPS, FEATURES, 1))(inputs)
        h = keras.layers.LeakyReLU(0.2)(keras.layers.Conv2D(8, 3, padding="same")(h))
        h = keras.layers.GlobalAveragePooling2D()(h)
    elif kind == "gru":
        h = keras.layers.GRU(8, dropout=0.2, recurrent_dropout=0.1, seed=3)(inputs)
    elif kind == "gru_lstm":  # torch: one fused op per layer (compat.fused_rnn)
        # Bidirectional: a forward GRU and one with go_backwards, whose outputs it turns back
        h = keras.layers.Bidirectional(keras.layers.GRU(8, return_sequences=True))(inputs)
        h = keras.layers.LSTM(8)(h)
    elif kind == "lstm_tokens":  # torch: one fused op (compat.fused_rnn)
        h = keras.layers.Embedding(VOCABULARY, 8)(inputs)
        h = keras.layers.LSTM(8)(h)
    elif kind == "gru_loops":  # what no fused op runs: Keras's loops on torch
        masked = keras.layers.Embedding(VOCABULARY, 8, mask_zero=True)(inputs)
        plain = keras.layers.Embedding(VOCABULARY, 8)(inputs)
        h = keras.layers.Concatenate()(
            [keras.layers.GRU(8)(masked), keras.layers.GRU(8, reset_after=False)(plain)]
        )
    else:
        raise ValueError(f"no kind {kind!r}")
    return keras.Model(inputs, keras.layers.Dense(classes)(h))


def loss() -> Any:
    def cross_entropy(y_true: Any, logits: Any) -> Any:
        one_hot = ops.one_hot(y_true, ops.shape(logits)[-1])
        return ops.mean(-ops.sum(one_hot * ops.log_softmax(logits), axis=-1))

    return cross_entropy


def metrics() -> list[keras.metrics.Metric]:
    return [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
