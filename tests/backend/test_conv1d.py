"""1-D convolution and pooling as dualtrain's steps run them give Keras's values on both backends.

On torch the steps run them as their 2-D forms over a height of 1 (compat.conv1d_as_2d); on tf,
as Keras runs them. Both are held to a float64 reference; on torch the gradients also to Keras's
own ops outside the steps.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.backend.conftest import BACKEND, step_ops

# float32 kernels against float64: sums of at most 3x5 products of values below 5 in magnitude.
RTOL, ATOL = 1e-5, 1e-5

LAYERS = {
    "conv valid": ("Conv1D", dict(filters=4, kernel_size=3)),
    "conv same, strides 2": ("Conv1D", dict(filters=4, kernel_size=3, strides=2, padding="same")),
    "conv dilated": ("Conv1D", dict(filters=4, kernel_size=3, dilation_rate=2)),
    "conv channels first": ("Conv1D", dict(filters=4, kernel_size=3, data_format="channels_first")),
    "max pool": ("MaxPooling1D", dict(pool_size=2)),
    "max pool same": ("MaxPooling1D", dict(pool_size=2, padding="same")),
    "average pool same, strides 2": (
        "AveragePooling1D", dict(pool_size=3, strides=2, padding="same"),
    ),
}  # fmt: skip


def _windows(x: np.ndarray, size: int, stride: int, dilation: int, padding: str, fill: float):
    """(batch, out_length, size, channels) windows of x (batch, length, channels), as TF pads."""
    length = x.shape[1]
    span = (size - 1) * dilation + 1
    if padding == "same":
        out = -(-length // stride)
        total = max((out - 1) * stride + span - length, 0)
        x = np.pad(x, ((0, 0), (total // 2, total - total // 2), (0, 0)), constant_values=fill)
    else:
        out = (length - span) // stride + 1
    index = np.arange(out)[:, None] * stride + np.arange(size)[None, :] * dilation
    return x[:, index, :]


def _reference(layer: Any, x: np.ndarray) -> np.ndarray:
    config = layer.get_config()
    first = config.get("data_format") == "channels_first"
    if first:
        x = x.transpose(0, 2, 1)
    if "filters" in config:
        windows = _windows(x, config["kernel_size"][0], config["strides"][0],
                           config["dilation_rate"][0], config["padding"], 0.0)  # fmt: skip
        kernel = layer.kernel.numpy().astype(float)  # (size, in, out)
        out = np.einsum("bwsc,sco->bwo", windows, kernel) + layer.bias.numpy()
    elif "Max" in type(layer).__name__:
        out = _windows(x, config["pool_size"][0], config["strides"][0], 1, config["padding"],
                       -np.inf).max(axis=2)  # fmt: skip
    else:  # average over the window's values inside the input, as Keras's same padding does
        windows = _windows(x, config["pool_size"][0], config["strides"][0], 1, config["padding"],
                           np.nan)  # fmt: skip
        out = np.nanmean(windows, axis=2)
    return out.transpose(0, 2, 1) if first else out


def _call(layer: Any, x: np.ndarray, weights: np.ndarray, under_step_ops: bool) -> dict[str, Any]:
    """The output and the gradients of sum(output * weights) for the input and the weights."""
    context = step_ops() if under_step_ops else contextlib.nullcontext()
    if BACKEND == "torch":
        import torch

        tensor = torch.tensor(x, requires_grad=True)
        with context:
            out = layer(tensor)
        sources = [tensor, *[v.value for v in layer.trainable_variables]]
        grads = torch.autograd.grad((out * torch.tensor(weights)).sum(), sources)
        return {"out": out.detach().numpy(), "grads": [g.numpy() for g in grads]}
    import tensorflow as tf

    tensor = tf.constant(x)
    with tf.GradientTape() as tape, context:
        tape.watch(tensor)
        out = layer(tensor)
        total = tf.reduce_sum(out * weights)
    grads = tape.gradient(total, [tensor, *[v.value for v in layer.trainable_variables]])
    return {"out": out.numpy(), "grads": [g.numpy() for g in grads]}


@pytest.mark.parametrize("case", sorted(LAYERS))
def test_1d_layers_in_a_step_give_kerass_values(case: str) -> None:
    import keras

    name, config = LAYERS[case]
    layer = getattr(keras.layers, name)(**config)
    rng = np.random.default_rng(0)
    shape = (3, 3, 11) if config.get("data_format") == "channels_first" else (3, 11, 3)
    x = rng.normal(size=shape).astype("float32")
    layer.build(shape)
    for variable in layer.weights:
        variable.assign(rng.normal(size=variable.shape).astype("float32"))
    got = _call(layer, x, np.ones(layer.compute_output_shape(shape), "float32"), True)
    np.testing.assert_allclose(got["out"], _reference(layer, x.astype(float)), rtol=RTOL, atol=ATOL)
    weights = rng.normal(size=got["out"].shape).astype("float32")
    got = _call(layer, x, weights, True)
    keras_own = _call(layer, x, weights, False)
    for value, expected in zip(got["grads"], keras_own["grads"], strict=True):
        np.testing.assert_allclose(value, expected, rtol=RTOL, atol=ATOL)


@pytest.mark.skipif(BACKEND != "torch", reason="the 2-D form is torch's")
def test_a_captured_conv1d_step_runs_2d_kernels(tmp_path: Path) -> None:
    from tests.backend.test_capture import STEP_CASES, _build, _train

    engine = _build(tmp_path, "data.batch_size=64", *STEP_CASES["batchnorm"])  # Conv1D, BatchNorm
    _train(engine, 1)
    (graph,) = [g for g in engine._steps[0].graphs.values() if g is not None]
    convolutions = [n for n in graph.module.graph.nodes if "convolution" in str(n.target)]
    assert convolutions and all(len(n.args[0].meta["val"].shape) == 4 for n in convolutions)
