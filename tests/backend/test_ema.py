"""trainer.ema on this process's backend: Keras's EMA arithmetic, validation with the averaged
weights, the average in checkpoints, and the averaged weights in load_model and export."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import keras
import numpy as np

from dualtrain import run
from dualtrain.checkpoint import read_checkpoint
from dualtrain.data import load_data
from dualtrain.engines import engine_class
from dualtrain.loading import load_model
from dualtrain.recipe import load_recipe
from tests.backend.conftest import BACKEND, make_settings

# Noisy on purpose: the mlp on breast_cancer, batches of 8, SGD (momentum 0.9) at lr 0.02. The
# weights jump around the minimum from step to step; their average sits closer to it.
NOISY = [
    "recipe=mlp",
    "optimizer=sgd",
    "optimizer.lr=0.02",
    "data.batch_size=8",
    "recipe.model.dropout=0.0",
]


def engine_for(run_dir: Path, *overrides: str) -> Any:
    settings = make_settings(run_dir, *NOISY, *overrides)
    data = load_data(settings.data, settings.seed)
    return engine_class(BACKEND)(settings, load_recipe(settings.recipe), data)


def train(engine: Any, steps: int) -> None:
    batches = iter(engine.train_batches(0))
    for _ in range(steps):
        engine.train_step([next(batches)])


def weights(variables: list[Any]) -> list[np.ndarray]:
    return [keras.ops.convert_to_numpy(v.value) for v in variables]


def test_the_average_is_keras_optimizer_ema_and_validates_better(tmp_path: Path) -> None:
    ours = engine_for(tmp_path / "a", "trainer.ema=0.9")
    # Keras's own EMA (optimizer.use_ema) on the same run: SGD's update does not depend on it.
    theirs = engine_for(tmp_path / "b", "+optimizer.use_ema=true", "+optimizer.ema_momentum=0.9")
    train(ours, 40)
    train(theirs, 40)
    raw = weights(ours.state.trainable_variables)
    assert all(
        np.array_equal(a, b)
        for a, b in zip(raw, weights(theirs.model.trainable_variables), strict=True)
    )
    raw_reference = theirs.evaluate()  # the raw weights, evaluated by an engine without trainer.ema
    # Keras's public way to read its average: it overwrites the weights with it.
    theirs.state.optimizer.finalize_variable_values(theirs.model.trainable_variables)
    averaged = weights(ours.state.averages)
    # The same arithmetic on the same values: equal to the bit.
    for mine, keras_average in zip(
        averaged, weights(theirs.model.trainable_variables), strict=True
    ):
        np.testing.assert_array_equal(mine, keras_average)
    assert not all(np.array_equal(a, r) for a, r in zip(averaged, raw, strict=True))

    ema_val = ours.evaluate()
    # The raw weights are back, bit for bit, after the averaged validation.
    assert all(
        np.array_equal(a, b)
        for a, b in zip(raw, weights(ours.state.trainable_variables), strict=True)
    )
    raw_settings = dataclasses.replace(
        ours.settings, trainer=dataclasses.replace(ours.settings.trainer, ema_eval=False)
    )
    ours.settings = raw_settings
    raw_val = ours.evaluate()  # trainer.ema_eval=false: the raw weights
    assert raw_val == raw_reference
    assert set(ema_val) == set(raw_val)  # the same metric names
    # The point of the average on a noisy run (measured after 40 steps: val loss 0.122 averaged
    # vs 0.134 raw on torch, 0.120 vs 0.144 on tf).
    assert ema_val["loss"] < raw_val["loss"]


def test_checkpoints_keep_the_average_and_load_model_and_export_use_it(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run.train(
        make_settings(run_dir, *NOISY, "trainer.ema=0.8", "trainer.max_steps=6", "logger=[jsonl]")
    )
    saved = run_dir / "checkpoints" / "last"
    checkpoint = read_checkpoint(saved)
    assert checkpoint.trainer["ema"] == {"momentum": 0.8}
    assert checkpoint.average is not None
    # A resumed run holds the saved average exactly, and continues it.
    resumed = engine_for(tmp_path / "resumed", "trainer.ema=0.8")
    resumed.state.restore(checkpoint.model, checkpoint.optimizer, checkpoint.average)
    before = weights(resumed.state.averages)
    paths = [v.path for v in resumed.state.trainable_variables]
    assert set(paths) == set(checkpoint.average)
    for path, average in zip(paths, before, strict=True):
        np.testing.assert_array_equal(average, checkpoint.average[path])
    train(resumed, 1)
    after = zip(
        before,
        weights(resumed.state.trainable_variables),
        weights(resumed.state.averages),
        strict=True,
    )
    for old, new_weight, new_average in after:
        # Keras's float32 arithmetic, redone in NumPy: one rounding per operation, as there.
        m = np.float32(0.8)
        np.testing.assert_array_equal(new_average, m * old + (np.float32(1) - m) * new_weight)

    # load_model and export's workers (load_trained) give the averaged trainable weights, and the
    # checkpoint's other variables (seed states, statistics) as saved.
    loaded = load_model(saved)
    by_path = {v.path: keras.ops.convert_to_numpy(v.value) for v in loaded.variables}
    expected = {**checkpoint.model, **checkpoint.average}
    assert set(checkpoint.average) < set(by_path) == set(expected)
    for path, value in by_path.items():
        np.testing.assert_array_equal(value, expected[path])
    exporter, _, _ = run.load_trained(
        make_settings(tmp_path / "export", *NOISY, "mode=eval", f"checkpoint.path={saved}"),
        averaged=True,
    )
    for variable in exporter.model.trainable_variables:
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(variable.value), expected[variable.path]
        )


def test_a_checkpoint_without_an_average_starts_it_from_its_weights(tmp_path: Path) -> None:
    plain = engine_for(tmp_path / "plain")
    train(plain, 3)
    model, optimizer = plain.state.checkpoint_arrays()
    engine = engine_for(tmp_path / "ema", "trainer.ema=0.9")
    engine.state.restore(model, optimizer, None)
    restored = weights(engine.state.trainable_variables)
    for a, w in zip(weights(engine.state.averages), restored, strict=True):
        np.testing.assert_array_equal(a, w)
    train(engine, 1)  # the optimizer is past its first step: the average goes on from them
    m = np.float32(0.9)
    averaged = zip(
        restored,
        weights(engine.state.trainable_variables),
        weights(engine.state.averages),
        strict=True,
    )
    for old, new_weight, new_average in averaged:
        np.testing.assert_array_equal(new_average, m * old + (np.float32(1) - m) * new_weight)
