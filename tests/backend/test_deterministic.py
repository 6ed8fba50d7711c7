"""Parity mode's switch-off of random layers, on this process's backend."""

from __future__ import annotations

import keras
import numpy as np

from dualtrain.engines.state import make_deterministic


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
