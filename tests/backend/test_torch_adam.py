"""The fused Adam update on torch (engines/torch_adam.py) against Keras's own torch Adam."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.backend.conftest import BACKEND

pytestmark = pytest.mark.skipif(BACKEND != "torch", reason="the fused update is torch's")


def _train(fused: bool, cls_name: str, steps: int = 100, **options: float) -> tuple[list, object]:
    import keras
    import torch

    from dualtrain.engines.torch_adam import FusedAdam, fuse_adam

    shapes = [(64, 32), (32,), (32, 10), (10,)]
    init = torch.Generator().manual_seed(0)
    variables = [keras.Variable(torch.randn(s, generator=init) * 0.1) for s in shapes]
    schedule = keras.optimizers.schedules.CosineDecay(1e-2, steps)
    optimizer = getattr(keras.optimizers, cls_name)(learning_rate=schedule, **options)
    optimizer.build(variables)
    if fused:
        assert isinstance(fuse_adam(optimizer), FusedAdam)
    draw = torch.Generator().manual_seed(1)
    for i in range(steps):
        # Gradients of changing scale, so the velocities matter.
        grads = [torch.randn(s, generator=draw) * 0.01 * (1 + i % 3) for s in shapes]
        # One gradient as a permuted view, as autograd returns for Keras's convolution kernels.
        grads[0] = grads[0].T.contiguous().T
        optimizer.apply(grads, variables)
    return [v.numpy() for v in variables], optimizer


@pytest.mark.parametrize(
    ("cls_name", "options"),
    [
        ("Adam", {}),
        # A large epsilon: where it enters the denominator then shows in the weights.
        ("Adam", {"epsilon": 1e-4, "global_clipnorm": 0.05}),
        ("AdamW", {"weight_decay": 0.05}),
    ],
)
def test_fused_adam_matches_keras_update(cls_name: str, options: dict) -> None:
    import numpy as np

    keras_weights, keras_opt = _train(False, cls_name, **options)
    fused_weights, fused_opt = _train(True, cls_name, **options)
    assert int(fused_opt.iterations.value) == int(keras_opt.iterations.value) == 100
    # Weights of up to 0.4 move by up to 0.3. Rounding alone differs by up to 1.2e-7 after 100
    # steps (4 float32 ulp of a weight of 0.3); the kernel's own float64 bias corrections in place
    # of Keras's float32 ones, or epsilon left unscaled, fail this (checked by hand).
    for k, f in zip(keras_weights, fused_weights, strict=True):
        np.testing.assert_allclose(f, k, rtol=1e-6, atol=1e-7)
    # The optimizer's own state is what the kernel updated: momentums of about 1e-2, velocities
    # of about 1e-4, each within a few ulp of its largest value (the two round m*b1 + g*(1-b1)
    # differently, which shows as relative error only where a momentum crosses zero).
    for name in ("_momentums", "_velocities"):
        for k, f in zip(getattr(keras_opt, name), getattr(fused_opt, name), strict=True):
            k, f = k.numpy(), f.numpy()
            np.testing.assert_allclose(f, k, rtol=1e-5, atol=1e-6 * np.abs(k).max())


def test_optimizers_without_a_fused_update_keep_keras_update() -> None:
    import keras

    from dualtrain.engines.torch_adam import fuse_adam

    assert "SGD has no fused update" in fuse_adam(keras.optimizers.SGD())
    assert "amsgrad" in fuse_adam(keras.optimizers.Adam(amsgrad=True))


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_engine_trains_the_same_with_the_fused_update(
    optimizer: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine fuses its Adam (cnn: convolution kernels have permuted gradients), and trains
    as with Keras's own update."""
    import numpy as np

    from dualtrain.engines import torch as torch_engine
    from tests.backend.test_capture import _engine, _train

    overrides = ("recipe=cnn", f"optimizer={optimizer}")
    fused = _engine(tmp_path / "fused", *overrides)
    assert fused.state.optimizer._parallel_update_step.__qualname__.startswith("FusedAdam")
    fused_losses = _train(fused, 5)
    monkeypatch.setattr(torch_engine, "fuse_adam", lambda optimizer: "switched off by the test")
    plain = _engine(tmp_path / "plain", *overrides)
    assert not plain.state.optimizer._parallel_update_step.__qualname__.startswith("FusedAdam")
    plain_losses = _train(plain, 5)
    # A few ulp per step apart (above); the losses of 5 steps agree far inside capture's 1e-5.
    np.testing.assert_allclose(fused_losses, plain_losses, rtol=1e-5)
    for a, b in zip(fused.model.weights, plain.model.weights, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kernel", [True, False])
def test_a_nan_step_changes_nothing_whether_the_kernel_or_keras_updates(
    kernel: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The eager update skips a NaN step by itself: the kernel (found_inf) where it runs, else
    the engine keeps and puts back every tensor Keras's own update may change (the kernel
    refuses, e.g., variables of two dtypes: simulated here)."""
    import numpy as np

    from dualtrain.engines import torch_adam
    from tests.backend.test_capture import _all_variables, _nonfinite

    if not kernel:
        monkeypatch.setattr(torch_adam, "_fusable", lambda *tensors: False)
    engine, bad, others = _nonfinite(tmp_path, "backend.capture_step=false")
    engine.train_step(others[:1])
    before = _all_variables(engine)
    engine.train_step([bad])
    after = _all_variables(engine)
    for path, value in before.items():
        np.testing.assert_array_equal(after[path], value, err_msg=path)
    assert engine.state.nonfinite_steps() == (1, 2)  # one step skipped: the second
