"""bench_*: the benchmark workloads of docs/performance.md, as recipes.

W1 `bench_cnn` (the mnist convnet), W2 `bench_mlp` (784-512-512-10), W3 `bench_transformer` (a
small post-norm encoder classifier). No dropout or other random layers, so every system that
`benchmarks/systems.py` compares runs the same arithmetic.
"""

from __future__ import annotations

from collections.abc import Callable

import keras

from dualtrain.data import DataInfo


def build_model(data: DataInfo, workload: str = "cnn", **options: int) -> keras.Model:
    """The workload's Keras model; `options` are its sizes (see each builder)."""
    builders: dict[str, Callable[..., keras.Model]] = {
        "cnn": cnn,
        "mlp": mlp,
        "transformer": transformer,
    }
    return builders[workload](data, **options)


def cnn(data: DataInfo, filters: int = 32, dense_units: int = 128) -> keras.Model:
    """W1: Conv2D(32,3,valid,relu), MaxPool 2, Conv2D(64,3,valid,relu), MaxPool 2, Flatten,
    Dense(128,relu), Dense(logits). `filters` scales the width (the second conv has twice)."""
    inputs = keras.Input(shape=data.input_shape, name="image")
    x = keras.layers.Conv2D(filters, 3, activation="relu")(inputs)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Conv2D(2 * filters, 3, activation="relu")(x)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(dense_units, activation="relu")(x)
    return keras.Model(inputs, keras.layers.Dense(data.num_classes, name="logits")(x), name="w1")


def mlp(data: DataInfo, units: int = 512) -> keras.Model:
    """W2: Dense(units,relu) twice, then the logits."""
    inputs = keras.Input(shape=data.input_shape, name="features")
    x = keras.layers.Dense(units, activation="relu")(inputs)
    x = keras.layers.Dense(units, activation="relu")(x)
    return keras.Model(inputs, keras.layers.Dense(data.num_classes, name="logits")(x), name="w2")


def transformer(
    data: DataInfo, layers: int = 2, heads: int = 4, ff_units: int = 512
) -> keras.Model:
    """W3: `layers` post-norm encoder blocks (self-attention, then a ReLU feed-forward, each with a
    residual and LayerNorm, as torch.nn.TransformerEncoderLayer), mean over the sequence, logits.
    Inputs are (sequence, width) features."""
    inputs = keras.Input(shape=data.input_shape, name="sequence")
    width = data.input_shape[-1]
    x = inputs
    for _ in range(layers):
        attended = keras.layers.MultiHeadAttention(heads, width // heads)(x, x)
        x = keras.layers.LayerNormalization(epsilon=1e-5)(x + attended)
        hidden = keras.layers.Dense(ff_units, activation="relu")(x)
        x = keras.layers.LayerNormalization(epsilon=1e-5)(x + keras.layers.Dense(width)(hidden))
    x = keras.layers.GlobalAveragePooling1D()(x)
    return keras.Model(inputs, keras.layers.Dense(data.num_classes, name="logits")(x), name="w3")


def loss() -> keras.losses.Loss:
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def metrics() -> list[keras.metrics.Metric]:
    return [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
