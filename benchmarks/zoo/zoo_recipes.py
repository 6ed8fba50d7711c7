"""The model zoo's recipes: models as users write them, for benchmarks/zoo.py.

One recipe module for all of them, as a user's `my_recipes/` directory would hold it: each
`recipe/zoo_*.yaml` names a builder (`recipe.model.arch`) and a data function of this module
(`data.source`). The data are generated here, seeded, never downloaded; each function returns
(x_train, y_train, x_val, y_val), with a small val split (validation is not timed).

    python -m dualtrain --config-dir benchmarks/zoo recipe=zoo_gru backend=torch
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np
from keras import ops

from dualtrain.data import DataInfo

VAL_SAMPLES = 128
Split = tuple[Any, np.ndarray, Any, np.ndarray]


# -- data --------------------------------------------------------------------------------------


def _split(x: Any, y: np.ndarray, val: int) -> Split:
    """The last `val` samples are the val split."""

    def part(a: np.ndarray, train: bool) -> np.ndarray:
        return a[:-val] if train else a[-val:]

    if isinstance(x, dict):
        return (
            {k: part(v, True) for k, v in x.items()},
            y[:-val],
            {k: part(v, False) for k, v in x.items()},
            y[-val:],
        )
    return part(x, True), y[:-val], part(x, False), y[-val:]


def images(
    seed: int, num_samples: int, size: int = 16, channels: int = 1, classes: int = 10
) -> Split:
    """Images (size, size, channels): a class's template plus noise."""
    rng = np.random.default_rng(seed)
    n = num_samples + VAL_SAMPLES
    y = rng.integers(0, classes, n).astype("int32")
    templates = rng.normal(size=(classes, size, size, channels))
    x = 0.5 * templates[y] + rng.normal(size=(n, size, size, channels))
    return _split(x.astype("float32"), y, VAL_SAMPLES)


def sequences(
    seed: int, num_samples: int, steps: int = 24, features: int = 8, classes: int = 4
) -> Split:
    """Sequences (steps, features): a class's sine frequency in noise."""
    rng = np.random.default_rng(seed)
    n = num_samples + VAL_SAMPLES
    y = rng.integers(0, classes, n).astype("int32")
    t = np.arange(steps)[None, :, None]
    phase = rng.uniform(0, 2 * np.pi, size=(n, 1, features))
    signal = np.sin((y[:, None, None] + 1) * 0.3 * t + phase)
    x = signal + 0.5 * rng.normal(size=(n, steps, features))
    return _split(x.astype("float32"), y, VAL_SAMPLES)


def tokens(
    seed: int, num_samples: int, steps: int = 32, vocab: int = 500, classes: int = 4
) -> Split:
    """Token ids (steps,), int32: each class draws more often from its own quarter of the
    vocabulary."""
    rng = np.random.default_rng(seed)
    n = num_samples + VAL_SAMPLES
    y = rng.integers(0, classes, n).astype("int32")
    width = vocab // classes
    own = y[:, None] * width + rng.integers(0, width, size=(n, steps))
    anywhere = rng.integers(0, vocab, size=(n, steps))
    x = np.where(rng.random((n, steps)) < 0.3, own, anywhere)
    return _split(x.astype("int32"), y, VAL_SAMPLES)


def features(seed: int, num_samples: int, width: int = 64, classes: int = 10) -> Split:
    """Feature vectors (width,): Gaussian blobs, one per class."""
    rng = np.random.default_rng(seed)
    n = num_samples + VAL_SAMPLES
    y = rng.integers(0, classes, n).astype("int32")
    centers = rng.normal(size=(classes, width))
    x = centers[y] + 1.5 * rng.normal(size=(n, width))
    return _split(x.astype("float32"), y, VAL_SAMPLES)


def two_inputs(
    seed: int, num_samples: int, width: int = 16, steps: int = 8, vocab: int = 50, classes: int = 4
) -> Split:
    """Two named inputs: `numbers` (width,) float32 and `tokens` (steps,) int32 ids."""
    rng = np.random.default_rng(seed)
    n = num_samples + VAL_SAMPLES
    y = rng.integers(0, classes, n).astype("int32")
    numbers = rng.normal(size=(classes, width))[y] + rng.normal(size=(n, width))
    ids = (y[:, None] + classes * rng.integers(0, vocab // classes, size=(n, steps))) % vocab
    x = {"numbers": numbers.astype("float32"), "tokens": ids.astype("int32")}
    return _split(x, y, VAL_SAMPLES)


# -- a user's own layers and models --------------------------------------------------------------


class GatedDense(keras.layers.Layer):
    """A gated linear unit, a * sigmoid(b) of one matmul: a user's layer with its own weights."""

    def __init__(self, units: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape: tuple[Any, ...]) -> None:
        self.kernel = self.add_weight(
            shape=(input_shape[-1], 2 * self.units), initializer="glorot_uniform", name="kernel"
        )
        self.bias = self.add_weight(shape=(2 * self.units,), initializer="zeros", name="bias")

    def call(self, x: Any) -> Any:
        value, gate = ops.split(ops.matmul(x, self.kernel) + self.bias, 2, axis=-1)
        return value * ops.sigmoid(gate)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "units": self.units}


class ResidualMLP(keras.Model):
    """A subclassed model with its own call: two residual blocks with layer norm."""

    def __init__(self, classes: int, units: int = 128, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stem = keras.layers.Dense(units, activation="relu")
        self.blocks = [keras.layers.Dense(units, activation="relu") for _ in range(2)]
        self.norm = keras.layers.LayerNormalization()
        self.head = keras.layers.Dense(classes)

    def call(self, x: Any, training: bool = False) -> Any:
        h = self.stem(x)
        for block in self.blocks:
            h = h + block(h)
        return self.head(self.norm(h))


# -- the builders: build_model(data, arch, **options) ------------------------------------------


def cnn_bn(data: DataInfo, filters: int = 16) -> keras.Model:
    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input(shape=data.input_shape),
            layers.Conv2D(filters, 3, padding="same", use_bias=False),
            layers.BatchNormalization(),
            layers.ReLU(),
            layers.MaxPooling2D(2),
            layers.Conv2D(2 * filters, 3, padding="same", use_bias=False),
            layers.BatchNormalization(),
            layers.ReLU(),
            layers.MaxPooling2D(2),
            layers.Flatten(),
            layers.Dense(64, activation="relu"),
            layers.Dense(data.num_classes),
        ]
    )


def resnet(data: DataInfo, filters: int = 16) -> keras.Model:
    layers = keras.layers

    def conv_bn(x: Any, width: int, strides: int = 1, kernel: int = 3) -> Any:
        x = layers.Conv2D(width, kernel, strides=strides, padding="same", use_bias=False)(x)
        return layers.BatchNormalization()(x)

    def block(x: Any, width: int, strides: int = 1) -> Any:
        shortcut = x if strides == 1 else conv_bn(x, width, strides, kernel=1)
        h = layers.ReLU()(conv_bn(x, width, strides))
        return layers.ReLU()(layers.Add()([shortcut, conv_bn(h, width)]))

    inputs = keras.Input(shape=data.input_shape)
    x = layers.ReLU()(conv_bn(inputs, filters))
    x = block(x, filters)
    x = block(x, 2 * filters, strides=2)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(data.num_classes)(x), name="resnet")


def gru(data: DataInfo, units: int = 32) -> keras.Model:
    inputs = keras.Input(shape=data.input_shape)
    h = keras.layers.GRU(units)(inputs)
    return keras.Model(inputs, keras.layers.Dense(data.num_classes)(h))


def lstm_tokens(data: DataInfo, vocab: int = 500, dim: int = 32, units: int = 32) -> keras.Model:
    inputs = keras.Input(shape=data.input_shape, dtype="int32")
    h = keras.layers.Embedding(vocab, dim)(inputs)
    h = keras.layers.LSTM(units)(h)
    return keras.Model(inputs, keras.layers.Dense(data.num_classes)(h))


def conv1d(data: DataInfo, filters: int = 32) -> keras.Model:
    layers = keras.layers
    inputs = keras.Input(shape=data.input_shape)
    h = layers.Conv1D(filters, 5, activation="relu")(inputs)
    h = layers.MaxPooling1D(2)(h)
    h = layers.Conv1D(2 * filters, 5, activation="relu")(h)
    h = layers.GlobalMaxPooling1D()(h)
    return keras.Model(inputs, layers.Dense(data.num_classes)(h))


def transformer(
    data: DataInfo, width: int = 64, heads: int = 4, ff_units: int = 128, layers_: int = 2
) -> keras.Model:
    """Post-norm encoder blocks (self-attention, ReLU feed-forward, residuals, LayerNorm)."""
    layers = keras.layers
    inputs = keras.Input(shape=data.input_shape)
    x = layers.Dense(width)(inputs)
    for _ in range(layers_):
        attended = layers.MultiHeadAttention(heads, width // heads)(x, x)
        x = layers.LayerNormalization()(x + attended)
        h = layers.Dense(ff_units, activation="relu")(x)
        x = layers.LayerNormalization()(x + layers.Dense(width)(h))
    x = layers.GlobalAveragePooling1D()(x)
    return keras.Model(inputs, layers.Dense(data.num_classes)(x))


def mlp_dropout(data: DataInfo, units: int = 256) -> keras.Model:
    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input(shape=data.input_shape),
            layers.Dense(units, activation="relu"),
            layers.Dropout(0.3, seed=1),
            layers.Dense(units, activation="relu"),
            layers.Dropout(0.3, seed=1),
            layers.Dense(data.num_classes),
        ]
    )


def subclassed(data: DataInfo, units: int = 128) -> keras.Model:
    model = ResidualMLP(data.num_classes, units)
    model(np.zeros((1, *data.input_shape), "float32"))  # the first call creates the weights
    return model


def custom_layer(data: DataInfo, units: int = 128) -> keras.Model:
    inputs = keras.Input(shape=data.input_shape)
    h = GatedDense(units)(inputs)
    h = GatedDense(units)(h)
    return keras.Model(inputs, keras.layers.Dense(data.num_classes)(h))


def multi_input(data: DataInfo, vocab: int = 50, units: int = 64) -> keras.Model:
    layers = keras.layers
    numbers = keras.Input(shape=data.input("numbers").shape, name="numbers")
    ids = keras.Input(shape=data.input("tokens").shape, name="tokens", dtype="int32")
    embedded = layers.GlobalAveragePooling1D()(layers.Embedding(vocab, 16)(ids))
    h = layers.Concatenate()([layers.Dense(32, activation="relu")(numbers), embedded])
    h = layers.Dense(units, activation="relu")(h)
    outputs = layers.Dense(data.num_classes)(h)
    return keras.Model({"numbers": numbers, "tokens": ids}, outputs)


def mlp(data: DataInfo, units: int = 128) -> keras.Model:
    inputs = keras.Input(shape=data.input_shape)
    h = keras.layers.Dense(units, activation="relu")(inputs)
    h = keras.layers.Dense(units, activation="relu")(h)
    return keras.Model(inputs, keras.layers.Dense(data.num_classes)(h))


BUILDERS: dict[str, Callable[..., keras.Model]] = {
    f.__name__: f
    for f in (
        cnn_bn, resnet, gru, lstm_tokens, conv1d, transformer, mlp_dropout, subclassed,
        custom_layer, multi_input, mlp,
    )
}  # fmt: skip


def build_model(data: DataInfo, arch: str, **options: Any) -> keras.Model:
    return BUILDERS[arch](data, **options)


def loss() -> keras.losses.Loss:
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def metrics() -> list[keras.metrics.Metric]:
    return [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
