"""Parity mode's switch-off of random layers, and trainer.deterministic, on this process's
backend."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np

from dualtrain import compat
from dualtrain.engines.state import make_deterministic
from dualtrain.run import train
from tests.backend.conftest import BACKEND, make_settings


def _noisy_model() -> keras.Model:
    inputs = keras.Input(shape=(8, 8, 3))
    x = keras.layers.RandomFlip("horizontal", seed=1)(inputs)  # augmentation: left on
    x = keras.layers.GaussianNoise(0.2)(x)
    x = keras.layers.SpatialDropout2D(0.3)(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.GaussianDropout(0.2)(x)
    # A nested model: its Dropout is found too.
    inner = keras.Sequential([keras.layers.Dense(16), keras.layers.Dropout(0.4)], name="head")
    x = inner(x)
    x = keras.layers.AlphaDropout(0.1)(x)
    return keras.Model(inputs, keras.layers.Dense(3)(x))


def test_noise_layers_are_switched_off_and_reported() -> None:
    model = _noisy_model()
    changed, left = make_deterministic(model)
    found = {
        c["class"]: {k: v for k, v in c.items() if k not in ("layer", "class")} for c in changed
    }
    assert found == {
        "GaussianNoise": {"stddev": 0.2},
        "SpatialDropout2D": {"rate": 0.3},
        "GaussianDropout": {"rate": 0.2},
        "Dropout": {"rate": 0.4},
        "AlphaDropout": {"rate": 0.1},
    }
    assert left == [f"{model.layers[1].name} (RandomFlip)"]


def test_without_noise_training_and_inference_give_the_same_outputs() -> None:
    inputs = keras.Input(shape=(12,))
    x = keras.layers.GaussianNoise(0.5)(inputs)
    x = keras.layers.Dense(32, activation="relu")(x)
    x = keras.layers.Dropout(0.5)(x)
    model = keras.Model(inputs, keras.layers.Dense(4)(x))
    batch = np.random.default_rng(0).normal(size=(16, 12)).astype("float32")

    def outputs(training: bool) -> np.ndarray:
        return keras.ops.convert_to_numpy(model(batch, training=training))

    assert not np.allclose(outputs(True), outputs(False))  # the noise is real before the switch
    make_deterministic(model)
    np.testing.assert_array_equal(outputs(True), outputs(False))


def _framework_deterministic() -> bool:
    if BACKEND == "torch":
        import torch

        return torch.are_deterministic_algorithms_enabled()
    return compat.tf_op_determinism_enabled()


def test_trainer_deterministic_turns_the_frameworks_switch_on_and_runs_repeat_to_the_bit(
    tmp_path: Path,
) -> None:
    # The cnn (convolutions, Dropout) on a small synthetic set: 2 epochs, a loss every step.
    small = ["data=synthetic", "data.num_samples=256", "trainer.max_epochs=2"]
    small += ["trainer.log_every_n_steps=1", "checkpoint.every_n_epochs=0"]
    try:
        runs = []
        for name in ("a", "b"):
            train(make_settings(tmp_path / name, *small, "trainer.deterministic=true"))
            assert _framework_deterministic()
            lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
            runs.append([json.loads(x)["loss"] for x in lines if json.loads(x)["split"] == "train"])
        assert len(runs[0]) == 8  # 2 epochs x 4 batches of the 205 training samples
        assert runs[0] == runs[1]  # to the bit: the point of the switch
    finally:
        # false turns the process-wide switch back off (and leaves it off for the other tests)
        train(
            make_settings(
                tmp_path / "c", *small, "trainer.max_steps=1", "trainer.deterministic=false"
            )
        )
        assert not _framework_deterministic()
