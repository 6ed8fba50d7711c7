"""dualtrain/compat.py, the Keras, torch and TensorFlow hooks: each works on the pinned versions
(with the public path's result where the two can be compared), and takes its fallback, with one
log line, when its internal is taken away."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from dualtrain import compat
from tests.backend.conftest import BACKEND

torch_only = pytest.mark.skipif(BACKEND != "torch", reason="a torch hook")
tf_only = pytest.mark.skipif(BACKEND != "tf", reason="a TensorFlow hook")


@pytest.fixture(autouse=True)
def _fresh_checks(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test runs the set-up checks, and reports fallbacks, as a new process would."""
    checks = [
        compat._fused_adam_problem,
        compat._functional_class,
        compat._object_names_problem,
        compat._torch_capture_problem,
    ]
    for check in checks:
        check.cache_clear()
    monkeypatch.setattr(compat, "_reported", set())
    yield
    for check in checks:
        check.cache_clear()


def _lines(caplog: pytest.LogCaptureFixture, hook: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "dualtrain" and r.getMessage().startswith(f"compat.{hook}:")
    ]


def _nested_model() -> Any:
    """A functional model with a Sequential inside, holding a Dropout."""
    import keras

    inner = keras.Sequential([keras.layers.Dense(4), keras.layers.Dropout(0.5)], name="inner")
    inputs = keras.Input((3,))
    outputs = keras.layers.Dense(2)(inner(keras.layers.Dense(4)(inputs)))
    return keras.Model(inputs, outputs)


# -- Keras hooks (both backends) -----------------------------------------------------------------


def test_sublayers_matches_the_public_walk(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import keras

    from dualtrain.engines.state import make_deterministic

    model = _nested_model()
    found = compat.sublayers(model)
    # The public walk sees the same layers, and may see more models: a Sequential's own
    # Functional (an attribute Keras does not track) holds the same layers again.
    public = {id(layer): layer for layer in compat._public_sublayers(model)}
    assert {id(layer) for layer in found} <= public.keys()
    assert all(isinstance(public[i], keras.Model) for i in public.keys() - map(id, found))
    assert any(isinstance(layer, keras.layers.Dropout) for layer in found)

    monkeypatch.delattr(keras.layers.Layer, "_flatten_layers")
    with caplog.at_level(logging.INFO, logger="dualtrain"):
        fallback = compat.sublayers(model)
        changed, left = make_deterministic(model)  # the nested Dropout is still found
    assert {id(layer) for layer in fallback} == public.keys()
    assert [c["class"] for c in changed] == ["Dropout"] and not left
    lines = _lines(caplog, "sublayers")
    assert len(lines) == 1 and "keras 3.15.1" in lines[0]


def test_seed_generators(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import keras

    dropout, dense = keras.layers.Dropout(0.5, seed=3), keras.layers.Dense(2)
    unseeded = keras.layers.Dropout(0.1)
    assert compat.seed_generators(dropout) == [dropout.seed_generator]
    assert compat.seed_generators(dense) == []
    assert dropout.seed_generator.get_config()["seed"] == 3  # the public read of the seed

    monkeypatch.delattr(keras.layers.Layer, "_seed_generators", raising=False)
    monkeypatch.setattr(
        type(dropout), "_seed_generators", property(lambda self: None), raising=False
    )
    with caplog.at_level(logging.INFO, logger="dualtrain"):
        assert compat.seed_generators(dropout) == [dropout.seed_generator]
        assert compat.seed_generators(unseeded) == [unseeded.seed_generator]
        assert compat.seed_generators(dense) == []
    assert len(_lines(caplog, "seed_generators")) == 1


def test_fresh_object_names(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import keras

    def names() -> list[str]:
        with compat.fresh_object_names():
            return [keras.layers.Dense(1).name, keras.layers.Dense(1).name]

    keras.layers.Dense(1)  # a layer made before: the numbering continues outside
    assert names() == names() == ["dense", "dense_1"]

    # The module moved: Keras's own modules keep their reference, compat's import fails.
    import keras.src.backend.common as common

    monkeypatch.setitem(sys.modules, "keras.src.backend.common.global_state", None)
    monkeypatch.delattr(common, "global_state")
    compat._object_names_problem.cache_clear()
    with caplog.at_level(logging.INFO, logger="dualtrain"):
        first, second = names(), names()
    assert first != second  # Keras's own numbering: the second pair comes after the first
    assert len(_lines(caplog, "fresh_object_names")) == 1


def test_is_functional(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import keras

    class Subclassed(keras.Model):
        def call(self, x: Any) -> Any:
            return x

    assert compat.is_functional(_nested_model()) is True
    assert compat.is_functional(Subclassed()) is False

    model = _nested_model()
    monkeypatch.setitem(sys.modules, "keras.src.models.functional", None)  # import fails
    compat._functional_class.cache_clear()
    with caplog.at_level(logging.INFO, logger="dualtrain"):
        assert compat.is_functional(model) is None
        assert compat.is_functional(model) is None
    assert len(_lines(caplog, "is_functional")) == 1


def test_mean_accumulators(caplog: pytest.LogCaptureFixture) -> None:
    import keras

    mean = keras.metrics.Mean()
    total, count = compat.mean_accumulators(mean)
    mean.update_state(2.5, sample_weight=4.0)
    # Keras's update added value * weight and weight to them: what the torch engine adds itself
    assert [float(keras.ops.convert_to_numpy(v.value)) for v in (total, count)] == [10.0, 4.0]

    class WithMore(keras.metrics.Mean):
        def __init__(self) -> None:
            super().__init__()
            self.extra = self.add_variable(shape=(), initializer="zeros", name="extra")

    with caplog.at_level(logging.INFO, logger="dualtrain"):
        assert compat.mean_accumulators(WithMore()) is None
        assert compat.mean_accumulators(keras.metrics.Sum()) is None
    lines = _lines(caplog, "mean_accumulators")
    assert len(lines) == 1 and "Mean.update_state" in lines[0]


# -- torch hooks ---------------------------------------------------------------------------------


@torch_only
def test_variable_tensors(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import keras

    compat._variable_tensors_probe.cache_clear()
    monkeypatch.setattr(compat, "_reported", set())
    variables = [keras.Variable(keras.ops.ones((3,)) * i) for i in range(3)]
    got = compat.variable_tensors(variables)
    assert all(t is v.value for t, v in zip(got, variables, strict=True))  # the tensors themselves
    # Inside a StatelessScope the scope's values, as `.value` gives them.
    other = [keras.ops.zeros((3,)) for _ in variables]
    with keras.StatelessScope(state_mapping=list(zip(variables, other, strict=True))):
        inside = compat.variable_tensors(variables)
    assert all(t is o for t, o in zip(inside, other, strict=True))
    # Without the internals: `.value`, and one line.
    monkeypatch.setitem(sys.modules, "keras.src.backend.common.stateless_scope", None)
    compat._variable_tensors_probe.cache_clear()
    with caplog.at_level(logging.INFO, logger="dualtrain"):
        assert all(
            t is v.value for t, v in zip(compat.variable_tensors(variables), variables, strict=True)
        )
        compat.variable_tensors(variables)
    assert len(_lines(caplog, "variable_tensors")) == 1
    compat._variable_tensors_probe.cache_clear()


@torch_only
def test_fused_adam_kernel(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The kernel passes its probe on the pinned torch (its numbers against Keras's own update:
    tests/backend/test_torch_adam.py); without it, Adam keeps Keras's update."""
    import keras
    import torch

    from dualtrain.engines.torch_adam import fuse_adam

    assert compat.fused_adam_kernel() is torch._fused_adam_

    monkeypatch.delattr(torch, "_fused_adam_")
    compat._fused_adam_problem.cache_clear()
    optimizer = keras.optimizers.Adam()
    optimizer.build([keras.Variable(torch.zeros(2))])
    keras_update = optimizer._parallel_update_step
    with caplog.at_level(logging.INFO, logger="dualtrain"):
        assert compat.fused_adam_kernel() is None
        assert "fused Adam kernel" in str(fuse_adam(optimizer))
    assert optimizer._parallel_update_step == keras_update
    lines = _lines(caplog, "fused_adam_kernel")
    assert len(lines) == 1 and "torch 2.13.0" in lines[0]


@torch_only
def test_fused_adam_kernel_whose_numbers_differ_is_not_used(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import torch

    kernel = torch._fused_adam_

    def counting_kernel(*args: Any, **kwargs: Any) -> None:  # a kernel that counts the step
        kernel(*args, **kwargs)
        for step in args[5]:
            step += 1

    monkeypatch.setattr(torch, "_fused_adam_", counting_kernel)
    with caplog.at_level(logging.INFO, logger="dualtrain"):
        assert compat.fused_adam_kernel() is None
    assert "probe step" in _lines(caplog, "fused_adam_kernel")[0]


@torch_only
def test_keras_adam_update(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import keras
    import torch

    variables = [keras.Variable(torch.zeros(2)), keras.Variable(torch.zeros(3))]
    optimizer = keras.optimizers.Adam()
    optimizer.build(variables)
    adam = compat.keras_adam_update(optimizer)
    assert adam is not None
    momentums, velocities = adam.slots(variables[::-1])
    assert [tuple(m.shape) for m in momentums] == [(3,), (2,)]
    assert velocities[1] is optimizer._velocities[0].value

    monkeypatch.setattr(optimizer, "_parallel_update_step", lambda grads, variables: None)
    with caplog.at_level(logging.INFO, logger="dualtrain"):
        assert compat.keras_adam_update(optimizer) is None
    assert "takes (grads, variables)" in _lines(caplog, "keras_adam_update")[0]


@torch_only
def test_graph_capture_internals(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import keras
    import torch

    from dualtrain.engines.torch_graph import CapturedFunction

    model = _nested_model()
    assert compat.graph_capture_problem() is None
    x = torch.randn(4, 3)
    captured = CapturedFunction(lambda x: model(x, training=False), model.variables, "test")
    torch.testing.assert_close(captured(x), model(x, training=False))
    assert captured.graphs and next(iter(captured.graphs.values())) is not None

    # A Keras whose StatelessScope does not report assignments through add_update.
    monkeypatch.delattr(keras.StatelessScope, "add_update")
    compat._torch_capture_problem.cache_clear()
    try:
        with caplog.at_level(logging.INFO, logger="dualtrain"):
            eager = CapturedFunction(lambda x: model(x, training=False), model.variables, "test")
            torch.testing.assert_close(eager(x), model(x, training=False))
    finally:
        monkeypatch.undo()
        compat._torch_capture_problem.cache_clear()
    assert eager.failed and all(graph is None for graph in eager.graphs.values())
    assert "StatelessScope.add_update is missing" in _lines(caplog, "graph_capture")[0]


@torch_only
def test_counter_random_draws_seeded_numbers_and_one_hot_without_host_reads() -> None:
    import keras
    import torch
    from keras import ops

    labels = torch.tensor([0, 2, 1, -1])
    expected = ops.one_hot(labels, 3)
    with compat.counter_random():
        first = keras.random.uniform((1000,), seed=1)
        again = keras.random.uniform((1000,), seed=1)
        other = keras.random.uniform((1000,), seed=2)
        normal = keras.random.normal((4000,), seed=3)
        one_hot = ops.one_hot(labels, 3)
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert float(first.min()) >= 0.0 and float(first.max()) < 1.0
    # Mean 0.5 and standard deviation 1/sqrt(12) of 1000 uniforms: 4.5 standard errors apart.
    assert abs(float(first.mean()) - 0.5) < 0.04
    assert abs(float(normal.mean())) < 0.07 and abs(float(normal.std()) - 1.0) < 0.05
    torch.testing.assert_close(one_hot, expected)


@torch_only
def test_counter_random_without_keras_random_functions_keeps_kerass_own(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from keras.src.backend.torch import random as keras_random

    dropout = keras_random.dropout
    monkeypatch.setattr(keras_random, "uniform", lambda shape, seed=None: None)
    compat._counter_random_patches.cache_clear()
    try:
        with caplog.at_level(logging.INFO, logger="dualtrain"), compat.counter_random():
            assert keras_random.dropout is dropout
    finally:
        monkeypatch.undo()
        compat._counter_random_patches.cache_clear()
    assert "uniform takes (shape, seed)" in _lines(caplog, "counter_random")[0]


@torch_only
def test_fused_rnn_with_changed_keras_functions_keeps_kerass_own(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import importlib

    from keras.src import backend

    keras_rnn = importlib.import_module("keras.src.backend.torch.rnn")
    gru = backend.gru
    monkeypatch.setattr(keras_rnn, "prepare_lstm_params", lambda kernel, bias: None)
    compat._fused_rnn_patches.cache_clear()
    try:
        with caplog.at_level(logging.INFO, logger="dualtrain"), compat.fused_rnn():
            assert backend.gru is gru  # Keras's own: its loop on CPU
    finally:
        monkeypatch.undo()
        compat._fused_rnn_patches.cache_clear()
    with compat.fused_rnn():  # the check passes again with Keras's function back
        assert backend.gru is not gru
    assert backend.gru is gru  # and Keras's is back after the steps
    line = _lines(caplog, "fused_rnn")[0]
    assert "prepare_lstm_params takes (kernel, bias), not (kernel, recurrent_kernel" in line
    assert line.endswith("GRU and LSTM layers loop in Python on torch")


# -- TensorFlow hooks ----------------------------------------------------------------------------


@tf_only
def test_leaky_relu_as_select_gives_tensorflows_values_and_gradients() -> None:
    import keras
    import numpy as np
    import tensorflow as tf

    # 0 and -0.0 included: the gradient there is the slope, as LeakyReluGrad's (and torch's).
    x = tf.constant([-3.0, -0.5, -0.0, 0.0, 1e-8, 2.0, np.nan], dtype=tf.float32)
    layer = keras.layers.LeakyReLU(0.3)

    def values_and_gradients() -> tuple[np.ndarray, np.ndarray]:
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
        return y.numpy(), tape.gradient(y, x).numpy()

    expected = values_and_gradients()
    with compat.leaky_relu_as_select():
        from keras.src.backend.tensorflow import nn as keras_tf_nn

        assert keras_tf_nn.leaky_relu.__module__ == compat.__name__  # the swap is in place
        swapped = values_and_gradients()
    assert keras_tf_nn.leaky_relu.__module__ != compat.__name__  # Keras's own back after it
    for got, want in zip(swapped, expected, strict=True):
        np.testing.assert_array_equal(got, want)  # to the bit, NaN in place


@tf_only
def test_leaky_relu_as_select_with_a_changed_keras_function_keeps_kerass_own(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from keras.src.backend.tensorflow import nn as keras_tf_nn

    monkeypatch.setattr(keras_tf_nn, "leaky_relu", lambda x, alpha=0.2: x)
    changed = keras_tf_nn.leaky_relu
    compat._leaky_relu_patch.cache_clear()
    try:
        with caplog.at_level(logging.INFO, logger="dualtrain"), compat.leaky_relu_as_select():
            assert keras_tf_nn.leaky_relu is changed
    finally:
        monkeypatch.undo()
        compat._leaky_relu_patch.cache_clear()
    line = _lines(caplog, "leaky_relu_as_select")[0]
    assert "leaky_relu takes (x, alpha), not (x, negative_slope)" in line
    assert line.endswith("LeakyReLU runs TensorFlow's LeakyRelu op")


@tf_only
def test_skip_optimizer_all_reduce(monkeypatch: pytest.MonkeyPatch) -> None:
    import keras
    import tensorflow as tf

    from dualtrain.errors import RunError

    optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD())
    compat.skip_optimizer_all_reduce(optimizer)
    pairs = [(tf.ones(1), "v")]
    assert optimizer._all_reduce_sum_gradients(pairs) == pairs
    assert optimizer.inner_optimizer._all_reduce_sum_gradients(pairs) == pairs

    from keras.src.backend.tensorflow.optimizer import TFOptimizer

    plain = keras.optimizers.SGD()
    monkeypatch.delattr(TFOptimizer, "_all_reduce_sum_gradients")
    with pytest.raises(RunError, match=r"keras 3\.15\.1"):
        compat.skip_optimizer_all_reduce(plain)


@tf_only
def test_unscaled_keras_losses_are_scoped(monkeypatch: pytest.MonkeyPatch) -> None:
    import keras
    import tensorflow as tf
    from keras.src.losses import loss as keras_loss

    from dualtrain.errors import RunError

    compat.check_unscaled_keras_losses()
    original = keras_loss.scale_loss_for_distribution
    # One replica: Keras divides by 1, so the public path's value is the one to match.
    expected = float(keras.losses.MeanSquaredError()(tf.zeros(3), tf.ones(3)))
    with compat.unscaled_keras_losses():
        assert keras_loss.scale_loss_for_distribution is not original
        got = float(keras.losses.MeanSquaredError()(tf.zeros(3), tf.ones(3)))
    assert got == expected == 1.0
    assert keras_loss.scale_loss_for_distribution is original  # restored, not process-wide

    monkeypatch.delattr(keras_loss, "scale_loss_for_distribution")
    with pytest.raises(RunError, match=r"keras 3\.15\.1"):
        compat.check_unscaled_keras_losses()


@tf_only
def test_cross_device_ops_name(caplog: pytest.LogCaptureFixture) -> None:
    import tensorflow as tf

    strategy = tf.distribute.MirroredStrategy(
        ["/cpu:0"], cross_device_ops=tf.distribute.ReductionToOneDevice()
    )
    assert compat.cross_device_ops_name(strategy) == "ReductionToOneDevice"

    class Extended:  # a strategy that keeps its reduction elsewhere
        pass

    class Strategy:
        extended = Extended()

    with caplog.at_level(logging.INFO, logger="dualtrain"):
        assert compat.cross_device_ops_name(Strategy()) == "unknown"
    assert len(_lines(caplog, "cross_device_ops_name")) == 1


@tf_only
def test_xplane_module(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    module = compat.xplane_module()
    assert module is not None
    space = module.XSpace()
    space.planes.add(name="/host:CPU")
    assert module.XSpace.FromString(space.SerializeToString()).planes[0].name == "/host:CPU"

    monkeypatch.setitem(sys.modules, "tensorflow.tsl.profiler.protobuf.xplane_pb2", None)
    compat._xplane_module.cache_clear()
    try:
        with caplog.at_level(logging.INFO, logger="dualtrain"):
            assert compat.xplane_module() is None
            assert compat.xplane_module() is None
    finally:
        compat._xplane_module.cache_clear()
    assert "profile.md is not" in _lines(caplog, "xplane_module")[0]
    assert len(_lines(caplog, "xplane_module")) == 1
