"""Training on this process's backend: accuracy, repeatability, batch order, options."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dualtrain.data import load_data
from dualtrain.engines import engine_class
from dualtrain.recipe import load_recipe
from dualtrain.run import train
from tests.backend.conftest import BACKEND, make_settings

SMALL = ["data=synthetic", "data.num_samples=320", "trainer.max_epochs=2"]


def losses(run_dir: Path) -> list[float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines if json.loads(line)["split"] == "train"]


@pytest.mark.parametrize(
    "recipe,threshold",
    [pytest.param("cnn", 0.97, marks=pytest.mark.slow), ("mlp", 0.95)],  # cnn: 7-16 s of training
)
def test_shipped_recipe_reaches_its_accuracy_with_defaults(
    recipe: str, threshold: float, tmp_path: Path
) -> None:
    # Thresholds from the issue. Measured over seeds 0-4 on both backends: cnn 0.978-0.997,
    # mlp 0.956-0.991 (docs/getting-started.md); seed 0 is the default.
    summary = train(make_settings(tmp_path, f"recipe={recipe}"))
    assert summary["status"] == "completed"
    assert summary["final"]["val"]["accuracy"] >= threshold


def test_same_seed_gives_the_same_losses_and_another_seed_does_not(tmp_path: Path) -> None:
    runs = [("a", 7), ("b", 7), ("c", 8)]
    for name, seed in runs:
        train(make_settings(tmp_path / name, *SMALL, f"seed={seed}", "trainer.log_every_n_steps=1"))
    first, second, other = (losses(tmp_path / name) for name, _ in runs)
    assert len(first) == 8
    assert first == second  # exactly: CPU kernels here are deterministic for a fixed seed
    assert first != other


def test_batches_follow_the_seeded_backend_neutral_order(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, *SMALL, "data.batch_size=50", "seed=3")
    data = load_data(settings.data, settings.seed)
    engine = engine_class(BACKEND)(settings, load_recipe(settings.recipe), data)
    seen = []
    for epoch in (0, 1):
        labels = [
            np.asarray(batch[1].cpu() if hasattr(batch[1], "cpu") else batch[1])
            for batch in engine.train_batches(epoch)
        ]
        order = np.concatenate(data.train.batches(50, seed=3, epoch=epoch))
        assert [len(b) for b in labels] == [50, 50, 50, 50, 50, 6]
        np.testing.assert_array_equal(np.concatenate(labels), data.train.y[order])
        seen.append(order)
    assert not np.array_equal(seen[0], seen[1])  # reshuffled each epoch
    val = np.concatenate(
        [np.asarray(b[1].cpu() if hasattr(b[1], "cpu") else b[1]) for b in engine.val_batches()]
    )
    np.testing.assert_array_equal(val, data.val.y)  # val is never shuffled


def test_max_steps_stops_mid_epoch(tmp_path: Path) -> None:
    summary = train(make_settings(tmp_path, *SMALL, "trainer.max_steps=3"))
    assert (summary["steps"], summary["epochs"]) == (3, 0)  # epoch 0 is not complete
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(x["split"], x["step"]) for x in lines] == [("train", 3), ("val", 3)]


# The recipe sets optimizer.lr for any optimizer (0.002 for cnn); SGD needs a larger one.
@pytest.mark.parametrize("optimizer,lr", [("adam", 0.002), ("adamw", 0.002), ("sgd", 0.05)])
def test_each_optimizer_learns(optimizer: str, lr: float, tmp_path: Path) -> None:
    overrides = [*SMALL, f"optimizer={optimizer}", f"optimizer.lr={lr}", "trainer.max_epochs=4"]
    summary = train(make_settings(tmp_path, *overrides, "trainer.log_every_n_steps=1"))
    curve = losses(tmp_path)
    # Synthetic classes are far apart (unit prototypes in 64 dims, noise 1.0): in 16 steps every
    # optimizer takes the loss from about ln(10) = 2.3 to below a third of it (measured: < 0.6).
    assert len(curve) == 16
    assert curve[-1] < curve[0] / 3
    assert summary["final"]["val"]["accuracy"] >= 0.9


@pytest.mark.slow  # compiling takes over a minute on torch
def test_jit_compile_true_compiles_and_trains(tmp_path: Path) -> None:
    summary = train(make_settings(tmp_path, *SMALL, "backend.jit_compile=true"))
    assert summary["jit_compile"] is True
    assert summary["final"]["val"]["accuracy"] >= 0.9


def test_mlp_standardizes_with_train_statistics_only(tmp_path: Path) -> None:
    import keras

    settings = make_settings(tmp_path, "recipe=mlp")
    data = load_data(settings.data, settings.seed)
    model = load_recipe(settings.recipe).build_model(data.info)
    norm = model.get_layer("standardize")
    # The statistics are model variables: checkpoints carry them, load_model gets them back.
    assert {v.path for v in model.non_trainable_variables} >= {
        "standardize/mean",
        "standardize/std",
    }
    mean = np.asarray(keras.ops.convert_to_numpy(norm.mean.value)).reshape(-1)
    np.testing.assert_allclose(mean, data.train.x.mean(axis=0), rtol=1e-5)
    full_mean = np.concatenate([data.train.x, data.val.x]).mean(axis=0)
    assert not np.allclose(mean, full_mean, rtol=1e-5)
    std = np.asarray(keras.ops.convert_to_numpy(norm.std.value)).reshape(-1)
    np.testing.assert_allclose(std, data.train.x.std(axis=0), rtol=1e-4)
