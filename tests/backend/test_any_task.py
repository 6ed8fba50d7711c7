"""Any task, on this process's backend: the kinds of model and data a researcher brings.

Each recipe of tests/backend/users/ trains with its own data source (data=python): float
regression targets, multi-hot targets, token ids, a subclassed model with BatchNorm, two named
inputs and outputs, and no targets at all.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dualtrain.data import load_data
from dualtrain.engines import engine_class
from dualtrain.errors import RunError
from dualtrain.recipe import load_recipe
from dualtrain.run import train
from tests.backend.conftest import BACKEND, make_settings
from tests.backend.users import recipe_overrides

# Each recipe's val metrics after its epochs, seed 0 (measured on both backends, in brackets):
# thresholds leave room for the other backend's numerics and nothing more.
CASES = {
    # R2 0.49 (torch) and 0.48 (tf) after 30 epochs; predicting the mean gives 0.
    "regression": (["trainer.max_epochs=30"], {"r2": (">=", 0.4), "mae": ("<=", 0.55)}),
    # 1.00 on both: three well-separated blobs.
    "subclassed": (["trainer.max_epochs=5"], {"accuracy": (">=", 0.95)}),
    # 1.00 on both with lr 0.01; half the sequences hold token 1, so chance is about 0.5.
    "tokens": (
        ["trainer.max_epochs=10", "optimizer.lr=0.01"],
        {"accuracy": (">=", 0.95)},
    ),
    # kind: 0.77 (torch), 0.83 (tf), majority class about 0.55; value: MAE 0.24 and 0.20, while
    # predicting the mean gives about 1.9.
    "two_towers": (
        ["trainer.max_epochs=10"],
        {"kind/accuracy": (">=", 0.7), "value/mae": ("<=", 0.5)},
    ),
    # AUC 0.827 on both (macro over 4 labels); 0.5 is chance.
    "multilabel": (["trainer.max_epochs=10"], {"auc": (">=", 0.78)}),
    # Reconstruction MSE 0.30 (torch), 0.018 (tf) from about 3 (the data's variance per feature).
    "denoise": (["trainer.max_epochs=10", "optimizer.lr=0.01"], {"loss": ("<=", 0.6)}),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_a_user_recipe_trains_and_logs_its_metrics(name: str, tmp_path: Path) -> None:
    overrides, expected = CASES[name]
    summary = train(make_settings(tmp_path, *recipe_overrides(name, *overrides)))
    assert summary["status"] == "completed"
    val = summary["final"]["val"]
    assert set(val) == {"loss", *expected}, val
    for metric, (op, bound) in expected.items():
        assert (val[metric] >= bound) if op == ">=" else (val[metric] <= bound), (metric, val)
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert {key for x in lines if x["split"] == "val" for key in x} >= set(expected)


def test_token_ids_reach_the_model_as_integers(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, *recipe_overrides("tokens"))
    data = load_data(settings.data, settings.seed)
    assert data.info.input_shape == (12,)
    assert data.info.inputs[0].dtype == "int32"  # the source gave int64: int32 on both
    assert (data.info.task, data.info.num_classes) == ("classification", 2)
    engine = engine_class(BACKEND)(settings, load_recipe(settings.recipe), data)
    x, y = next(iter(engine.train_batches(0)))
    assert "int32" in str(x.dtype) and "int32" in str(y.dtype)


def test_named_inputs_and_outputs_are_described_and_batched_by_name(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, *recipe_overrides("two_towers"))
    data = load_data(settings.data, settings.seed)
    info = data.info
    assert (info.input_kind, info.target_kind) == ("dict", "dict")
    assert info.input("category").dtype == "int32"
    assert (info.target("kind").task, info.target("kind").num_classes) == ("classification", 2)
    assert (info.target("value").task, info.target("value").shape) == ("regression", (1,))
    with pytest.raises(RunError, match=r"the data has 2 inputs \['numbers', 'category'\]"):
        _ = info.input_shape
    engine = engine_class(BACKEND)(settings, load_recipe(settings.recipe), data)
    x, y = next(iter(engine.train_batches(0)))
    assert set(x) == {"numbers", "category"} and set(y) == {"kind", "value"}
    first = data.train.batches(settings.data.batch_size, seed=settings.seed)[0]
    np.testing.assert_array_equal(np.asarray(x["category"]), data.train.x["category"][first])


def test_no_targets_reach_the_phases_as_none(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, *recipe_overrides("denoise"))
    data = load_data(settings.data, settings.seed)
    assert (data.train.y, data.info.targets, data.info.task) == (None, (), "none")
    engine = engine_class(BACKEND)(settings, load_recipe(settings.recipe), data)
    engine.train_step([next(iter(engine.train_batches(0)))])  # the phase asserts y is None
    assert np.isfinite(engine.evaluate(max_batches=1)["loss"])


def test_loss_weights_scale_each_outputs_loss(tmp_path: Path) -> None:
    """The two-output loss is the weighted sum of the per-output losses (recipe.loss_weights)."""
    import keras

    settings = make_settings(tmp_path, *recipe_overrides("two_towers"))
    data = load_data(settings.data, settings.seed)
    recipe = load_recipe(settings.recipe)
    weighted = engine_class(BACKEND)(
        settings,
        type(recipe)(recipe.name, recipe.module, {}, loss_weights={"value": 0.0}),
        data,
    )
    x, y = next(iter(weighted.val_batches()))
    y_pred = weighted.model(x, training=False)
    assert weighted.state.loss_fn is not None
    total = float(keras.ops.convert_to_numpy(weighted.state.loss_fn(y, y_pred)))
    kind = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y["kind"], y_pred["kind"])
    assert total == pytest.approx(float(keras.ops.convert_to_numpy(kind)), rel=1e-6)


# -- data that is not a set of arrays -------------------------------------------------------------

STREAMED = [
    *recipe_overrides("streamed"),
    "data.source=tests.backend.users.streamed:load_data",
    "+data.num_classes=3",
    "logger=jsonl",
    "trainer.log_every_n_steps=1",
]


@pytest.mark.slow
@pytest.mark.parametrize("source", ["load_data", "load_generated"])
def test_a_pydataset_or_a_function_of_batches_trains(
    source: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="dualtrain")
    settings = make_settings(
        tmp_path, *STREAMED, f"data.source=tests.backend.users.streamed:{source}",
        "trainer.max_epochs=3",
    )  # fmt: skip
    summary = train(settings)
    # Three blobs two units apart in 6 dimensions: 0.93 (torch) and 0.83-0.94 (tf) after 36
    # steps; a third is chance.
    assert summary["final"]["val"]["accuracy"] >= 0.75
    assert summary["steps"] == 36  # 12 batches an epoch: the source's own count
    assert "12 train / 3 val batches" in caplog.text


def test_batches_of_many_sizes_train_with_a_bounded_number_of_traces(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path, *STREAMED, "data.source=tests.backend.users.streamed:load_varied",
        "trainer.max_epochs=2",
    )  # fmt: skip
    engine = engine_class(BACKEND)(settings, load_recipe(settings.recipe), load_data(
        settings.data, settings.seed
    ))  # fmt: skip
    sizes = []
    for epoch in range(2):
        for batch in engine.train_batches(epoch):
            sizes.append(len(batch[0]))
            engine.train_step([batch])
    assert sorted(set(sizes)) == list(range(20, 32)) and len(sizes) == 24
    loss = engine.train_metrics()["loss"]
    assert np.isfinite(loss) and loss < 1.2  # ln 3 = 1.10 is chance; learning has begun
    if BACKEND == "tf":
        from dualtrain.engines.tensorflow import STATIC_BATCH_SIZES

        # The first sizes get a static batch dimension each, then one trace serves the rest.
        traced = [sizes for what, _, sizes in engine._traced if what == "train"]
        assert traced[:STATIC_BATCH_SIZES] == [(n,) for n in sizes[:STATIC_BATCH_SIZES]]
        assert traced[STATIC_BATCH_SIZES:] == [(None,)]


@pytest.mark.slow
def test_a_pydataset_resumed_mid_epoch_serves_the_same_batches(tmp_path: Path) -> None:
    """The dataset reshuffles its batches from its own seed in on_epoch_end; a run stopped mid
    epoch 1 and resumed in a new dataset object logs the uninterrupted run's losses, exactly."""
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    train(make_settings(whole, *STREAMED, "trainer.max_epochs=2"))
    train(make_settings(parts, *STREAMED, "trainer.max_epochs=2", "trainer.max_steps=17"))
    train(make_settings(parts, *STREAMED, "trainer.max_epochs=2", "checkpoint.resume=auto"))
    from tests.backend.test_training import losses

    assert len(losses(whole)) == 24
    assert losses(parts) == losses(whole)


def test_a_batch_source_is_checked_batch_by_batch(tmp_path: Path) -> None:
    from tests.backend.users import streamed

    settings = make_settings(tmp_path, *STREAMED)
    data = load_data(settings.data, settings.seed)
    assert (data.info.input_shape, data.info.num_classes) == ((6,), 3)
    assert data.train.num_batches(999) == 12
    x, y = next(data.train.epoch(0))
    assert (x.shape, y.dtype) == ((32, 6), np.int32)  # int64 labels typed as class indices
    original = streamed.blob_batch

    def with_nan(seed: int, index: int, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
        x, y = original(seed, index, size)
        if index == 1:
            x[3, 2] = np.nan
        return x, y

    streamed.blob_batch = with_nan  # type: ignore[assignment]
    try:
        with pytest.raises(
            RunError, match=r"\(batch 1\) NaN or Inf features, the first at sample 3"
        ):
            list(load_data(settings.data, settings.seed).train.epoch(0))
    finally:
        streamed.blob_batch = original  # type: ignore[assignment]


def test_layer_regularizers_add_to_the_loss(tmp_path: Path) -> None:
    """As in Keras's fit: the loss a step minimizes (and validation reports) includes the
    layers' regularization losses."""
    import keras

    settings = make_settings(tmp_path, *recipe_overrides("regression"), "+recipe.model.l2=0.5")
    data = load_data(settings.data, settings.seed)
    engine = engine_class(BACKEND)(settings, load_recipe(settings.recipe), data)
    x, y = next(iter(engine.val_batches()))
    y_pred = engine.model(x, training=False)
    assert engine.state.loss_fn is not None
    got = float(keras.ops.convert_to_numpy(engine.state.loss_fn(y, y_pred)))
    mse = float(keras.ops.convert_to_numpy(keras.losses.MeanSquaredError()(y, y_pred)))
    kernels = [
        keras.ops.convert_to_numpy(v.value) for v in engine.model.trainable_variables
        if v.path.endswith("kernel")
    ]  # fmt: skip
    penalty = 0.5 * sum(float(np.square(k).sum()) for k in kernels)
    assert len(kernels) == 2 and penalty > 1.0  # large enough to tell apart
    assert got == pytest.approx(mse + penalty, rel=1e-5)


# -- a target that does not fit the model, before the first step ----------------------------------


@pytest.mark.parametrize(
    "recipe,overrides,message",
    [
        # Vector targets against a one-number output: Keras's MSE would broadcast them.
        ("regression", ["+data.width=3", "+recipe.model.outputs=1"],
         r"the model outputs \(1,\) per sample, but the target has shape \(3,\) "
         r"\(regression\); MeanSquaredError needs them to be the same"),
        # Float labels are values, not classes: a classifier's builder is told so.
        ("subclassed", ["+data.as_float=true"], r"data.num_classes: the target is a regression "
         r"target \(float32\), which has no classes; give class labels as integers"),
        # Dict keys that name no input the recipe reads: the names it has, so the fix is plain.
        ("two_towers", ["+data.rename=true"], r"the data has no input 'numbers'; its inputs: "
         r"\['nums', 'category'\]"),
    ],
)  # fmt: skip
def test_a_target_or_input_that_does_not_fit_the_model_is_one_line(
    recipe: str, overrides: list[str], message: str, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, *recipe_overrides(recipe, *overrides))
    data = load_data(settings.data, settings.seed)
    with pytest.raises(RunError, match=message) as caught:
        engine_class(BACKEND)(settings, load_recipe(settings.recipe), data)
    assert "\n" not in str(caught.value)


@pytest.mark.slow
def test_a_per_output_metric_drives_checkpoints_and_early_stopping(tmp_path: Path) -> None:
    """`val/<output>/<metric>` names work wherever a metric is named: the best checkpoint by
    the value output's MAE, early stopping on the kind output's accuracy."""
    summary = train(
        make_settings(
            tmp_path, *recipe_overrides("two_towers"), "trainer.max_epochs=30",
            "checkpoint.monitor=val/value/mae", "checkpoint.mode=min", "checkpoint.save_top_k=2",
            "callbacks=early_stopping", "callbacks.early_stopping.monitor=val/kind/accuracy",
            "callbacks.early_stopping.mode=max", "callbacks.early_stopping.patience=2",
        )
    )  # fmt: skip
    assert summary["epochs"] < 30 and "early stopping" in summary["stop_reason"]
    best = json.loads((tmp_path / "checkpoints" / "best" / "trainer.json").read_text())
    assert best["monitor"] == "val/value/mae"
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    maes = [x["value/mae"] for x in lines if x["split"] == "val"]
    assert best["monitor_value"] == pytest.approx(min(maes))
