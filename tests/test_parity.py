"""mode=parity: both backends, one start, the same batches; the report and the exit code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.backend.users import recipe_overrides
from tests.conftest import REPO, probe_cli, read_jsonl, run_cli

# Every test here trains both backends in subprocesses: the full suite only.
pytestmark = pytest.mark.slow

# The bench_* recipes are benchmark workloads (docs/performance.md) built from the same layers as
# the others, without random layers; the harness smoke test runs bench_cnn on both backends.
SHIPPED_RECIPES = sorted(
    p.stem
    for p in (REPO / "dualtrain" / "configs" / "recipe").glob("*.yaml")
    if not p.stem.startswith("bench_")
)
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("recipe", SHIPPED_RECIPES)
def test_every_shipped_recipe_agrees_across_backends(recipe: str, tmp_path: Path) -> None:
    """The CI guard: if the engines drift apart, this fails for the recipe that shows it."""
    steps = 40
    result, imported = probe_cli(
        "mode=parity", f"recipe={recipe}", f"parity.steps={steps}", f"hydra.run.dir={tmp_path}",
        tmp_path=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    # The parity run itself only starts and compares; each backend runs in a process of its own.
    assert imported == {"code": 0, "torch": False, "tensorflow": False}
    report = json.loads((tmp_path / "parity.json").read_text())
    assert report["status"] == "passed" and report["recipe"] == recipe
    assert report["backends"] == ["torch", "tf"]  # the chosen backend (default torch) first
    # parity.rtol's default, 1e-5: float32 rounding (~1e-7 per step) grown over a few dozen steps
    # stays below 1e-6 on both recipes here; the margin is for other CPUs.
    assert report["rtol"] == 1e-5
    assert report["max_rel_diff"] <= 1e-5
    assert report["first_step_over_rtol"] is None
    losses = report["losses"]
    assert len(losses["torch"]) == len(losses["tf"]) == steps
    assert losses["torch"][-1] < losses["torch"][0]  # it trained
    # The same start: step 1's losses, from the shared initial weights, agree to float32 rounding.
    assert abs(losses["torch"][0] - losses["tf"][0]) <= 1e-6 * losses["torch"][0]
    for backend in ("torch", "tf"):
        assert report["train_samples_per_sec"][backend] > 0
        assert set(report["final_val"][backend]) == set(report["final_val"]["torch"])
        lines = read_jsonl(tmp_path / backend / "metrics.jsonl")
        train = [ln for ln in lines if ln["split"] == "train"]
        assert [ln["step"] for ln in train] == list(range(1, steps + 1))
        assert [ln["loss"] for ln in train] == losses[backend]
    # Final val metrics of the two agree as closely as the losses that led to them.
    assert report["final_val"]["torch"]["loss"] == pytest.approx(
        report["final_val"]["tf"]["loss"], rel=1e-4
    )
    # Dropout would draw different masks on each backend, the gan's noise different codes:
    # switched off, and said so.
    noisy = {"cnn": "Dropout", "mlp": "Dropout", "gan": "LatentNoise"}
    assert all(c["class"] == noisy[recipe] for c in report["made_deterministic"])
    assert bool(report["made_deterministic"]) == (recipe in noisy)
    assert bool(report["made_deterministic"]) == (
        "switched off for the comparison" in result.stdout
    )
    assert report["stochastic_layers"] == []
    assert report["environment"] == {"tf": {"TF_ENABLE_ONEDNN_OPTS": "1"}}
    assert report["initial_weights"]["built_by"] == "torch"
    assert (tmp_path / "init" / "model.npz").is_file()
    assert (tmp_path / "parity.png").read_bytes().startswith(PNG)
    assert "PASSED" in result.stdout


_USER_RECIPE = """
import keras


class Jitter(keras.layers.Layer):
    '''Adds noise in training from its own seed generator: parity cannot switch it off.'''

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.seed_generator = keras.random.SeedGenerator(1)

    def call(self, x, training=False):
        if not training:
            return x
        return x + keras.random.normal(keras.ops.shape(x), stddev=0.05, seed=self.seed_generator)


def build_model(data, jitter=False, noise=0.0):
    inputs = keras.Input(shape=data.input_shape)
    x = keras.layers.Flatten()(inputs)
    if jitter:
        x = Jitter(name="jitter")(x)
    x = keras.layers.GaussianNoise(noise)(x)
    x = keras.layers.Dense(32, activation="relu")(x)
    x = keras.layers.Dropout(0.5)(x)
    return keras.Model(inputs, keras.layers.Dense(data.num_classes)(x))


def loss(skew=1.0):
    base = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    # skew != 1 stands for an engine bug: the tf side computes a slightly different loss.
    scale = skew if keras.backend.backend() == "tensorflow" else 1.0
    return lambda y_true, y_pred: base(y_true, y_pred) * scale
"""


def _user_parity(tmp_path: Path, *overrides: str, skew: float = 1.0):  # type: ignore[no-untyped-def]
    user = tmp_path / "recipes"
    (user / "recipe").mkdir(parents=True)
    (user / "recipe" / "small.yaml").write_text(
        "# @package _global_\nrecipe:\n  name: small\n  module: small_recipe\n"
    )
    (user / "small_recipe.py").write_text(_USER_RECIPE.replace("skew=1.0", f"skew={skew}"))
    run_dir = tmp_path / "run"
    result = run_cli(
        "--config-dir", str(user), "recipe=small", "mode=parity", "parity.steps=20",
        "data=synthetic", "data.num_samples=512", "backend=tf", f"hydra.run.dir={run_dir}",
        *overrides,
    )  # fmt: skip
    return result, run_dir


def test_noise_layers_are_switched_off_and_the_backends_agree(tmp_path: Path) -> None:
    result, run_dir = _user_parity(tmp_path, "+recipe.model.noise=0.3")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((run_dir / "parity.json").read_text())
    assert report["backends"] == ["tf", "torch"] and report["initial_weights"]["built_by"] == "tf"
    switched = {c["class"]: c for c in report["made_deterministic"]}
    assert switched["GaussianNoise"]["stddev"] == pytest.approx(0.3)
    assert switched["Dropout"]["rate"] == 0.5
    assert report["max_rel_diff"] <= 1e-5  # parity.rtol's default; see the test above


def test_a_random_layer_parity_cannot_switch_off_is_named_and_fails_the_run(
    tmp_path: Path,
) -> None:
    result, run_dir = _user_parity(tmp_path, "+recipe.model.jitter=true")
    assert result.returncode == 1
    assert "random layers left on (they differ by backend): jitter (Jitter)" in result.stdout
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("dualtrain: error: parity failed: the per-step losses differ by up to")
    assert "Traceback" not in result.stderr
    report = json.loads((run_dir / "parity.json").read_text())
    assert report["status"] == "failed" and report["stochastic_layers"] == ["jitter (Jitter)"]


def test_a_small_difference_between_the_engines_fails_from_the_first_step(
    tmp_path: Path,
) -> None:
    # A loss 0.01% larger on one backend: ten times parity.rtol, caught at step 1.
    result, run_dir = _user_parity(tmp_path, skew=1.0001)
    assert result.returncode == 1
    report = json.loads((run_dir / "parity.json").read_text())
    assert report["status"] == "failed"
    assert report["first_step_over_rtol"] == 1
    assert report["relative_differences"][0] == pytest.approx(1e-4, rel=0.01)
    assert "from step 1 on" in result.stderr
    # What both sides wrote before the comparison failed is kept.
    for backend in ("torch", "tf"):
        summary = json.loads((run_dir / backend / "summary.json").read_text())
        assert (summary["status"], summary["steps"]) == ("completed", 20)
    assert (run_dir / "parity.png").read_bytes().startswith(PNG)


def test_a_failing_side_stops_parity_with_its_error(tmp_path: Path) -> None:
    result, run_dir = _user_parity(tmp_path, "+recipe.model.no_such_argument=1")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert any("build_model does not take the keys of recipe.model" in ln for ln in lines)
    assert lines[-1].startswith("dualtrain: error: parity: the tf run failed with exit code 1")
    assert not (run_dir / "parity.json").exists()


def test_a_pydataset_source_agrees_across_backends(tmp_path: Path) -> None:
    """Batches from a keras.utils.PyDataset read by two worker threads, reshuffled by the dataset
    each epoch: both backends see the same batches (measured: 4.8e-7 over 100 steps)."""
    result = run_cli(
        "mode=parity", "parity.steps=30", f"hydra.run.dir={tmp_path}",
        *recipe_overrides("streamed", "+data.num_classes=3"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "parity.json").read_text())
    assert report["status"] == "passed" and report["max_rel_diff"] <= 1e-5


def test_recurrent_layers_agree_across_backends(tmp_path: Path) -> None:
    """A bidirectional GRU (all outputs) into an LSTM: on torch one fused op per direction and
    layer (torch.nn's kernels, compat.fused_rnn), on tf Keras's own (measured: 1.1e-7 over 30
    steps)."""
    result = run_cli(
        "mode=parity", "parity.steps=30", f"hydra.run.dir={tmp_path}",
        *recipe_overrides("layers", "data.batch_size=64", "+recipe.model.kind=gru_lstm"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "parity.json").read_text())
    # parity.rtol's default (float32 rounding over a few dozen steps), as for the recipes above
    assert report["status"] == "passed" and report["max_rel_diff"] <= 1e-5
    assert report["losses"]["torch"][-1] < report["losses"]["torch"][0]  # it trained
