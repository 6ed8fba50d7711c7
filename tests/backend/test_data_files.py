"""The user's files on this process's backend: the native pipelines read what the files hold,
each format trains, augmentation touches training batches only, misfits are named."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from dualtrain.data import load_data
from dualtrain.engines import engine_class
from dualtrain.errors import RunError
from dualtrain.recipe import load_recipe
from dualtrain.run import evaluate, train
from tests.backend.conftest import make_settings
from tests.data_files import write_csv, write_image_folder, write_npy_folder

QUIET = ["logger=[jsonl]", "checkpoint.every_n_epochs=0"]


def numpy(tensor: object) -> np.ndarray:
    return np.asarray(tensor.cpu() if hasattr(tensor, "cpu") else tensor)  # type: ignore[attr-defined]


def engine_for(tmp_path: Path, *overrides: str):  # type: ignore[no-untyped-def]
    settings = make_settings(tmp_path, *overrides)
    data = load_data(settings.data, settings.seed)
    engine = engine_class(settings.backend.name)(settings, load_recipe(settings.recipe), data)
    return engine


def test_a_streamed_npy_folder_feeds_the_rows_of_the_file_and_trains(tmp_path: Path) -> None:
    folder = write_npy_folder(tmp_path / "npy")
    # One DataLoader worker on torch: the rows are read in another process (tf: tf.data's map).
    overrides = ["recipe=mlp", "data=npz", f"data.path={folder}", "data.num_workers=1", *QUIET]
    engine = engine_for(tmp_path / "engine", *overrides)
    x = np.load(folder / "x.npy")
    rows = engine.data.train.x.rows  # the file rows of the train split (80% of 300)
    order = engine.data.train.batches(32, seed=0, epoch=0)
    batches = list(engine.train_batches(0))
    assert len(batches) == len(order) == 8  # 240 / 32
    for batch, indices in zip(batches, order, strict=True):
        np.testing.assert_array_equal(numpy(batch[0]), x[rows[indices]])  # bit for bit
    # Training in the main process: worker start-ups would cost more than these reads.
    summary = train(
        make_settings(tmp_path / "run", *overrides, "trainer.max_epochs=4", "data.num_workers=0")
    )
    # Blobs: 0.98-1.0 in trials on both backends.
    assert summary["final"]["val"]["accuracy"] >= 0.95


def test_image_folder_trains_with_augmentation_on_training_batches_only(tmp_path: Path) -> None:
    images = write_image_folder(tmp_path / "images", per_class=24)
    overrides = [
        "recipe=cnn", "data=image_folder", f"data.path={images}", "data.image_size=[16,16]",
        "data.batch_size=8", "data.augmentation={flip: horizontal_and_vertical, zoom: 0.2}",
        "data.num_workers=1", *QUIET,
    ]  # fmt: skip
    engine = engine_for(tmp_path / "engine", *overrides)
    x, y = next(iter(engine.train_batches(0)))
    assert tuple(x.shape) == (8, 16, 16, 3)
    augmented = numpy(engine._augment([(x, y)])[0][0])
    assert augmented.shape == (8, 16, 16, 3)
    assert not np.allclose(augmented, numpy(x))  # flipped and zoomed
    # Validation sees the images as they are: the same metrics every time.
    assert engine.evaluate() == engine.evaluate()
    summary = train(
        make_settings(tmp_path / "run", *overrides, "trainer.max_epochs=5", "data.num_workers=0")
    )
    # Red against green pictures: 1.0 in trials on both backends.
    assert summary["final"]["val"]["accuracy"] >= 0.9


def test_csv_trains_and_eval_reads_the_data_with_the_checkpoints_transform(
    tmp_path: Path,
) -> None:
    path = write_csv(tmp_path / "t.csv")
    csv = ["recipe=mlp", "data=csv", f"data.path={path}", "data.target=kind", "logger=[jsonl]"]
    summary = train(
        make_settings(tmp_path / "run", *csv, "data.categorical=index", "trainer.max_epochs=5")
    )
    accuracy = summary["final"]["val"]["accuracy"]
    assert accuracy >= 0.95  # the label shows in all three columns: 0.98-1.0 in trials
    record = json.loads((tmp_path / "run/checkpoints/last/trainer.json").read_text())
    assert record["data_transform"]["columns"][2]["encoding"] == "index"
    # Eval is given another file with the same columns: it applies the stored transform (the
    # categorical setting included), it does not fit a new one.
    write_csv(path, seed=1)
    result = evaluate(make_settings(tmp_path / "eval", *csv, f"checkpoint.path={tmp_path}/run",
                                    "mode=eval"))  # fmt: skip
    assert result["samples"] == 60
    refit = load_data(make_settings(tmp_path / "x", *csv).data, seed=0)
    stored = load_data(make_settings(tmp_path / "x", *csv).data, 0, record["data_transform"])
    assert refit.val.x.shape == (60, 5) and stored.val.x.shape == (60, 3)  # one-hot vs index
    assert result["metrics"]["accuracy"] >= 0.9  # other rows of the same kind: 0.95-1.0


@pytest.fixture
def user_recipe(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A recipe of a user's whose model is built for 4 features and 2 classes, whatever the data."""
    (tmp_path / "fixed_recipe.py").write_text(
        textwrap.dedent("""
        import keras
        def build_model(data):
            inputs = keras.Input((4,))
            return keras.Model(inputs, keras.layers.Dense(2)(inputs))
        def loss():
            return keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        """)
    )
    sys.path.insert(0, str(tmp_path))
    yield "fixed_recipe"
    sys.path.remove(str(tmp_path))
    sys.modules.pop("fixed_recipe", None)


def test_data_that_does_not_fit_the_model_says_what_the_model_expects(
    tmp_path: Path, user_recipe: str
) -> None:
    path = write_csv(tmp_path / "t.csv")
    csv = ["data=csv", f"data.path={path}", "data.target=kind", *QUIET]
    with pytest.raises(RunError, match=r"recipe cnn takes images of shape \(height, width, "):
        train(make_settings(tmp_path / "a", "recipe=cnn", *csv))
    mine = [f"recipe.module={user_recipe}", "recipe.name=fixed", "~recipe.model"]
    with pytest.raises(RunError, match=r"inputs of shape \(None, 4\) but the data has samples of "):
        train(make_settings(tmp_path / "b", *mine, *csv))
    # 4 features (the one-hot colors dropped by index encoding), 3 classes: the model has 2.
    x = np.random.default_rng(0).normal(size=(60, 4)).astype("float32")
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(60) % 3)
    with pytest.raises(RunError, match="the model outputs 2 class scores but the data has 3"):
        train(make_settings(tmp_path / "c", *mine, "data=npz", f"data.path={tmp_path}/d.npz"))
