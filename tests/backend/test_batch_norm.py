"""BatchNormalization as dualtrain's steps run it gives Keras's values on both backends.

On torch the steps run the layer through torch's own batch-norm kernel
(engines/torch_batch_norm.py); on tf, Keras's layer as it is. Both are held to the same float64
reference of Keras's definition: the output, the moving statistics (biased batch variance), and
the gradients of the input, gamma and beta.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.backend.conftest import BACKEND, step_ops

# float32 kernels against a float64 reference: a few ulp per op over a reduction of a few
# hundred values stays well below 1e-5 relative (measured: below 2e-6).
RTOL, ATOL = 1e-5, 1e-5

CASES = {
    "images NHWC": dict(shape=(8, 5, 5, 3), axis=-1),
    "images NCHW": dict(shape=(8, 3, 5, 5), axis=1),
    "features": dict(shape=(16, 6), axis=-1),
    "sequence": dict(shape=(4, 7, 6), axis=-1),
    "no gamma or beta": dict(shape=(16, 6), axis=-1, center=False, scale=False),
}


def _reference(x: np.ndarray, layer: Any, weights: np.ndarray, training: bool) -> dict[str, Any]:
    """Keras's BatchNormalization in float64; the gradients of sum(output * weights)."""
    axis = layer.axis % x.ndim
    reduce = tuple(i for i in range(x.ndim) if i != axis)
    shape = [1] * x.ndim
    shape[axis] = x.shape[axis]
    gamma = layer.gamma.numpy().astype(float) if layer.scale else np.ones(x.shape[axis])
    beta = layer.beta.numpy().astype(float) if layer.center else np.zeros(x.shape[axis])
    moving_mean = layer.moving_mean.numpy().astype(float)
    moving_variance = layer.moving_variance.numpy().astype(float)
    if training:
        mean, variance = x.mean(axis=reduce), x.var(axis=reduce)
    else:
        mean, variance = moving_mean, moving_variance
    invstd = 1.0 / np.sqrt(variance + layer.epsilon)
    normalized = (x - mean.reshape(shape)) * invstd.reshape(shape)
    out = normalized * gamma.reshape(shape) + beta.reshape(shape)
    dy = weights
    dgamma, dbeta = (dy * normalized).sum(axis=reduce), dy.sum(axis=reduce)
    if training:  # the batch statistics depend on x too
        n = x.size // x.shape[axis]
        dx = (
            (gamma * invstd).reshape(shape)
            / n
            * (n * dy - dbeta.reshape(shape) - normalized * dgamma.reshape(shape))
        )
        momentum = layer.momentum
        moving_mean = moving_mean * momentum + mean * (1 - momentum)
        moving_variance = moving_variance * momentum + variance * (1 - momentum)
    else:
        dx = dy * (gamma * invstd).reshape(shape)
    values = dict(out=out, dx=dx, dgamma=dgamma, dbeta=dbeta)
    values = {k: v for k, v in values.items() if k != "dgamma" or layer.scale}
    values = {k: v for k, v in values.items() if k != "dbeta" or layer.center}
    return dict(**values, moving_mean=moving_mean, moving_variance=moving_variance)


def _run(layer: Any, x: np.ndarray, weights: np.ndarray, training: bool) -> dict[str, Any]:
    """The layer called under the steps' ops: output, moving statistics, gradients."""
    trainable = [v for v in (layer.gamma, layer.beta) if v is not None]
    if BACKEND == "torch":
        import torch

        tensor = torch.tensor(x, requires_grad=True)
        with step_ops():
            out = layer(tensor, training=training)
        params = [v.value for v in trainable]
        grads = torch.autograd.grad((out * torch.tensor(weights)).sum(), [tensor, *params])
        grads = [g.numpy() for g in grads]
        out = out.detach().numpy()
    else:
        import tensorflow as tf

        tensor = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(tensor)
            out = layer(tensor, training=training)
            total = tf.reduce_sum(out * weights)
        grads = [g.numpy() for g in tape.gradient(total, [tensor, *[v.value for v in trainable]])]
        out = out.numpy()
    named = (("dgamma", layer.gamma), ("dbeta", layer.beta))
    names = ["dx"] + [name for name, variable in named if variable is not None]
    return dict(
        out=out, **dict(zip(names, grads, strict=True)),
        moving_mean=layer.moving_mean.numpy(), moving_variance=layer.moving_variance.numpy(),
    )  # fmt: skip


@pytest.mark.parametrize("training", [True, False], ids=["training", "inference"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_batch_norm_in_a_step_gives_kerass_definition(case: str, training: bool) -> None:
    import keras

    spec = dict(CASES[case])
    shape = spec.pop("shape")
    rng = np.random.default_rng(0)
    x = (rng.normal(size=shape) * 3 + 1).astype("float32")
    weights = rng.normal(size=shape).astype("float32")
    layer = keras.layers.BatchNormalization(momentum=0.9, **spec)
    layer.build(shape)
    for variable in layer.weights:  # away from the initial ones and zeros
        variable.assign(rng.uniform(0.5, 1.5, size=variable.shape).astype("float32"))
    expected = _reference(x.astype(float), layer, weights.astype(float), training)
    got = _run(layer, x, weights, training)
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        np.testing.assert_allclose(got[name], value, rtol=RTOL, atol=ATOL, err_msg=name)


@pytest.mark.skipif(BACKEND != "torch", reason="the kernel swap is torch's")
def test_the_captured_step_runs_torchs_kernel_and_other_forms_keep_kerass(tmp_path: Path) -> None:
    import keras
    import torch

    from dualtrain.engines import torch_batch_norm
    from tests.backend.test_capture import STEP_CASES, _build, _train

    engine = _build(tmp_path, "data.batch_size=64", *STEP_CASES["batchnorm"])
    _train(engine, 1)
    (graph,) = [g for g in engine._steps[0].graphs.values() if g is not None]
    targets = {node.target for node in graph.module.graph.nodes}
    assert torch.ops.dualtrain.batch_norm_training.default in targets
    assert torch.ops.aten.native_batch_norm_backward.default in targets

    calls = []

    class OwnMoments(keras.layers.BatchNormalization):
        def _moments(self, inputs: Any, mask: Any) -> Any:
            calls.append("own")
            return super()._moments(inputs, mask)

    x = torch.randn(8, 4)
    with step_ops(), pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch_batch_norm, "normalize", lambda *a: calls.append("fused") or a[1])
        keras.layers.BatchNormalization()(x, training=True)
        OwnMoments()(x, training=True)
        keras.layers.BatchNormalization(renorm=True)(x, training=True)
    assert calls == ["fused", "own"]  # renorm: Keras's call, which the patch does not see
