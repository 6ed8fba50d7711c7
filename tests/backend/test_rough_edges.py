"""First-day rough edges, in process on this process's backend."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from dualtrain.run import train
from tests.backend.conftest import BACKEND, make_settings
from tests.backend.test_training import losses
from tests.backend.users import recipe_overrides


@pytest.mark.skipif(BACKEND != "torch", reason="capture_forward is torch's")
def test_a_loss_that_cannot_be_captured_says_why_in_one_plain_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """README's own recipe writes its loss with ops.one_hot, whose torch kernel reads the labels'
    values to check them: the capture falls back, and says so in words, not in torch's."""
    import keras
    import torch
    from keras import ops

    from dualtrain.engines.torch_graph import CapturedFunction

    inputs = keras.Input((2,))
    model = keras.Model(inputs, keras.layers.Dense(3)(inputs))

    def loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = model(x)
        one_hot = ops.one_hot(y, ops.shape(logits)[-1])
        return ops.mean(-ops.sum(one_hot * ops.log_softmax(logits), axis=-1))

    captured = CapturedFunction(loss, model.variables, "the model loss")
    x, y = torch.randn(8, 2), torch.arange(8) % 3
    with caplog.at_level(logging.INFO, logger="dualtrain"):
        first = captured(x, y)
        captured(torch.randn(4, 2), torch.arange(4) % 3)  # another shape: no second line
    assert float(first.detach()) == pytest.approx(float(loss(x, y).detach()))
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert len(lines) == 1, lines
    assert "the model loss runs eagerly, as plain Keras on torch" in lines[0]
    assert "reads a tensor's value on the host" in lines[0]
    for torch_words in ("RuntimeError", "make_fx", "aten.", "tracing_mode"):
        assert torch_words not in lines[0]


def test_mlp_on_digits_reaches_a_sane_val_loss(tmp_path: Path) -> None:
    """digits' corner pixels are 0 in every train image: standardizing by their zero spread
    sent val samples that differ there to huge values (val loss in the hundreds)."""
    summary = train(make_settings(tmp_path, "recipe=mlp", "data=digits", "trainer.max_epochs=3"))
    assert summary["status"] == "completed"
    assert summary["final"]["val"]["loss"] < 1.0
    assert summary["final"]["val"]["accuracy"] > 0.8


def test_conv2d_with_leaky_relu_trains_without_an_error_line_and_as_eagerly(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Conv2D, its bias and LeakyReLU, as a DCGAN discriminator stacks them: on tf, grappler's
    remapper used to fail on the training graph, print `E ... remapper failed: INVALID_ARGUMENT
    ... LeakyReluGrad ... BiasAdd` and drop all that graph's fusions (compat.leaky_relu_as_select).
    On either backend nothing like it is printed, and the losses are those of debug=eager, which
    runs Keras's own LeakyReLU."""
    overrides = recipe_overrides(
        "layers", "+recipe.model.kind=conv2d_leaky", "trainer.max_epochs=1",
        "trainer.log_every_n_steps=1", "logger=[jsonl]",
    )  # fmt: skip
    capfd.readouterr()
    assert train(make_settings(tmp_path / "graph", *overrides))["status"] == "completed"
    printed = capfd.readouterr().err
    assert "remapper failed" not in printed and "E0000" not in printed, printed[-2000:]
    train(make_settings(tmp_path / "eager", *overrides, "debug=eager"))
    graph, eager = losses(tmp_path / "graph"), losses(tmp_path / "eager")
    assert len(graph) == len(eager) >= 6  # 409 train samples, batch 64
    # float32: the step runs the same arithmetic in another order (fused kernels, captured on
    # torch), about 1e-7 relative per step; as tests/backend/test_eager_fallback.py.
    np.testing.assert_allclose(graph, eager, rtol=1e-5)
