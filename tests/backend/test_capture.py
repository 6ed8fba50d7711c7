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
    return _build(tmp_path, *SMALL, *overrides)


def _build(tmp_path: Path, *overrides: str) -> Any:
    from dualtrain.data import load_data
    from dualtrain.engines import engine_class
    from dualtrain.recipe import load_recipe

    settings = make_settings(tmp_path, *overrides)
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


def _user_engine(tmp_path: Path, kind: str, *overrides: str) -> Any:
    source = "load_tokens" if kind == "lstm_tokens" else "load_data"
    return _build(
        tmp_path,
        "data.batch_size=64",
        "recipe.name=layers",
        "recipe.module=tests.backend.users.layers",
        "~recipe.model",
        "~recipe.task",
        "data=python",
        f"data.source=tests.backend.users.layers:{source}",
        f"+recipe.model.kind={kind}",
        *overrides,
    )


def _variables(engine: Any) -> dict[str, np.ndarray]:
    """Every model variable: weights, batch norm statistics, seed states."""
    return {v.path: np.array(v.numpy()) for v in engine.model.variables}


KINDS = ["batchnorm", "seeded_dropout", "noise", "gru", "lstm_tokens", "subclassed"]


@pytest.mark.parametrize("kind", KINDS)
def test_users_models_are_captured_and_give_the_eager_values(
    kind: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """BatchNorm, seeded random layers, GRU/LSTM, subclassed models and a user's own layer run
    as graphs (the loss's one_hot on `ops.shape(logits)[-1]` too), with the values of debug=eager:
    the same losses, weights, moving statistics and seed states after four steps."""
    eager = _user_engine(tmp_path, kind, "backend.eager=true")
    with caplog.at_level(logging.INFO, logger="dualtrain"):
        captured = _user_engine(tmp_path, kind)
        captured_losses = _train(captured, 4)
    assert "runs eagerly" not in caplog.text
    assert captured.step_capture()["captured"] is True, captured.step_capture()
    assert all(c.graphs and None not in c.graphs.values() for c in captured._captures[:1])
    np.testing.assert_allclose(captured_losses, _train(eager, 4), rtol=RTOL)
    before, after = _variables(eager), _variables(captured)
    assert after.keys() == before.keys()
    for path, value in before.items():
        np.testing.assert_allclose(after[path], value, rtol=RTOL, atol=1e-6, err_msg=path)
    eval_eager, eval_captured = eager.evaluate(), captured.evaluate()
    for name, value in eval_eager.items():
        assert eval_captured[name] == pytest.approx(value, rel=RTOL)


def test_the_captured_graph_updates_moving_statistics_and_seed_states(tmp_path: Path) -> None:
    """Each step assigns what the graph computed: the statistics move, the seed advances, and a
    second step draws a new dropout mask (a seed baked into the graph would repeat the first)."""
    engine = _user_engine(tmp_path, "subclassed")
    start = _variables(engine)
    _train(engine, 1)
    one = _variables(engine)
    _train(engine, 1)
    two = _variables(engine)
    moving = next(path for path in start if path.endswith("moving_mean"))
    seed = next(path for path in start if "seed_generator" in path)
    assert not np.array_equal(one[moving], start[moving])
    assert not np.array_equal(two[moving], one[moving])
    # Keras's SeedGenerator counts its draws in the second element: one draw per step.
    assert [start[seed][1], one[seed][1], two[seed][1]] == [start[seed][1] + i for i in range(3)]


def test_a_resumed_run_draws_the_masks_the_whole_run_drew(tmp_path: Path) -> None:
    whole = _user_engine(tmp_path, "seeded_dropout")
    expected = _train(whole, 4)
    first = _user_engine(tmp_path, "seeded_dropout")
    _train(first, 2)
    weights, optimizers = first.state.checkpoint_arrays()
    resumed = _user_engine(tmp_path, "seeded_dropout")
    resumed.state.restore(weights, optimizers)
    batches = list(resumed.train_batches(0))[2:4]
    losses = []
    for batch in batches:
        resumed.train_step([batch])
        losses.append(resumed.train_metrics()["loss"])
    np.testing.assert_allclose(losses, expected[2:], rtol=RTOL)


def test_a_model_that_cannot_be_captured_runs_eagerly_and_says_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="dualtrain"):
        engine = _user_engine(tmp_path, "branches")
        losses = _train(engine, 2)
    assert np.isfinite(losses).all()
    record = engine.step_capture()
    assert record["captured"] is False
    assert "reads a tensor's value on the host" in record["not_captured_because"]
    lines = [r.getMessage() for r in caplog.records if "runs eagerly" in r.getMessage()]
    # One line per captured function that fell back (the training loss, then the eval pass).
    assert lines and "the model loss runs eagerly" in lines[0], lines


STEP_CASES = {
    # Dropout from torch's global RNG, Adam (the fused kernel in the graph)
    "cnn": ["recipe=cnn", "data=synthetic", "data.num_samples=320"],
    # two phases, two optimizers, noise from seeded generators in the losses
    "gan": ["recipe=gan", "data=synthetic", "data.shape=[8,8,1]", "data.num_samples=320"],
    # BatchNorm's statistics, the one_hot loss
    "batchnorm": [
        "recipe.name=layers", "recipe.module=tests.backend.users.layers", "~recipe.model",
        "~recipe.task", "data=python", "data.source=tests.backend.users.layers:load_data",
        "+recipe.model.kind=batchnorm",
    ],
}  # fmt: skip


def _all_variables(engine: Any) -> dict[str, np.ndarray]:
    arrays = _variables(engine)
    for optimizer in engine.state.optimizers:
        arrays.update({v.path: np.array(v.numpy()) for v in optimizer.variables})
    return arrays


@pytest.mark.parametrize("case", sorted(STEP_CASES))
def test_a_captured_step_gives_the_values_of_the_forward_graph_and_eager_update(
    case: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """backend.capture_step: forward, backward and the optimizer's update as one graph; the same
    losses, weights, optimizer state and moving statistics as the step it replaces."""
    overrides = ("data.batch_size=64", *STEP_CASES[case])
    with caplog.at_level(logging.INFO, logger="dualtrain"):
        whole = _build(tmp_path, *overrides)
        whole_losses = _train(whole, 4)
    assert "backend.capture_step: " not in caplog.text  # no fallback line
    assert all(s is not None and s.failed is None for s in whole._steps)
    assert all(None not in s.graphs.values() and s.graphs for s in whole._steps)
    assert whole.step_capture()["whole_step"] is True
    parts = _build(tmp_path, *overrides, "backend.capture_step=false")
    np.testing.assert_allclose(whole_losses, _train(parts, 4), rtol=RTOL)
    expected, got = _all_variables(parts), _all_variables(whole)
    assert got.keys() == expected.keys()
    for path, value in expected.items():
        np.testing.assert_allclose(got[path], value, rtol=RTOL, atol=1e-6, err_msg=path)


def _nonfinite(tmp_path: Path, *overrides: str) -> tuple[Any, Any, list[Any]]:
    """An engine of tests/backend/nonfinite.py's recipe (one sample's loss overflows) with
    trainer.on_nonfinite=skip; the batch that holds that sample; the others."""
    from tests.backend.nonfinite import OVERFLOW_SAMPLE

    engine = _build(
        tmp_path, "recipe.name=nonfinite", "recipe.module=tests.backend.nonfinite",
        "~recipe.model", "data=python", "data.source=tests.backend.nonfinite:load_data",
        "data.batch_size=32", "trainer.on_nonfinite=skip", *overrides,
    )  # fmt: skip
    order = engine._batch_order(engine.data.train, 0)
    bad = next(i for i, indices in enumerate(order) if OVERFLOW_SAMPLE in indices)
    batches = list(engine.train_batches(0))
    return engine, batches[bad], [b for i, b in enumerate(batches) if i != bad]


@pytest.mark.parametrize("accumulate", [1, 2])
def test_a_captured_step_or_update_with_a_nan_loss_changes_nothing(
    accumulate: int, tmp_path: Path
) -> None:
    """One batch a step: the whole step is one graph; two (gradient accumulation): the update
    alone is. Either skips a step whose loss is not finite, deciding in the graph."""
    engine, bad, others = _nonfinite(tmp_path, f"trainer.grad_accum_steps={accumulate}")
    good = others[:accumulate]
    engine.train_step(good)  # the step (or the update) is captured from this one
    graph = engine._steps[0] if accumulate == 1 else engine._update_graphs[0]
    assert graph.graphs and None not in graph.graphs.values()
    assert (engine._steps[0] is None) == (accumulate > 1)
    before = _all_variables(engine)
    engine.train_step([bad, *good[1:]])
    after = _all_variables(engine)
    for path, value in before.items():
        np.testing.assert_array_equal(after[path], value, err_msg=path)
    assert engine.state.nonfinite_steps() == (1, 2)  # one step skipped: the second
    engine.train_step(good)
    assert int(engine.state.optimizer.iterations.numpy()) == 2  # the skipped step not counted


def test_an_update_graph_is_captured_from_a_finite_update_only(tmp_path: Path) -> None:
    """A skipped update would check only that the graph changes nothing: the graph waits for
    the first update that is applied, and is checked against it."""
    engine, bad, others = _nonfinite(tmp_path, "trainer.grad_accum_steps=2")
    good = others[:2]
    (update,) = engine._update_graphs
    engine.train_step([bad, good[0]])  # skipped: nothing to check a graph against
    assert update.graphs == {} and update.failed is None
    engine.train_step(good)
    assert update.graphs and None not in update.graphs.values()
    assert int(engine.state.optimizer.iterations.numpy()) == 1


def test_an_update_that_reads_the_host_runs_eagerly_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Keras's own CosineDecay with warmup (ops.cond: a Python `if` on the step on torch), in
    place of dualtrain's: the update cannot be a graph; Keras's update runs, and one line says
    that the update, not the model, is why."""
    import keras

    from dualtrain.engines import state

    def kerass(target: float, warmup_steps: int, decay_steps: int, alpha: float) -> Any:
        return keras.optimizers.schedules.CosineDecay(
            0.0, decay_steps, alpha=alpha, warmup_target=target, warmup_steps=warmup_steps
        )

    monkeypatch.setattr(state, "WarmupCosine", kerass)
    with caplog.at_level(logging.INFO, logger="dualtrain"):
        engine = _engine(tmp_path, "recipe=mlp", "scheduler=warmup_cosine",
                         "trainer.grad_accum_steps=2")  # fmt: skip
        losses = _train_accumulated(engine, 2)
    assert np.isfinite(losses).all()
    assert engine.step_capture()["update_graph"] is False
    (line,) = [r.getMessage() for r in caplog.records if "the model update runs" in r.getMessage()]
    assert "the optimizer's update reads a tensor's value on the host" in line, line


@pytest.mark.parametrize("case", ["gan", "batchnorm"])
def test_an_update_graph_gives_the_eager_updates_values(case: str, tmp_path: Path) -> None:
    """Where a step is not one graph (here: gradient accumulation, two batches a step), each
    phase's optimizer update alone is one: the same losses, weights, optimizer state and moving
    statistics as Keras's `optimizer.apply`."""
    overrides = ("data.batch_size=32", "trainer.grad_accum_steps=2", *STEP_CASES[case])
    graphs = _build(tmp_path, *overrides)
    graph_losses = _train_accumulated(graphs, 4)
    assert graphs.step_capture()["whole_step"] is False
    assert graphs.step_capture()["update_graph"] is True
    assert all(u.graphs and None not in u.graphs.values() for u in graphs._update_graphs)
    eager = _build(tmp_path, *overrides, "backend.capture_step=false")
    assert eager.step_capture()["update_graph"] is False
    np.testing.assert_allclose(graph_losses, _train_accumulated(eager, 4), rtol=RTOL)
    expected, got = _all_variables(eager), _all_variables(graphs)
    assert got.keys() == expected.keys()
    for path, value in expected.items():
        np.testing.assert_allclose(got[path], value, rtol=RTOL, atol=1e-6, err_msg=path)


def _train_accumulated(engine: Any, steps: int) -> list[float]:
    """`steps` steps of two batches each."""
    import torch

    torch.manual_seed(0)
    batches = list(engine.train_batches(0))
    losses = []
    for i in range(steps):
        engine.train_step(batches[2 * i : 2 * i + 2])
        losses.append(engine.train_metrics()["loss"])
    return losses


@pytest.mark.parametrize(
    ("optimizer", "reason"),
    [
        ("sgd", "SGD has no update the graph can skip"),
        ("adamw", "AdamW's weight decay changes the weights in place"),
    ],
)
def test_optimizers_a_captured_step_cannot_skip_keep_the_eager_update(
    optimizer: str, reason: str, tmp_path: Path
) -> None:
    engine = _engine(tmp_path, "recipe=mlp", f"optimizer={optimizer}")
    _train(engine, 2)
    assert engine.step_capture()["whole_step_not_captured_because"] == reason
    assert engine.step_capture()["captured"] is True  # the forward pass still is


def test_a_step_graph_of_too_many_small_ops_keeps_the_forward_graph(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dualtrain.engines import torch_graph

    monkeypatch.setattr(torch_graph, "MAX_STEP_OPS", 20)  # the mlp's step has about 100
    engine = _engine(tmp_path, "recipe=mlp")
    losses = _train(engine, 2)
    record = engine.step_capture()
    assert record["whole_step"] is False and record["captured"] is True
    assert "more than 20 (a recurrent layer unrolled" in record["whole_step_not_captured_because"]
    assert np.isfinite(losses).all()
