"""backend.capture_forward (torch): the captured ATen graph gives the eager path's values."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.backend.conftest import BACKEND, make_settings

pytestmark = pytest.mark.skipif(BACKEND != "torch", reason="capture_forward is torch's")

SMALL = ["data=synthetic", "data.num_samples=320", "data.batch_size=64", "trainer.max_epochs=1"]
# float32: the graph runs the same kernels, but convolutions read channels-last memory, which
# reorders their sums (about 1e-7 relative per op); over a few Adam steps that stays below 1e-5.
RTOL = 1e-5


def _engine(tmp_path: Path, *overrides: str) -> Any:
    from dualtrain.data import load_data
    from dualtrain.engines import engine_class
    from dualtrain.recipe import load_recipe

    settings = make_settings(tmp_path, *SMALL, *overrides)
    data = load_data(settings.data, settings.seed)
    engine = engine_class(BACKEND)(settings, load_recipe(settings.recipe), data)
    return engine


def _train(engine: Any, steps: int) -> list[float]:
    import torch

    torch.manual_seed(0)  # the same dropout masks for each engine, trained one after the other
    losses = []
    for batch in list(engine.train_batches(0))[:steps]:
        engine.train_step([batch])
        losses.append(engine.train_metrics()["loss"])
    return losses


@pytest.mark.parametrize("recipe", ["cnn", "bench_cnn", "bench_transformer"])
def test_captured_steps_match_eager_in_training_and_eval(recipe: str, tmp_path: Path) -> None:
    # cnn has Dropout (masks from torch's global RNG in both paths), bench_cnn the W1 layers,
    # bench_transformer attention (whose permuted copies feed views: they must stay).
    shape = {"bench_cnn": ["data.shape=[28,28,1]"], "bench_transformer": ["data.shape=[16,32]"]}
    shape = shape.get(recipe, [])
    eager = _engine(tmp_path, f"recipe={recipe}", *shape, "backend.capture_forward=false")
    captured = _engine(tmp_path, f"recipe={recipe}", *shape)
    assert captured.phases[0].loss is not eager.phases[0].loss  # the captured path is in use
    np.testing.assert_allclose(_train(captured, 4), _train(eager, 4), rtol=RTOL)
    weights_eager, _ = eager.state.checkpoint_arrays()
    weights_captured, _ = captured.state.checkpoint_arrays()
    assert weights_captured.keys() == weights_eager.keys()  # the same checkpoint layout
    for path, value in weights_eager.items():
        np.testing.assert_allclose(weights_captured[path], value, rtol=RTOL, atol=1e-6)
    eval_eager, eval_captured = eager.evaluate(), captured.evaluate()
    assert eval_captured.keys() == eval_eager.keys()
    for name, value in eval_eager.items():
        assert eval_captured[name] == pytest.approx(value, rel=RTOL)


def test_captured_graph_reads_restored_weights(tmp_path: Path) -> None:
    """A checkpoint restored after the graph was captured is what the next step trains on."""
    trained = _engine(tmp_path, "recipe=bench_cnn", "data.shape=[28,28,1]")
    _train(trained, 2)
    fresh = _engine(tmp_path, "recipe=bench_cnn", "data.shape=[28,28,1]")
    _train(fresh, 1)  # captures its graph on its own initial weights
    fresh.state.restore(
        trained.state.checkpoint_arrays()[0], None
    )  # weights (optimizers are named apart)
    assert _train(fresh, 1) == pytest.approx(_train(trained, 1), rel=RTOL)


def test_models_that_cannot_be_captured_safely_run_eagerly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import keras

    from dualtrain.engines.torch_graph import capture_problem

    inputs = keras.Input((4,))
    normed = keras.Model(inputs, keras.layers.BatchNormalization()(inputs))
    assert "BatchNormalization" in str(capture_problem(normed))
    noisy = keras.Model(inputs, keras.layers.GaussianNoise(0.1)(inputs))
    assert "GaussianNoise" in str(capture_problem(noisy))
    with caplog.at_level(logging.INFO, logger="dualtrain"):
        gan = _engine(tmp_path, "recipe=gan", "data.shape=[8,8,1]")
    assert "backend.capture_forward: the model runs eagerly" in caplog.text
    assert all("_captured_phase" not in phase.loss.__qualname__ for phase in gan.phases)
