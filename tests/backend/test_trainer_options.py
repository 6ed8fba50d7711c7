"""Trainer options on this process's backend: lr schedules, gradient clipping and accumulation,
non-finite losses, limited epochs."""

from __future__ import annotations

import gc
import json
import math
from pathlib import Path
from typing import ClassVar

import keras
import numpy as np
import pytest

from dualtrain import compat
from dualtrain.callbacks import Callback, TrainingRun
from dualtrain.checkpoint import newest_checkpoints, read_checkpoint
from dualtrain.data import ArrayDataset, load_data
from dualtrain.engines import engine_class
from dualtrain.errors import RunError
from dualtrain.loop import frozen_heap, step_groups
from dualtrain.recipe import load_recipe
from dualtrain.run import train
from tests.backend.conftest import BACKEND, make_settings
from tests.backend.nonfinite import OVERFLOW_SAMPLE

SMALL = ["data=synthetic", "data.num_samples=320", "trainer.max_epochs=2", "logger=[jsonl]"]


def train_lines(run_dir: Path, key: str = "loss") -> list[float]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [line[key] for line in lines if line["split"] == "train"]


@pytest.mark.parametrize(
    "scheduler,expected",
    [
        ("scheduler=constant", lambda t: 0.01),
        (
            "scheduler=step scheduler.step_size=3 scheduler.gamma=0.5",
            lambda t: 0.01 * 0.5 ** (t // 3),
        ),
        # decay_steps null: the whole run, 8 steps here (2 epochs of 4 batches).
        ("scheduler=cosine", lambda t: 0.01 * 0.5 * (1 + math.cos(math.pi * min(t, 8) / 8))),
        (
            "scheduler=warmup_cosine scheduler.warmup_steps=4",
            lambda t: (
                0.01 * t / 4 if t <= 4 else 0.01 * 0.5 * (1 + math.cos(math.pi * (t - 4) / 4))
            ),
        ),
    ],
)
def test_lr_schedules_follow_their_formula_and_are_logged(
    scheduler: str, expected: object, tmp_path: Path
) -> None:
    train(
        make_settings(
            tmp_path, *SMALL, *scheduler.split(), "optimizer.lr=0.01", "trainer.log_every_n_steps=1"
        )
    )
    logged = train_lines(tmp_path, "lr")
    assert len(logged) == 8  # 256 train samples / 64 -> 4 batches per epoch
    # The lr logged at step t is the one the next update uses: the schedule at t steps done.
    # float32 schedule arithmetic: 1e-6 relative.
    for step, lr in enumerate(logged, start=1):
        assert lr == pytest.approx(expected(step), rel=1e-5, abs=1e-9), step  # type: ignore[operator]


@pytest.mark.parametrize("warmup", [0, 7])
def test_warmup_cosine_gives_kerass_values_and_keeps_the_step_in_a_graph(
    warmup: int, tmp_path: Path
) -> None:
    """scheduler=warmup_cosine: Keras's CosineDecay with warmup, to the bit, with the branch
    chosen on the device (Keras's ops.cond reads the step on the host on torch, and a captured
    step cannot replay that)."""
    from dualtrain.engines.state import WarmupCosine

    ours = WarmupCosine(0.01, warmup_steps=warmup, decay_steps=20, alpha=0.1)
    keras_schedule = keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=20, alpha=0.1, warmup_target=0.01, warmup_steps=warmup
    )
    for step in range(35):  # warmup, decay, and past its end
        got = keras.ops.convert_to_numpy(ours(step))
        assert got == keras.ops.convert_to_numpy(keras_schedule(step)), step
    if BACKEND != "torch":
        return
    settings = make_settings(tmp_path, *SMALL, "scheduler=warmup_cosine", "optimizer=adam")
    engine = engine_class(BACKEND)(
        settings, load_recipe(settings.recipe), load_data(settings.data, 0)
    )
    for batch in list(engine.train_batches(0))[:2]:
        engine.train_step([batch])
    assert engine.step_capture()["whole_step"] is True


def _one_sgd_step(tmp_path: Path, *overrides: str) -> tuple[float, int]:
    """The norm of the update that one plain SGD step (lr 1) makes, and the parameter count."""
    settings = make_settings(
        tmp_path, *SMALL, "optimizer=sgd", "optimizer.lr=1.0", "optimizer.momentum=0.0", *overrides
    )
    engine = engine_class(BACKEND)(
        settings, load_recipe(settings.recipe), load_data(settings.data, 0)
    )
    before = [keras.ops.convert_to_numpy(v.value).copy() for v in engine.state.trainable_variables]
    engine.train_step([next(iter(engine.train_batches(0)))])
    after = [keras.ops.convert_to_numpy(v.value) for v in engine.state.trainable_variables]
    deltas = [(a - b).astype(np.float64) for a, b in zip(after, before, strict=True)]
    return float(np.sqrt(sum(np.sum(d**2) for d in deltas))), sum(d.size for d in deltas)


def test_gradient_clipping_by_global_norm_and_by_value(tmp_path: Path) -> None:
    free, count = _one_sgd_step(tmp_path / "free")
    assert free > 0.5  # so that clipping to 0.1 changes something
    # lr 1: the update is the clipped gradient, whose global norm is the clip norm (float32).
    clipped, _ = _one_sgd_step(tmp_path / "norm", "trainer.grad_clip_norm=0.1")
    assert clipped == pytest.approx(0.1, rel=1e-4)
    # Every element moves by at most 1e-4: the norm is at most 1e-4 * sqrt(parameter count).
    by_value, _ = _one_sgd_step(tmp_path / "value", "trainer.grad_clip_value=1e-4")
    assert 0 < by_value <= 1e-4 * math.sqrt(count) * (1 + 1e-5)


def test_accumulated_batches_step_like_one_large_batch(tmp_path: Path) -> None:
    common = [*SMALL, "recipe.model.dropout=0.0", "trainer.log_every_n_steps=1"]
    train(make_settings(tmp_path / "large", *common, "data.batch_size=64"))
    summary = train(
        make_settings(
            tmp_path / "accum", *common, "data.batch_size=16", "trainer.grad_accum_steps=4"
        )
    )
    large, accumulated = train_lines(tmp_path / "large"), train_lines(tmp_path / "accum")
    # The batch order is one permutation cut into batches, so 4 batches of 16 hold the samples of
    # one of 64, and the steps and their counts match.
    assert summary["steps"] == len(large) == len(accumulated) == 8
    # Sums in another order: float32 rounding, grown over 8 Adam steps. Below 1e-5 on an AVX2
    # CPU; 1.75e-5 at the last step on an AVX-512 one (torch's CPU kernels sum in other orders
    # there): 5e-5 holds on both and still fails a step that differs in any real way.
    np.testing.assert_allclose(accumulated, large, rtol=5e-5)


def _nan_run(tmp_path: Path, *overrides: str):  # type: ignore[no-untyped-def]
    return make_settings(
        tmp_path, "recipe.name=nonfinite", "recipe.module=tests.backend.nonfinite", "~recipe.model",
        "data=python", "data.source=tests.backend.nonfinite:load_data", "data.batch_size=32",
        "trainer.max_epochs=2", "logger=[jsonl]", *overrides,
    )  # fmt: skip


def _nan_step(epoch: int) -> int:
    """The global step (5 per epoch) whose batch holds the overflowing sample, in the seeded
    order: step 3 in epoch 0, so steps 1 and 2 are good and checkpointed."""
    batches = ArrayDataset(np.zeros((160, 1)), np.zeros(160)).batches(32, seed=0, epoch=epoch)
    return epoch * 5 + next(i for i, b in enumerate(batches) if OVERFLOW_SAMPLE in b) + 1


def test_a_nonfinite_loss_stops_the_run_before_a_checkpoint_holds_it(tmp_path: Path) -> None:
    settings = _nan_run(tmp_path, "checkpoint.every_n_steps=1")
    bad = _nan_step(0)
    with pytest.raises(RunError) as err:
        train(settings)
    assert str(err.value).startswith(
        f"the loss was NaN or Inf at step {bad} (trainer.on_nonfinite=stop); the run stops"
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["skipped_steps"] == 1
    saved = newest_checkpoints(tmp_path / "checkpoints")
    assert saved and read_checkpoint(saved[0]).step == bad - 1  # the last good step
    for name, value in read_checkpoint(saved[0]).model.items():
        assert np.all(np.isfinite(value)), name


def test_skip_leaves_the_weights_as_they_were_and_counts_the_steps(tmp_path: Path) -> None:
    summary = train(_nan_run(tmp_path, "trainer.on_nonfinite=skip", "trainer.log_every_n_steps=1"))
    assert summary["status"] == "completed" and summary["steps"] == 10
    assert summary["skipped_steps"] == 2  # the overflowing sample's batch, once per epoch
    assert all(math.isfinite(v) for v in summary["final"]["val"].values())
    # Only finite steps reach the logged loss.
    assert all(math.isfinite(v) for v in train_lines(tmp_path))


@pytest.mark.parametrize("limit,steps", [("2", 4), ("0.5", 4)])
def test_limit_train_batches(limit: str, steps: int, tmp_path: Path) -> None:
    # 256 train samples / 64: 4 batches per epoch; 2 of them, or half of them.
    summary = train(make_settings(tmp_path, *SMALL, f"trainer.limit_train_batches={limit}"))
    assert (summary["steps"], summary["epochs"]) == (steps, 2)


def test_early_stopping_ends_the_run_when_the_metric_stalls(tmp_path: Path) -> None:
    # min_delta 10: after the first validation nothing counts as an improvement, so with
    # patience 2 the run stops after the 3rd epoch of 6.
    summary = train(
        make_settings(
            tmp_path,
            *SMALL,
            "trainer.max_epochs=6",
            "callbacks=early_stopping",
            "callbacks.early_stopping.patience=2",
            "callbacks.early_stopping.min_delta=10",
        )
    )
    assert summary["status"] == "completed" and summary["epochs"] == 3
    assert summary["stop_reason"].startswith(
        "early stopping: val/loss did not improve by more than 10 for 2 validations"
    )


class Recorder(Callback):
    """Records the hooks the loop calls, in order."""

    calls: ClassVar[list[tuple[str, ...]]] = []
    frozen: ClassVar[list[int]] = []  # objects the garbage collector leaves alone, at each step

    def __init__(self, tag: str) -> None:
        self.tag = tag

    def on_train_begin(self, run: TrainingRun) -> None:
        self.calls.append((self.tag, "train_begin", str(run.state.step)))

    def on_epoch_begin(self, run: TrainingRun, epoch: int) -> None:
        self.calls.append(("epoch_begin", str(epoch)))

    def on_step_end(self, run: TrainingRun, epoch_ends: bool) -> None:
        self.calls.append(("step_end", str(run.state.step), str(epoch_ends)))
        self.frozen.append(gc.get_freeze_count())

    def on_validation_end(self, run: TrainingRun, metrics: dict[str, float]) -> None:
        self.calls.append(("validation_end", *sorted(metrics)))

    def on_epoch_end(self, run: TrainingRun, epoch: int) -> None:
        self.calls.append(("epoch_end", str(epoch)))

    def on_train_end(self, run: TrainingRun) -> None:
        self.calls.append(("train_end", str(run.state.step)))


def test_a_callback_from_config_sees_every_hook_in_order(tmp_path: Path) -> None:
    Recorder.calls.clear()
    Recorder.frozen.clear()
    train(
        make_settings(
            tmp_path,
            *SMALL,
            f"+callbacks.recorder._target_={__name__}.Recorder",
            "+callbacks.recorder.tag=mine",
        )
    )

    def epoch(first: int) -> list[tuple[str, ...]]:
        return [("step_end", str(s), str(s % 4 == 0)) for s in range(first, first + 4)]

    assert Recorder.calls == [
        ("mine", "train_begin", "0"),
        ("epoch_begin", "0"), *epoch(1), ("validation_end", "accuracy", "loss"), ("epoch_end", "0"),
        ("epoch_begin", "1"), *epoch(5), ("validation_end", "accuracy", "loss"), ("epoch_end", "1"),
        ("train_end", "8"),
    ]  # fmt: skip
    # The steps ran with the objects made before training frozen (loop.frozen_heap: the
    # frameworks alone are 100,000s), and the process has them back after.
    assert len(Recorder.frozen) == 8 and min(Recorder.frozen) > 100_000
    assert gc.get_freeze_count() == 0


def test_frozen_heap_unfreezes_after_a_failure_and_leaves_a_callers_freeze_alone() -> None:
    with pytest.raises(RuntimeError), frozen_heap():
        assert gc.get_freeze_count() > 0
        raise RuntimeError("a failed step")
    assert gc.get_freeze_count() == 0
    gc.freeze()  # the caller's own (e.g. before forking workers)
    try:
        count = gc.get_freeze_count()
        with frozen_heap():
            pass
        assert gc.get_freeze_count() == count
    finally:
        gc.unfreeze()


def test_fast_dev_run_trains_two_batches_and_writes_nothing(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    summary = train(make_settings(run_dir, "debug=fast_dev_run"))
    assert (summary["status"], summary["steps"], summary["epochs"]) == ("completed", 2, 1)
    assert math.isfinite(summary["final"]["val"]["loss"])
    assert list(run_dir.iterdir()) == []  # no metrics, TensorBoard files, checkpoints, summary


def test_overfit_learns_a_few_batches_by_heart(tmp_path: Path) -> None:
    # The cnn on 4 fixed batches of digits, 25 epochs (100 steps). Measured final train loss:
    # torch 0.026, tf 0.020 (from 2.3 at the start); below 0.1 means it learns them.
    summary = train(make_settings(tmp_path, "debug=overfit", "trainer.max_epochs=25"))
    assert summary["steps"] == 100
    assert summary["final"]["train"]["loss"] < 0.1


def test_steps_per_execution_trains_the_same_steps(tmp_path: Path) -> None:
    common = [*SMALL, "trainer.max_epochs=3", "trainer.log_every_n_steps=2"]
    train(make_settings(tmp_path / "one", *common))
    summary = train(make_settings(tmp_path / "two", *common, "backend.steps_per_execution=2"))
    # 4 steps per epoch in calls of 2 (on tf one graph each): the same steps, the same values.
    assert summary["steps"] == 12
    np.testing.assert_allclose(
        train_lines(tmp_path / "two"), train_lines(tmp_path / "one"), rtol=1e-6
    )


@pytest.mark.parametrize(
    "accum,histograms,xla",
    [
        (1, True, False),
        (2, False, False),
        # XLA is tf's (on torch, jit_compile is torch.compile: minutes of compiling here).
        pytest.param(
            1, False, True, marks=pytest.mark.skipif(BACKEND != "tf", reason="XLA: tf only")
        ),
    ],
)
def test_calls_of_several_steps_of_any_length_give_the_steps_one_by_one(
    tmp_path: Path, accum: int, histograms: bool, xla: bool
) -> None:
    # The loop gives calls of any length (calls end at multiples of steps_per_execution, epochs
    # need not), and an epoch's last batch may be smaller: calls of 3, 1 and 2 steps, then the
    # rest of the epoch (200 train samples: 16 batches of 12, and 8 last).
    settings = make_settings(
        tmp_path, "data=synthetic", "data.num_samples=250", "data.batch_size=12",
        f"trainer.grad_accum_steps={accum}", "logger=[tensorboard]",
        f"logger.histograms_every={int(histograms)}",
        # With XLA, each call's stack is padded to steps_per_execution steps (of which the
        # call's run): one shape, compiled once.
        *(["backend.jit_compile=true", "backend.steps_per_execution=16",
           "trainer.log_every_n_steps=16"] if xla else []),
    )  # fmt: skip
    engines = [
        engine_class(BACKEND)(settings, load_recipe(settings.recipe), load_data(settings.data, 0))
        for _ in range(2)
    ]
    groups = list(step_groups(engines[0].train_batches(0), accum))
    assert [engines[0].batch_size(b) for b in groups[-1]][-1] == 8  # the smaller last batch
    calls = [groups[:3], groups[3:4], groups[4:6], groups[6:]]
    assert len(calls[-1]) >= 2
    # Each engine from the same framework RNG state (torch's Dropout draws from the process's).
    rng = engines[0].framework_rng_state()
    for call in calls:
        engines[0].train_steps(call)
    if rng is not None:
        engines[1].restore_framework_rng_state(rng)
    for group in groups:
        engines[1].train_step(group)
    together, one_by_one = (e.state.checkpoint_arrays() for e in engines)
    # float32 round-off at most: the same ops in another graph (a loop on tf), which XLA fuses
    # otherwise than one step (measured over these 17 steps: at most 1e-5 relative, 6e-7 absolute).
    rtol, atol = (5e-5, 2e-6) if xla else (1e-6, 1e-7)
    for arrays, expected in zip(together, one_by_one, strict=True):
        assert arrays.keys() == expected.keys()
        for path, value in arrays.items():
            np.testing.assert_allclose(value, expected[path], rtol=rtol, atol=atol, err_msg=path)
    # The last step's gradients, for histograms, from the call that ended with it.
    arrays = [e.histograms() for e in engines]
    gradients = [k for k in arrays[1] if k.startswith("gradients/")]
    assert bool(gradients) == histograms
    for key in gradients:
        np.testing.assert_allclose(arrays[0][key], arrays[1][key], rtol=1e-6, atol=1e-7)
    if BACKEND == "tf":
        # One graph serves every call of 2 or more full-size steps, whatever their number.
        assert [key[0] for key in engines[0]._traced].count("steps") == 1


def test_a_recipe_with_its_own_step_learns_on_this_backend(tmp_path: Path) -> None:
    # The autoencoder's one phase: reconstruction error. Measured val MSE after 5 epochs:
    # 0.0205 on torch, 0.0204 on tf; predicting the mean image gives 0.073.
    summary = train(make_settings(tmp_path, "recipe=autoencoder", "trainer.max_epochs=5"))
    assert summary["final"]["val"]["loss"] < 0.03
    assert set(summary["final"]["val"]) == {"loss", "mae"}


def test_phases_train_their_own_variables_with_their_own_optimizers(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path, *SMALL, "recipe.name=two_phases", "recipe.module=tests.backend.two_phases",
        "~recipe.model", "trainer.log_every_n_steps=4",
    )  # fmt: skip
    data = load_data(settings.data, settings.seed)
    engine = engine_class(BACKEND)(settings, load_recipe(settings.recipe), data)
    before = {v.path: keras.ops.convert_to_numpy(v.value).copy() for v in engine.model.variables}
    for batch in engine.train_batches(0):
        engine.train_step([batch])
    after = {v.path: keras.ops.convert_to_numpy(v.value) for v in engine.model.variables}
    moved = {path for path in before if not np.array_equal(before[path], after[path])}
    # Each phase updates its layer only; the layer in no phase stays as it was.
    assert moved == {"first/kernel", "first/bias", "second/kernel", "second/bias"}
    _, optimizer_arrays = engine.state.checkpoint_arrays()
    assert {p.split("/")[0] for p in optimizer_arrays} == {"first_optimizer", "second_optimizer"}
    assert [float(o.learning_rate) for o in engine.state.optimizers] == pytest.approx([0.002, 0.01])
    values = engine.train_metrics()
    # The step's loss is the phases' sum; each phase's mean is logged under its name.
    assert values["loss"] == pytest.approx(values["first_loss"] + values["second_loss"], rel=1e-5)


@pytest.mark.parametrize("in_place", [True, False], ids=["in_place", "keras_update_state"])
def test_the_logged_loss_is_the_sample_weighted_mean_of_the_steps_losses(
    in_place: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not in_place:
        if BACKEND != "torch":
            pytest.skip("the tf engine always updates the means with Keras's update_state")
        monkeypatch.setattr(compat, "mean_accumulators", lambda metric: None)
    settings = make_settings(tmp_path, *SMALL, "data.batch_size=48", "recipe.model.dropout=0")
    data = load_data(settings.data, settings.seed)
    engine = engine_class(BACKEND)(settings, load_recipe(settings.recipe), data)
    phase = engine.state.phases[0]  # the recipe's own loss, not the engine's compiled step
    batches = list(engine.train_batches(0))
    sizes = [engine.batch_size(batch) for batch in batches]
    assert sizes == [48] * 5 + [16]  # 256 train samples: a short last batch weighs less
    losses = []
    for x, y in batches:
        # each step's loss, from the weights before it, outside the step
        losses.append(float(keras.ops.convert_to_numpy(phase.loss(engine.model, x, y, True))))
        engine.train_step([(x, y)])
    assert len(set(losses)) == len(losses)  # the steps' losses differ: the weights matter
    # float32 sums of six terms; the step's own loss differs from the reference by float32
    # rounding (a compiled graph on tf, a captured one on torch): 1e-5 relative covers both
    assert engine.train_metrics()["loss"] == pytest.approx(np.average(losses, weights=sizes), 1e-5)
    assert engine.nonfinite_at_read == (0, None)
    assert engine.train_metrics()["loss"] == 0.0  # a read resets the mean: no step since


@pytest.mark.parametrize(
    "precision,dtype", [("mixed_bfloat16", "bfloat16"), ("mixed_float16", "float16")]
)
def test_mixed_precision_computes_in_16_bits_and_learns(
    precision: str, dtype: str, tmp_path: Path
) -> None:
    settings = make_settings(
        tmp_path, *SMALL, "recipe=mlp", "trainer.max_epochs=4", f"backend.precision={precision}"
    )
    try:
        summary = train(settings)
        engine = engine_class(BACKEND)(
            settings, load_recipe(settings.recipe), load_data(settings.data, 0)
        )
    finally:
        keras.config.set_dtype_policy("float32")  # the policy is per process
    dense = next(layer for layer in engine.model.layers if layer.name.startswith("dense"))
    assert (dense.compute_dtype, dense.variable_dtype) == (dtype, "float32")
    losses = train_lines(tmp_path)
    assert all(math.isfinite(v) for v in losses)
    # It learns as float32 does. Measured after 4 epochs (train loss from ~2.5; val accuracy,
    # chance 0.1): float32 1.82-1.87 / 0.42-0.50; bfloat16 1.82-1.86 / 0.44-0.45; float16
    # 1.82-1.84 / 0.44-0.48, on torch and tf.
    assert losses[-1] < 0.8 * losses[0] and summary["final"]["val"]["accuracy"] > 0.3
    if precision == "mixed_float16":
        assert all(type(o).__name__ == "LossScaleOptimizer" for o in engine.state.optimizers)
