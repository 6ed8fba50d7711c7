"""Bad data said in one line: each source's mistakes, found by `load_data` before training.

Most tests call `load_data` in this process (it imports no framework). The non-finite weights
tests run the command line, which trains; this module doubles as their recipe (`build_model`,
`loss`), with Keras imported inside the functions so that collecting the tests imports none.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dualtrain.data import SourceData, load_data
from dualtrain.errors import ConfigError, DualtrainError, RunError
from dualtrain.settings import DataSettings
from tests.conftest import run_cli
from tests.data_files import write_csv, write_image_folder

NPZ = "dualtrain.data.files:npz"
CSV = "dualtrain.data.tabular:load_csv"
IMAGES = "dualtrain.data.images:image_folder"
SYNTHETIC = "dualtrain.data.sources:synthetic"
MODULE = "test_data_errors_sources"  # the python sources below, as data.source names them


def settings(source: str, **params: Any) -> DataSettings:
    return DataSettings(
        source=source, batch_size=32, val_fraction=0.2, num_workers=0, params=params
    )


def error(source: str, **params: Any) -> DualtrainError:
    with pytest.raises(DualtrainError) as caught:
        load_data(settings(source, **params), seed=0)
    assert "\n" not in str(caught.value)
    return caught.value


def arrays(n: int = 100, features: int = 4, classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, features)).astype("float32")
    return x, (np.arange(n) % classes).astype("int64")


# -- features and labels of different lengths, from every source -----------------------------


def test_npz_with_fewer_labels_than_samples_is_refused(tmp_path: Path) -> None:
    x, y = arrays(100)
    np.savez(tmp_path / "d.npz", x=x, y=y[:90])
    err = error(NPZ, path=str(tmp_path / "d.npz"))
    assert isinstance(err, RunError)
    assert f"data.path={tmp_path / 'd.npz'} has 100 samples of features and 90 labels" in str(err)
    np.savez(tmp_path / "v.npz", x=x, y=y, x_val=x[:20], y_val=y[:19])
    assert "has 20 val samples of features and 19 val labels" in str(
        error(NPZ, path=str(tmp_path / "v.npz"))
    )


@pytest.fixture
def python_sources() -> Iterator[types.ModuleType]:
    """Sources a user might write, each returning features and labels that do not pair up."""
    module = types.ModuleType(MODULE)
    x, y = arrays(10)
    module.pair = lambda: (x, y[:9])  # type: ignore[attr-defined]
    module.four = lambda: (x, y, x[:4], y[:3])  # type: ignore[attr-defined]
    module.record = lambda: SourceData(x=x, y=y[:8], said="my source has")  # type: ignore[attr-defined]
    module.nothing = lambda: None  # type: ignore[attr-defined]

    def raises_its_own_type_error() -> None:
        raise TypeError("unsupported operand type(s) for +: 'int' and 'str'")

    module.broken = raises_its_own_type_error  # type: ignore[attr-defined]
    sys.modules[MODULE] = module
    yield module
    del sys.modules[MODULE]


@pytest.mark.parametrize(
    "function,message",
    [
        ("pair", f"data source {MODULE}:pair returned 10 samples of features and 9 labels"),
        ("four", f"data source {MODULE}:four returned 4 val samples of features and 3 val labels"),
        ("record", "my source has 10 samples of features and 8 labels"),
        ("nothing", f"data source {MODULE}:nothing returned a NoneType; expected a tuple (x, y)"),
    ],
)
def test_python_sources_that_do_not_pair_up_are_refused(
    python_sources: types.ModuleType, function: str, message: str
) -> None:
    assert message in str(error(f"{MODULE}:{function}"))


def test_a_sources_own_type_error_is_not_taken_for_a_config_key(
    python_sources: types.ModuleType,
) -> None:
    with pytest.raises(TypeError, match="unsupported operand"):
        load_data(settings(f"{MODULE}:broken"), seed=0)
    assert "does not take the config's data keys ['unknown']" in str(
        error(f"{MODULE}:pair", unknown=1)
    )


def test_a_missing_source_module_is_named(tmp_path: Path) -> None:
    err = error("no_such_module_here:load")
    assert str(err).startswith("data.source=no_such_module_here:load: there is no module")


# -- synthetic data: its config values ---------------------------------------------------------


@pytest.mark.parametrize(
    "params,message",
    [
        ({"shape": [0]}, "data.shape must be a sample's shape, a list of integers each at least 1"),
        ({"shape": [8, -1]}, "got [8, -1]"),
        ({"shape": []}, "got []"),
        ({"num_samples": -5}, "data.num_samples must be a positive integer"),
        ({"num_samples": 0}, "data.num_samples must be a positive integer"),
        ({"num_samples": 1.5}, "got 1.5"),
        ({"num_samples": 3}, "data.num_samples=3 is too few to split into train and val"),
        ({"num_classes": 1}, "data.num_classes must be an integer >= 2"),
        ({"noise": -1.0}, "data.noise must be a number >= 0"),
    ],
)
def test_synthetic_refuses_values_it_cannot_make_data_of(
    params: dict[str, Any], message: str
) -> None:
    err = error(SYNTHETIC, **params)
    assert isinstance(err, ConfigError) and message in str(err)


def test_samples_without_values_are_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=np.zeros((50, 0), "float32"), y=np.arange(50) % 2)
    assert "samples of shape (0,) with no values; expected every dimension" in str(
        error(NPZ, path=str(tmp_path / "d.npz"))
    )


def test_too_few_samples_to_split_say_so(tmp_path: Path) -> None:
    x, y = arrays(6, classes=3)
    np.savez(tmp_path / "d.npz", x=x, y=np.array([0, 0, 1, 1, 2, 1]))
    err = str(error(NPZ, path=str(tmp_path / "d.npz")))
    assert "has 6 samples of 3 classes, 1 of them with a single sample (the first 2)" in err
    np.savez(tmp_path / "e.npz", x=x, y=y)
    err = str(error(NPZ, path=str(tmp_path / "e.npz")))
    assert "has 6 samples of 3 classes: 2 for val and 4 for train" in err
    assert "needs at least 2 samples of every class and 3 samples (one per class) in each" in err


# -- npz files that are empty, truncated or not npz at all -------------------------------------


def _truncated(path: Path) -> None:
    x, y = arrays(200)
    np.savez(path, x=x, y=y)
    path.write_bytes(path.read_bytes()[:300])


@pytest.mark.parametrize(
    "write,message",
    [
        (lambda p: p.write_bytes(b""), "is empty (0 bytes); expected a .npz archive"),
        (_truncated, "is a truncated or damaged .npz file (BadZipFile"),
        (lambda p: p.write_text("x,y\n1,0\n"), "is not a .npz file (its first bytes are b'x,y\\n'"),
        (
            lambda p: np.savez(p, x=np.array([[1.0], [2]], dtype=object), y=np.zeros(2)),
            "array x holds Python objects (dtype object); expected numeric arrays",
        ),
        (lambda p: np.savez(p), "has no array x or y; it has none"),
    ],
)
def test_npz_files_that_do_not_read_say_why(
    write: Callable[[Path], None], message: str, tmp_path: Path
) -> None:
    path = tmp_path / "d.npz"
    write(path)
    err = str(error(NPZ, path=str(path)))
    assert err.startswith(f"data.path={path}") and message in err
    assert "pickle" not in err and "EOF" not in err


def test_an_empty_npy_in_a_folder_is_named(tmp_path: Path) -> None:
    (tmp_path / "x.npy").write_bytes(b"")
    np.save(tmp_path / "y.npy", np.zeros(3))
    assert f"{tmp_path / 'x.npy'} is empty (0 bytes)" in str(error(NPZ, path=str(tmp_path)))
    np.save(tmp_path / "x.npy", np.zeros((3, 2), "float32"))
    (tmp_path / "y.npy").write_bytes(b"")
    assert f"{tmp_path / 'y.npy'} is empty (0 bytes)" in str(error(NPZ, path=str(tmp_path)))


def test_a_val_path_is_named_as_data_val_path(tmp_path: Path) -> None:
    x, y = arrays(100)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    (tmp_path / "v.npz").write_bytes(b"")
    err = str(error(NPZ, path=str(tmp_path / "d.npz"), val_path=str(tmp_path / "v.npz")))
    assert err.startswith(f"data.val_path={tmp_path / 'v.npz'} is empty")


# -- CSV ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,message",
    [
        ("", "is empty (0 bytes); expected a CSV file with a header row naming the columns"),
        ("\n\n", "is empty (2 bytes)"),
        ("a,b,kind\n", "has a header row and no rows below it; expected one row per sample"),
        ("a,b,kind\n1,2,x\n3,x\n", "line 3 has 2 values for 3 columns; expected one value per"),
    ],
)
def test_csv_files_without_rows_say_what_they_lack(text: str, message: str, tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text(text)
    err = error(CSV, path=str(path), target="kind")
    assert isinstance(err, RunError) and f"data.path={path}" in str(err) and message in str(err)


def test_a_numeric_column_with_a_few_words_is_not_taken_for_categories(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "t.csv", num_rows=60)
    lines = path.read_text().splitlines()
    lines[9] = lines[9].replace(lines[9].split(",")[1], "NA", 1)
    path.write_text("\n".join(lines) + "\n")
    err = str(error(CSV, path=str(path), target="kind"))
    assert "column 'weight' holds numbers but 1 rows hold text, the first on line 10 ('NA')" in err
    # A text column (every value a word) is still encoded as categories.
    loaded = load_data(settings(CSV, path=str(write_csv(tmp_path / "u.csv")), target="kind"), 0)
    assert loaded.info.input_shape == (2 + 3,)


def test_a_csv_target_that_is_not_a_column_lists_the_columns(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "t.csv")
    err = error(CSV, path=str(path), target="label")
    assert isinstance(err, ConfigError)
    assert str(err) == (
        f"data.target=label is not a column of data.path={path}; its columns: size, weight, "
        "color, kind"
    )


# -- image folders ------------------------------------------------------------------------------


def test_image_folders_without_images_in_a_class_are_refused(tmp_path: Path) -> None:
    images = write_image_folder(tmp_path / "images", per_class=3, classes=2)
    (images / "purple").mkdir()
    err = str(error(IMAGES, path=str(images), image_size=[8, 8]))
    assert "has class folders with no image files" in err and ": purple; expected" in err
    empty = tmp_path / "empty"
    (empty / "a").mkdir(parents=True)
    (empty / "b").mkdir()
    err = str(error(IMAGES, path=str(empty)))
    assert "has no image files" in err and "in its class folders a, b; expected images" in err


def test_an_image_folder_with_one_class_is_refused(tmp_path: Path) -> None:
    images = write_image_folder(tmp_path / "images", per_class=3, classes=1)
    assert "has 1 class folders; expected one sub-folder of images per class, at least two" in str(
        error(IMAGES, path=str(images))
    )


# -- non-finite weights: the advice fits where they come from -----------------------------------


def build_model(data: Any) -> Any:
    """A model whose first update makes a weight NaN while its loss is finite: d sqrt(|w|)/dw at
    w = 0 is inf * 0. Every later loss is NaN, as after too large a learning rate."""
    import keras

    class RootOfWeight(keras.layers.Layer):
        def build(self, input_shape: Any) -> None:
            self.w = self.add_weight(shape=(), initializer="zeros", name="w")

        def call(self, x: Any) -> Any:
            return x + keras.ops.sqrt(keras.ops.abs(self.w))

    inputs = keras.Input(shape=data.input_shape)
    hidden = RootOfWeight()(inputs)
    return keras.Model(inputs, keras.layers.Dense(data.num_classes)(hidden))


def loss() -> Any:
    import keras

    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


TINY_MLP = [
    "recipe=mlp", "data=synthetic", "data.num_samples=128", "data.shape=[4]", "data.num_classes=2",
    "trainer.max_steps=2", "logger=[jsonl]", "logger.progress=false",
]  # fmt: skip


def one_line(result: subprocess.CompletedProcess[str], code: int) -> str:
    assert result.returncode == code, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("dualtrain: error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


@pytest.mark.slow
def test_a_checkpoint_with_nan_weights_is_called_bad_not_a_learning_rate_problem(
    tmp_path: Path,
) -> None:
    env = {"OMP_NUM_THREADS": "1"}
    result = run_cli(*TINY_MLP, f"hydra.run.dir={tmp_path / 'good'}", env=env)
    assert result.returncode == 0, result.stderr
    checkpoint = tmp_path / "good" / "checkpoints" / "step-000000002"
    weights = dict(np.load(checkpoint / "model.npz"))
    kernel = next(name for name in weights if name.endswith("kernel"))
    weights[kernel] = weights[kernel].copy()
    weights[kernel].flat[0] = np.nan
    np.savez(checkpoint / "model.npz", **weights)
    for i, how in enumerate((f"init_from={checkpoint}", f"checkpoint.path={checkpoint}")):
        result = run_cli(*TINY_MLP, how, f"hydra.run.dir={tmp_path / f'bad{i}'}", env=env)
        line = one_line(result, 1)
        assert f"the checkpoint's model variable {kernel} holds NaN or Inf values (1 of" in line
        assert "the checkpoint itself is bad; use an earlier checkpoint" in line
        assert "optimizer.lr" not in line


@pytest.mark.slow
def test_weights_that_become_nan_in_training_stop_the_run_even_with_skip(tmp_path: Path) -> None:
    result = run_cli(
        *TINY_MLP, "recipe.name=root", "recipe.module=tests.test_data_errors", "~recipe.model",
        "trainer.on_nonfinite=skip", "trainer.log_every_n_steps=1", "trainer.max_steps=4",
        f"hydra.run.dir={tmp_path}", env={"OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    line = one_line(result, 1)
    assert "the weights became NaN or Inf during training (root_of_weight/w; the loss was" in line
    assert "lower optimizer.lr or clip gradients with trainer.grad_clip_norm" in line
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())


# -- several inputs and targets, tasks ---------------------------------------------------------


@pytest.fixture
def any_task_sources() -> Iterator[types.ModuleType]:
    """Sources of named inputs and targets, of regression values and of no targets, each with
    one mistake (or none)."""
    module = types.ModuleType(MODULE)
    x, y = arrays(10)
    ids = np.arange(10).reshape(10, 1)
    value = np.linspace(0, 1, 10, dtype="float32")
    module.named = lambda: ({"a": x, "ids": ids}, {"kind": y, "value": value})  # type: ignore[attr-defined]
    module.short_input = lambda: ({"a": x, "ids": ids[:9]}, y)  # type: ignore[attr-defined]
    module.short_target = lambda: (x, {"kind": y, "value": value[:8]})  # type: ignore[attr-defined]
    module.text = lambda: (x, np.array(["cat", "dog"] * 5))  # type: ignore[attr-defined]
    module.nan_value = lambda: (x, np.where(np.arange(10) == 6, np.nan, value))  # type: ignore[attr-defined]
    module.flags = lambda: (x, np.eye(10, 3)[:, :3] * 2)  # type: ignore[attr-defined]
    module.unlabelled = lambda: (x, None)  # type: ignore[attr-defined]
    module.bad_keys = lambda: ({1: x}, y)  # type: ignore[attr-defined]
    sys.modules[MODULE] = module
    yield module
    del sys.modules[MODULE]


@pytest.mark.parametrize(
    "function,message",
    [
        ("short_input", "returned arrays of different lengths (a: 10, ids: 9, y: 10); expected"),
        ("short_target", "returned arrays of different lengths (x: 10, kind: 10, value: 8)"),
        ("text", "targets of dtype <U3, shape (10,): cannot infer the task; expected numbers"),
        ("nan_value", "regression targets of shape (10,) with NaN or Inf values (the first at"),
        ("bad_keys", "returned features as a dict with keys [1]; expected text keys"),
    ],
)
def test_several_inputs_and_targets_that_do_not_fit_are_refused(
    any_task_sources: types.ModuleType, function: str, message: str
) -> None:
    assert message in str(error(f"{MODULE}:{function}"))


def test_a_stated_task_is_checked(any_task_sources: types.ModuleType) -> None:
    with pytest.raises(DualtrainError, match=r"multilabel targets of shape .* values other than 0"):
        load_data(settings(f"{MODULE}:flags"), seed=0, task="multilabel")
    with pytest.raises(DualtrainError, match=r"recipe\.task=classification needs targets"):
        load_data(settings(f"{MODULE}:unlabelled"), seed=0, task="classification")
    with pytest.raises(DualtrainError, match=r"recipe.task names targets \['valu'\]"):
        load_data(settings(f"{MODULE}:named"), seed=0, task={"valu": "regression"})


def test_tasks_are_inferred_per_target_and_split_at_random(
    any_task_sources: types.ModuleType,
) -> None:
    thirty = dataclasses.replace(settings(f"{MODULE}:named"), val_fraction=0.3)
    data = load_data(thirty, seed=0)
    kind, value = data.info.target("kind"), data.info.target("value")
    assert (kind.task, kind.num_classes, value.task, value.num_classes) == (
        "classification", 3, "regression", None,
    )  # fmt: skip
    assert data.info.input("ids").dtype == "int32"  # int64 ids kept as integers
    assert (len(data.train), len(data.val)) == (7, 3)  # ceil(0.3 * 10) for val
    # Several targets: a seeded random split, the same for the same seed.
    again = load_data(thirty, seed=0)
    np.testing.assert_array_equal(data.val.y["value"], again.val.y["value"])
    assert data.info.to_json()["targets"][1]["task"] == "regression"
    unlabelled = load_data(settings(f"{MODULE}:unlabelled"), seed=0)
    assert (unlabelled.train.y, unlabelled.info.task) == (None, "none")
