"""export.formats=[tfjs]: a TensorFlow.js graph model from a checkpoint of either backend, run with
@tensorflow/tfjs in Node and compared with the Keras model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.backend.users import recipe_overrides
from tests.conftest import run_cli

# Every test here trains or exports in subprocesses: the full suite only; on one worker, which
# trains the two checkpoints once.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("tfjs")]

MLP = ["recipe=mlp", "trainer.max_epochs=1", "logger.progress=false"]
# The first export makes the converter's environment and installs @tensorflow/tfjs (about 2 min
# on this machine, longer on a slow link); later ones reuse them.
EXPORT_TIMEOUT_S = 1800


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    runs = {}
    for backend in ("torch", "tf"):
        run_dir = tmp_path_factory.mktemp(f"mlp-{backend}")
        result = run_cli(*MLP, f"backend={backend}", f"hydra.run.dir={run_dir}")
        assert result.returncode == 0, result.stderr[-3000:]
        runs[backend] = run_dir
    return runs


def _port(name: str, shape: list[Any], dtype: str) -> dict[str, Any]:
    return {"name": name, "shape": shape, "dtype": dtype}


def _model_json(directory: Path) -> dict[str, Any]:
    model_json: dict[str, Any] = json.loads((directory / "model.json").read_text())
    shards = [p for group in model_json["weightsManifest"] for p in group["paths"]]
    assert shards and all((directory / p).is_file() for p in shards)
    return model_json


@pytest.mark.parametrize("trained_on", ["torch", "tf"])
def test_tfjs_from_either_backend_matches_the_keras_model(
    trained_on: str, trained: dict[str, Path], tmp_path: Path
) -> None:
    run = trained[trained_on]
    result = run_cli(
        "mode=export", f"checkpoint.path={run}", *MLP, "export.formats=[tfjs]",
        f"hydra.run.dir={tmp_path}", timeout=EXPORT_TIMEOUT_S,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "export" / "report.json").read_text())
    assert report["checkpoint_backend"] == trained_on
    entry = report["formats"]["tfjs"]
    assert entry["status"] == "ok", entry
    assert entry["exported_on"] == "tf" and entry["runtime"].startswith("@tensorflow/tfjs 4.22.0")
    # float32 formats: outputs within 1e-4 of the Keras model's (export.TOLERANCE; tfjs's CPU
    # kernels measured within 1e-6 here) for a batch of 1 and a batch of 37: the batch is dynamic.
    assert entry["max_abs_diff"] <= 1e-4 and entry["batch_sizes_checked"] == [1, 37]
    assert entry["val_accuracy"] == entry["keras_val_accuracy"]
    # What model.json says the model takes and gives: the Keras model's names, dtypes and
    # shapes, the batch dynamic (-1 in model.json).
    inputs, outputs = (
        [_port("features", [None, 30], "float32")],
        [_port("logits", [None, 2], "float32")],
    )
    assert entry["interface"] == {"inputs": inputs, "outputs": outputs}
    assert entry["inputs"] == {"features": [None, 30]} and entry["outputs"] == ["logits"]
    assert entry["latency_ms_per_batch"] > 0 and entry["in_node_latency_ms_per_batch"] > 0
    directory = tmp_path / entry["path"]
    assert directory == tmp_path / "export" / "tfjs"
    model_json = _model_json(directory)
    assert model_json["format"] == "graph-model"
    assert list(model_json["signature"]["inputs"]) == ["features"]
    assert list(model_json["signature"]["outputs"]) == ["logits"]
    # Only the model is left: model.json and its shards, no SavedModel beside them.
    assert entry["size_bytes"] == sum(f.stat().st_size for f in directory.iterdir())
    assert {f.name for f in directory.iterdir()} == {"model.json", *entry["weight_files"]}
    assert "export/tfjs (" in result.stdout and "FAILED" not in result.stdout


def test_two_inputs_and_two_outputs_by_name(tmp_path: Path) -> None:
    result = run_cli(
        *recipe_overrides("two_towers", "backend=tf", "trainer.max_epochs=2"),
        "logger.progress=false", "export.formats=[tfjs]", f"hydra.run.dir={tmp_path}",
        timeout=EXPORT_TIMEOUT_S,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "export" / "report.json").read_text())
    entry = report["formats"]["tfjs"]
    assert entry["status"] == "ok", entry
    # int32 category ids stay int32 in model.json (tfjs takes int32 tensors), float numbers
    # float32; each output under its own name.
    inputs = [_port("numbers", [None, 4], "float32"), _port("category", [None, 1], "int32")]
    outputs = [_port("kind", [None, 2], "float32"), _port("value", [None, 1], "float32")]
    assert report["inputs"] == inputs and report["outputs"] == outputs
    assert entry["interface"] == {"inputs": inputs, "outputs": outputs}
    kind, value = entry["per_output"]["kind"], entry["per_output"]["value"]
    assert kind["task"] == "classification" and value["task"] == "regression"
    # export.TOLERANCE, on each output, the regression output included.
    assert max(kind["max_abs_diff"], value["max_abs_diff"]) == entry["max_abs_diff"] <= 1e-4
    assert kind["val_accuracy"] == kind["keras_val_accuracy"] > 0.5
    model_json = _model_json(tmp_path / "export" / "tfjs")
    signature = model_json["signature"]
    assert set(signature["inputs"]) == {"numbers", "category"}
    assert signature["inputs"]["category"]["dtype"] == "DT_INT32"
    assert set(signature["outputs"]) == {"kind", "value"}
    assert "kind val accuracy" in result.stdout


def test_int32_token_ids_through_an_lstm(tmp_path: Path) -> None:
    # The LSTM's loop is a While op in model.json (the converter's control flow v2), which
    # tfjs runs with executeAsync; TFLite cannot take this model (docs/export.md).
    result = run_cli(
        *recipe_overrides("tokens"), "backend=tf", "trainer.max_epochs=1", "logger.progress=false",
        "export.formats=[tfjs]", f"hydra.run.dir={tmp_path}", timeout=EXPORT_TIMEOUT_S,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    entry = json.loads((tmp_path / "export" / "report.json").read_text())["formats"]["tfjs"]
    assert entry["status"] == "ok", entry
    assert entry["interface"]["inputs"] == [_port("input", [None, 12], "int32")]
    # export.TOLERANCE.
    assert entry["max_abs_diff"] <= 1e-4 and entry["val_accuracy"] == entry["keras_val_accuracy"]
    model_json = _model_json(tmp_path / "export" / "tfjs")
    assert "While" in {node["op"] for node in model_json["modelTopology"]["node"]}


def test_a_converter_that_cannot_be_installed_fails_the_format_with_what_to_do(
    trained: dict[str, Path], tmp_path: Path
) -> None:
    # A fresh cache and no package index: pip cannot install the pinned converter.
    cache = tmp_path / "cache"
    result = run_cli(
        "mode=export", f"checkpoint.path={trained['tf']}", *MLP, "export.formats=[tfjs]",
        f"hydra.run.dir={tmp_path / 'out'}",
        env={"DUALTRAIN_CACHE": str(cache), "PIP_NO_INDEX": "1"},
    )  # fmt: skip
    assert result.returncode == 1
    assert "export: tfjs: installing the TensorFlow.js converter" in result.stdout
    entry = json.loads((tmp_path / "out" / "export" / "report.json").read_text())["formats"]["tfjs"]
    assert entry["status"] == "failed"
    assert entry["error"].startswith("could not install the TensorFlow.js converter")
    assert "No matching distribution found" in entry["error"] and "\n" not in entry["error"]
    assert entry["error"].endswith(
        "check that PyPI is reachable, or set DUALTRAIN_CACHE to a "
        "writable disk with 3 GB free, and export again"
    )
    # Nothing half-made is left to be taken for an environment: only the lock and the log.
    assert sorted(p.suffix for p in cache.iterdir()) == [".lock", ".log"]
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("dualtrain: error: export failed for tfjs")
    )
