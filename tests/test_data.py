"""Data from the user's own files: npz, .npy folders, CSV, image folders; their errors.

Runs of the command line go through subprocesses, as users run it; the loading and checking of
files is framework-free, so it is tested in this process too. Files are built on the fly.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dualtrain.data import load_data
from dualtrain.data.tabular import apply_transform
from dualtrain.errors import ConfigError, RunError
from dualtrain.settings import DataSettings
from tests.conftest import REPO, run_cli
from tests.data_files import write_csv, write_image_folder, write_npy_folder, write_npz

QUIET = ["logger.progress=false", "logger=[jsonl,console]"]


def summary(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "summary.json").read_text())


def data_settings(source: str, **params: Any) -> DataSettings:
    return DataSettings(
        source=source, batch_size=32, val_fraction=0.2, num_workers=0, params=params
    )


def one_line_error(result: subprocess.CompletedProcess[str], code: int) -> str:
    """The error line, after checking the contract: exit code, one line, no traceback."""
    assert result.returncode == code, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("dualtrain: error:")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


# -- training on each format, on each backend -------------------------------------------------


@pytest.mark.slow
def test_npz_trains_from_the_command_line(tmp_path: Path) -> None:
    # Its own val arrays (100 samples). Blobs separate cleanly: an mlp gets (nearly) every val
    # sample right in a few epochs (0.98-1.0 in trials, either backend). The other backend and
    # the streamed .npy folder: tests/backend/test_data_files.py.
    path = write_npz(tmp_path / "d.npz")
    run_dir = tmp_path / "run"
    result = run_cli(
        "recipe=mlp", "data=npz", f"data.path={path}", "trainer.max_epochs=4", *QUIET,
        f"hydra.run.dir={run_dir}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert summary(run_dir)["final"]["val"]["accuracy"] >= 0.95
    assert "300 train / 100 val samples" in (run_dir / "dualtrain.log").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "tf"])
def test_image_folder_trains_the_cnn_skipping_a_corrupt_file(backend: str, tmp_path: Path) -> None:
    images = write_image_folder(tmp_path / "images", per_class=24)
    (images / "red" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    run_dir = tmp_path / "run"
    result = run_cli(
        "recipe=cnn", f"backend={backend}", "data=image_folder", f"data.path={images}",
        "data.image_size=[16,16]", "data.on_bad_file=skip", "data.batch_size=8",
        "data.augmentation={flip: horizontal, rotation: 0.05}", "trainer.max_epochs=4",
        *QUIET, f"hydra.run.dir={run_dir}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    # Red against green pictures: the cnn separates them within a few epochs (1.0 in trials).
    assert summary(run_dir)["final"]["val"]["accuracy"] >= 0.9
    log = (run_dir / "dualtrain.log").read_text()
    assert "skipped 1 of 49 image files" in log and "red/broken.png" in log
    # 48 images that decode: a stratified 20% (10) for val.
    assert "38 train / 10 val samples" in log


def test_a_csv_transform_is_fitted_on_the_train_rows_only(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "things.csv")
    settings = data_settings("dualtrain.data.tabular:load_csv", path=str(path), target="kind")
    loaded = load_data(settings, seed=0)
    transform = loaded.transform
    assert transform is not None and transform["classes"] == ["large", "small"]
    assert (len(loaded.train), len(loaded.val)) == (240, 60)
    size = transform["columns"][0]
    assert size["name"] == "size" and size["kind"] == "numeric"
    # Standardized with the 240 train rows' statistics: mean 0 and std 1 there, not in val.
    assert abs(float(loaded.train.x[:, 0].mean())) < 1e-5  # float32 sums of 240 values
    assert abs(float(loaded.train.x[:, 0].std()) - 1) < 1e-5
    assert abs(float(loaded.val.x[:, 0].mean())) > 1e-3


def test_a_stored_csv_transform_is_applied_not_refitted(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "a.csv")
    settings = data_settings("dualtrain.data.tabular:load_csv", path=str(path), target="kind")
    fitted = load_data(settings, seed=0).transform
    assert fitted is not None
    shifted = write_csv(tmp_path / "b.csv", seed=1)  # other rows: other statistics
    refitted = load_data(
        data_settings("dualtrain.data.tabular:load_csv", path=str(shifted), target="kind"), 0
    )
    reused = load_data(
        data_settings("dualtrain.data.tabular:load_csv", path=str(shifted), target="kind"),
        0,
        transform=fitted,
    )
    assert refitted.transform != fitted and reused.transform == fitted
    size = fitted["columns"][0]
    raw = reused.val.x[:, 0] * size["std"] + size["mean"]  # undone with the stored statistics
    assert 900 < raw.mean() < 1500  # sizes in the file: 1000 or 1400 plus noise
    color = fitted["columns"][2]
    assert color["categories"] == ["blue", "green", "red"] and color["encoding"] == "onehot"
    assert reused.train.x.shape[1] == 2 + 3  # two numeric columns, three colors one-hot


def test_csv_index_encoding_and_unseen_categories() -> None:
    transform = {
        "kind": "csv",
        "target": "y",
        "classes": None,
        "columns": [
            {"name": "c", "kind": "categorical", "encoding": "index", "categories": ["a", "b"]}
        ],
    }
    x, y = apply_transform(transform, ["c", "y"], [["b", "1"], ["zzz", "0"]], [2, 3], "t")
    assert x.tolist() == [[1.0], [-1.0]] and y.tolist() == [1, 0]


# -- data larger than memory ------------------------------------------------------------------


@pytest.mark.slow
def test_a_npy_folder_larger_than_the_process_streams(tmp_path: Path) -> None:
    """2 GiB of float32 features train with a peak resident set far below 2 GiB."""
    folder = tmp_path / "big"
    folder.mkdir()
    rows, features = 2**19, 1024  # 2**19 rows x 4 KiB = 2 GiB
    y = np.random.default_rng(0).integers(0, 2, rows).astype("int32")
    np.save(folder / "y.npy", y)
    prototypes = np.random.default_rng(1).normal(size=(2, features)).astype("float32")
    header = {"descr": "<f4", "fortran_order": False, "shape": (rows, features)}
    chunk = 2**14
    noise = np.random.default_rng(2).normal(size=(chunk, features)).astype("float32")
    with open(folder / "x.npy", "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        for start in range(0, rows, chunk):
            f.write((prototypes[y[start : start + chunk]] + noise).tobytes())
    # A small val split of its own, so validation reads little.
    np.save(folder / "x_val.npy", prototypes[y[:256]] + noise[:256])
    np.save(folder / "y_val.npy", y[:256])
    size = (folder / "x.npy").stat().st_size
    assert size > 2 * 2**30
    run_dir = tmp_path / "run"
    # Peak RSS of the training process alone: measured by a parent that runs nothing else.
    measure = (
        "import resource, subprocess, sys\n"
        "code = subprocess.call(sys.argv[1:])\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
        "sys.exit(code)\n"
    )
    command = [
        sys.executable, "-m", "dualtrain", "recipe=mlp", "data=npz", f"data.path={folder}",
        "data.batch_size=256", "trainer.max_epochs=1", "trainer.limit_train_batches=30",
        *QUIET, f"hydra.run.dir={run_dir}",
    ]  # fmt: skip
    try:
        result = subprocess.run(
            [sys.executable, "-c", measure, *command],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        for name in ("x.npy", "y.npy", "x_val.npy", "y_val.npy"):
            (folder / name).unlink(missing_ok=True)
    assert result.returncode == 0, result.stderr
    peak_bytes = int(result.stdout.split()[-1]) * 1024  # ru_maxrss is in KiB on Linux
    # Measured 0.6 GiB: the interpreter, torch and Keras; the data adds batches in flight only.
    assert peak_bytes < size / 2, f"peak RSS {peak_bytes / 2**30:.2f} GiB for {size / 2**30} GiB"
    assert summary(run_dir)["final"]["val"]["accuracy"] >= 0.95  # two far-apart prototypes
    print(f"streamed {size / 2**30:.2f} GiB with peak RSS {peak_bytes / 2**30:.2f} GiB")


# -- errors: one line, before training --------------------------------------------------------


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    result = run_cli("data=npz", f"data.path={tmp_path / 'nope.npz'}", *QUIET)
    line = one_line_error(result, 2)
    assert f"data.path={tmp_path / 'nope.npz'} does not exist" in line


def test_an_image_that_does_not_decode_is_named(tmp_path: Path) -> None:
    images = write_image_folder(tmp_path / "images", per_class=3)
    (images / "green" / "cut.jpg").write_bytes((images / "green" / "000.jpg").read_bytes()[:60])
    run_dir = tmp_path / "run"
    result = run_cli("data=image_folder", f"data.path={images}", *QUIET, f"hydra.run.dir={run_dir}")
    line = one_line_error(result, 1)
    assert "1 image files do not decode, the first" in line
    assert str(images / "green" / "cut.jpg") in line
    assert "data.on_bad_file=skip" in line
    assert summary(run_dir)["status"] == "failed" and summary(run_dir)["steps"] == 0


@pytest.mark.parametrize(
    "change,message",
    [
        (
            lambda x, y: (np.where(np.arange(len(x))[:, None] == 7, np.nan, x), y),
            "NaN or Inf features, the first at sample 7, feature index (0,)",
        ),
        (
            lambda x, y: (x, np.where(np.arange(len(y)) == 3, 5, y)),
            "1 labels outside the class range 0..2, the first at sample 3 (label 5)",
        ),
        (
            lambda x, y: (x, y - 1),
            "labels of shape (300,), dtype int64 with minimum -1; expected class indices",
        ),
    ],
)
def test_bad_arrays_are_found_before_training(change: Any, message: str, tmp_path: Path) -> None:
    x, y = np.load(write_npz(tmp_path / "d.npz", with_val=False)).values()
    np.savez(tmp_path / "bad.npz", **dict(zip(("x", "y"), change(x, y), strict=True)))
    settings = data_settings("dualtrain.data.files:npz", path=str(tmp_path / "bad.npz"))
    settings.params["num_classes"] = 3
    with pytest.raises(RunError) as err:
        load_data(settings, seed=0)
    assert str(err.value).startswith(f"data.path={tmp_path / 'bad.npz'} has")
    assert message in str(err.value)


def test_nan_in_a_streamed_file_and_in_a_csv_column_say_where(tmp_path: Path) -> None:
    folder = write_npy_folder(tmp_path / "npy")
    x = np.load(folder / "x.npy")
    x[123, 4] = np.inf
    np.save(folder / "x.npy", x)
    with pytest.raises(RunError, match=r"the first at sample 123, feature index \(4,\)"):
        load_data(data_settings("dualtrain.data.files:npz", path=str(folder)), seed=0)
    path = write_csv(tmp_path / "t.csv")
    lines = path.read_text().splitlines()
    lines[5] = "nan," + lines[5].split(",", 1)[1]
    path.write_text("\n".join(lines) + "\n")
    settings = data_settings("dualtrain.data.tabular:load_csv", path=str(path), target="kind")
    where = r"column 'size' has NaN, Inf or an empty value in 1 rows, the first on line 6 \('nan'\)"
    with pytest.raises(RunError, match=where):
        load_data(settings, seed=0)


def test_missing_columns_and_arrays_name_what_there_is(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "t.csv")
    settings = data_settings("dualtrain.data.tabular:load_csv", path=str(path), target="label")
    with pytest.raises(ConfigError, match=r"data\.target=label is not a column of .*size, weight"):
        load_data(settings, seed=0)
    npz = write_npz(tmp_path / "d.npz")
    settings = data_settings("dualtrain.data.files:npz", path=str(npz), x_key="features")
    with pytest.raises(ConfigError, match=r"has no array features; it has x, y, x_val, y_val"):
        load_data(settings, seed=0)


def test_image_folder_val_fraction_is_stratified_and_val_path_is_used(tmp_path: Path) -> None:
    images = write_image_folder(tmp_path / "images", per_class=10, classes=3, sizes=(8, 12))
    settings = data_settings(
        "dualtrain.data.images:image_folder", path=str(images), image_size=[8, 8]
    )
    data = load_data(settings, seed=0)
    assert data.info.classes == ("blue", "green", "red")  # sorted folder names
    assert (data.info.input_shape, data.info.num_classes) == ((8, 8, 3), 3)
    assert np.bincount(data.val.y).tolist() == [2, 2, 2]  # 20% of each class's 10
    batch = data.train.x[np.array([3, 0])]
    assert batch.shape == (2, 8, 8, 3) and batch.min() >= 0 and batch.max() <= 1
    # The dominant channel of each image is its class's color.
    channel = {"red": 0, "green": 1, "blue": 2}
    for image, label in zip(batch, data.train.y[[3, 0]], strict=True):
        assert image.mean(axis=(0, 1)).argmax() == channel[data.info.classes[label]]
    val = write_image_folder(tmp_path / "val", per_class=2, classes=2, seed=1)
    data = load_data(
        data_settings("dualtrain.data.images:image_folder", path=str(images), val_path=str(val),
                      image_size=[8, 8], color_mode="grayscale"),
        seed=0,
    )  # fmt: skip
    assert (len(data.train), len(data.val), data.info.input_shape) == (30, 4, (8, 8, 1))
    assert sorted(data.val.y.tolist()) == [1, 1, 2, 2]  # green and red, by the train classes


def test_export_writes_the_checkpoints_data_transform_beside_the_models(tmp_path: Path) -> None:
    from hydra import compose, initialize_config_module

    from dualtrain.cli import settings_from_config
    from dualtrain.export import export_checkpoint

    checkpoint = tmp_path / "step-000000010"
    checkpoint.mkdir()
    transform = {"kind": "image_folder", "classes": ["daisy", "roses"], "image_size": [8, 8]}
    (checkpoint / "trainer.json").write_text(
        json.dumps({"recipe": "cnn", "data_transform": transform})
    )
    with initialize_config_module("dualtrain.configs", version_base="1.3"):
        cfg = compose("train", overrides=["export.formats=[onnx]"])
    settings = settings_from_config(cfg, tmp_path / "run")
    # The export process itself is not the point here: a stand-in that does nothing.
    with pytest.raises(RunError, match="export failed for onnx"):
        export_checkpoint(settings, checkpoint, lambda overrides, run_dir: ["true"])
    written = json.loads((tmp_path / "run" / "export" / "data_transform.json").read_text())
    assert written == transform


def test_a_csv_with_several_target_columns_gives_named_targets(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = ["size,color,species,weight"]
    for i in range(60):
        species = ["cat", "dog", "fox"][i % 3]
        rows.append(f"{rng.normal():.3f},{['red', 'blue'][i % 2]},{species},{10 + i / 4:.2f}")
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    settings = data_settings(
        "dualtrain.data.tabular:load_csv",
        path=str(tmp_path / "t.csv"),
        target=["species", "weight"],
    )
    data = load_data(settings, seed=0)
    species, weight = data.info.target("species"), data.info.target("weight")
    # Text: class indices (names in the transform); numbers: float values, a regression target.
    assert (species.task, species.num_classes, weight.task) == ("classification", 3, "regression")
    assert data.info.input_shape == (3,)  # size, and color one-hot
    assert (len(data.train), len(data.val)) == (48, 12)  # a seeded random 20%
    assert data.transform is not None
    assert data.transform["classes"] == {"species": ["cat", "dog", "fox"], "weight": None}
    assert set(data.val.y) == {"species", "weight"} and data.val.y["weight"].dtype == np.float32


def test_a_npz_with_named_arrays_gives_named_inputs_and_targets(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 50, size=(40, 5))
    np.savez(
        tmp_path / "d.npz", tokens=ids, numbers=rng.normal(size=(40, 2)).astype("float32"),
        label=ids[:, 0] % 2, score=rng.normal(size=40).astype("float32"),
    )  # fmt: skip
    settings = data_settings(
        "dualtrain.data.files:npz", path=str(tmp_path / "d.npz"),
        x_key=["tokens", "numbers"], y_key=["label", "score"],
    )  # fmt: skip
    data = load_data(settings, seed=0)
    assert (data.info.input_kind, data.info.target_kind) == ("dict", "dict")
    assert data.info.input("tokens").dtype == "int32"  # token ids stay integers
    assert data.info.target("score").task == "regression"
    assert data.info.target("label").num_classes == 2
