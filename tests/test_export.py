"""Export: every format from a checkpoint of either backend, each checked in its own runtime."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import SMALL_CNN, run_cli

# Every test here trains or exports in subprocesses: the full suite only. One worker runs them
# all (and test_export_executorch's), so the runs train once.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("export")]

FORMATS = ["saved_model", "tflite", "onnx", "torch"]
# Small runs: few samples and steps keep the matrix inside CI's time; the checks compare the
# exported model with the Keras model on the same weights, so accuracy does not matter here.
SMALL = {
    "cnn": SMALL_CNN,
    "mlp": ["recipe=mlp", "trainer.max_epochs=1"],
}


@pytest.fixture(scope="module")
def trained(
    tmp_path_factory: pytest.TempPathFactory, small_cnn: Callable[[str], Path]
) -> dict[tuple[str, str], Path]:
    runs = {("cnn", backend): small_cnn(backend) for backend in ("torch", "tf")}
    for backend in ("torch", "tf"):
        run_dir = tmp_path_factory.mktemp(f"mlp-{backend}")
        result = run_cli(
            *SMALL["mlp"], f"backend={backend}", "logger.progress=false",
            f"hydra.run.dir={run_dir}",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        runs[("mlp", backend)] = run_dir
    return runs


def _export(run: Path, out: Path, recipe: str, *overrides: str):  # type: ignore[no-untyped-def]
    return run_cli(
        "mode=export", f"checkpoint.path={run}", *SMALL[recipe], f"hydra.run.dir={out}",
        *overrides,
    )  # fmt: skip


@pytest.mark.parametrize("trained_on", ["torch", "tf"])
@pytest.mark.parametrize("recipe", ["cnn", "mlp"])
def test_every_format_from_either_backend_matches_the_keras_model(
    recipe: str, trained_on: str, trained: dict[tuple[str, str], Path], tmp_path: Path
) -> None:
    run = trained[(recipe, trained_on)]
    result = _export(run, tmp_path, recipe, f"export.formats=[{','.join(FORMATS)}]")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "export" / "report.json").read_text())
    assert report["checkpoint_backend"] == trained_on and report["recipe"] == recipe
    summary = json.loads((run / "summary.json").read_text())
    assert report["checkpoint_step"] == summary["steps"]  # the final weights
    names = {"cnn": ("image", [8, 8, 1]), "mlp": ("features", [30])}
    input_name, shape = names[recipe]
    for name in FORMATS:
        entry = report["formats"][name]
        assert entry["status"] == "ok", entry
        assert entry["exported_on"] == {"saved_model": "tf", "tflite": "tf"}.get(name, "torch")
        # float32 formats: outputs within 1e-4 of the Keras model's (export.TOLERANCE; measured
        # differences are below 1e-6) for a batch of 1 and a batch of 37: the batch is dynamic.
        assert entry["max_abs_diff"] <= 1e-4 and entry["batch_sizes_checked"] == [1, 37]
        assert entry["val_accuracy"] == entry["keras_val_accuracy"]
        assert entry["size_bytes"] > 0 and entry["latency_ms_per_batch"] > 0
        assert (tmp_path / entry["path"]).exists()
        # The Keras model on the exporting backend, with weights from the other one, scores what
        # the training run scored: to a borderline sample, as float32 rounding may tip one.
        assert abs(entry["keras_val_accuracy"] - summary["final"]["val"]["accuracy"]) <= 0.01
    saved_model = report["formats"]["saved_model"]
    assert saved_model["signature"] == "serving_default"
    assert saved_model["inputs"] == {input_name: [None, *shape]}
    assert saved_model["outputs"] == ["logits"]
    tflite = report["formats"]["tflite"]
    assert tflite["input_shape_signature"] == [-1, *shape] and tflite["quantize"] == "none"
    assert tflite["signatures"]["serving_default"]["inputs"] == [input_name]
    onnx = report["formats"]["onnx"]
    assert onnx["input"] == input_name and onnx["outputs"] == ["logits"]
    assert onnx["input_shape"] == ["batch", *shape] and onnx["opset"] >= 17
    assert (tmp_path / "export" / "torch" / "model.pt2").is_file()
    if recipe == "cnn":
        _served_like_tf_serving(tmp_path / "export", input_name, shape)


def _served_like_tf_serving(export: Path, input_name: str, shape: list[int]) -> None:
    """TF Serving calls the `serving_default` signature with tensors by input name; its answer
    matches the ONNX model's (each checked against the Keras model above)."""
    script = f"""
import json, numpy as np, onnxruntime, tensorflow as tf
x = np.random.default_rng(0).random((5, {", ".join(map(str, shape))}), dtype=np.float32)
serving = tf.saved_model.load({str(export / "saved_model")!r}).signatures["serving_default"]
got = serving(**{{{input_name!r}: tf.constant(x)}})
onnx = onnxruntime.InferenceSession({str(export / "onnx" / "model.onnx")!r})
want = onnx.run(None, {{{input_name!r}: x}})[0]
print(json.dumps({{"keys": sorted(got), "shape": list(got["logits"].shape),
                  "diff": float(np.max(np.abs(got["logits"].numpy() - want)))}}))
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer["keys"] == ["logits"] and answer["shape"] == [5, 10]
    assert answer["diff"] <= 1e-4  # export.TOLERANCE: both formats are within it of Keras's


@pytest.mark.parametrize("quantize", ["dynamic", "float16"])
def test_quantized_tflite_reports_its_accuracy_change(
    quantize: str, trained: dict[tuple[str, str], Path], tmp_path: Path
) -> None:
    run = trained[("cnn", "tf")]
    result = _export(
        run, tmp_path, "cnn", "export.formats=[tflite]", f"export.tflite_quantize={quantize}"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    entry = json.loads((tmp_path / "export" / "report.json").read_text())["formats"]["tflite"]
    assert entry["quantize"] == quantize and entry["check"] == "val accuracy change"
    assert entry["val_accuracy_change"] == pytest.approx(
        entry["val_accuracy"] - entry["keras_val_accuracy"]
    )
    # Quantized weights move the outputs, but not far: measured below 1e-2 on this model.
    assert 0 < entry["max_abs_diff"] < 0.1
    assert "val accuracy" in result.stdout


@pytest.fixture(scope="module")
def digits_cnn(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The cnn trained on the digits to about 97% val accuracy (3 epochs): a model whose
    accuracy a quantization could lose."""
    run_dir = tmp_path_factory.mktemp("cnn-digits")
    result = run_cli(
        "recipe=cnn", "backend=torch", "trainer.max_epochs=3", "logger.progress=false",
        f"hydra.run.dir={run_dir}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


@pytest.mark.parametrize("int8_io", [False, True])
def test_full_integer_tflite_keeps_the_cnns_accuracy(
    int8_io: bool, digits_cnn: Path, tmp_path: Path
) -> None:
    result = run_cli(
        "mode=export", "recipe=cnn", f"checkpoint.path={digits_cnn}", "export.formats=[tflite]",
        "export.tflite_quantize=int8", f"export.tflite_int8_io={str(int8_io).lower()}",
        f"hydra.run.dir={tmp_path}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    # The converter's chatter, its interpreter's deprecation, the engine's start line: not an
    # export's business.
    assert not any(n in output for n in ("fully_quantize", "deprecated", "steps run")), output
    entry = json.loads((tmp_path / "export" / "report.json").read_text())["formats"]["tflite"]
    assert entry["quantize"] == "int8" and entry["calibration_samples"] == 256
    assert entry["keras_val_accuracy"] > 0.9  # the float model is good enough to lose something
    # Full-integer quantization may cost at most one point of val accuracy (measured: 0).
    assert entry["val_accuracy_change"] >= -0.01
    # int8 weights: about a quarter of the float flatbuffer (measured 0.16 MB against 0.61 MB).
    assert entry["size_bytes"] < entry["float_model"]["size_bytes"] / 3
    io = {port["dtype"] for side in ("inputs", "outputs") for port in entry["interface"][side]}
    assert io == ({"int8"} if int8_io else {"float32"})
    if int8_io:  # a client needs the scales to feed and read int8 tensors
        image = entry["io_quantization"]["image"]
        assert image["scale"] > 0 and -128 <= image["zero_point"] <= 127


def test_a_training_run_exports_its_final_weights(tmp_path: Path) -> None:
    result = run_cli(
        *SMALL["mlp"], "backend=tf", "export.formats=[onnx]", "checkpoint.every_n_epochs=0",
        "logger.progress=false", f"hydra.run.dir={tmp_path}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "export" / "report.json").read_text())
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert report["checkpoint_backend"] == "tf" and report["checkpoint_step"] == summary["steps"]
    assert report["formats"]["onnx"]["status"] == "ok"
    assert (tmp_path / "export" / "onnx" / "model.onnx").is_file()


def test_a_missing_package_fails_its_format_and_the_others_are_written(
    trained: dict[tuple[str, str], Path], tmp_path: Path
) -> None:
    # onnxruntime made unimportable, as on a machine without it.
    fake = tmp_path / "site"
    (fake / "onnxruntime").mkdir(parents=True)
    (fake / "onnxruntime" / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'onnxruntime'\", name='onnxruntime')\n"
    )
    out = tmp_path / "out"
    result = run_cli(
        "mode=export", f"checkpoint.path={trained[('mlp', 'torch')]}", *SMALL["mlp"],
        "export.formats=[onnx,torch]", f"hydra.run.dir={out}",
        env={"PYTHONPATH": str(fake)},
    )  # fmt: skip
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last == (
        "dualtrain: error: export failed for onnx (onnx: needs the onnxruntime package: "
        "pip install -c constraints.txt 'dualtrain[export]'); written: torch; see "
        f"{out / 'export' / 'report.json'}"
    )
    assert "Traceback" not in result.stderr
    formats = json.loads((out / "export" / "report.json").read_text())["formats"]
    assert formats["onnx"]["status"] == "failed" and formats["torch"]["status"] == "ok"
    assert (out / "export" / "torch" / "model.pt2").is_file()


def test_a_checkpoint_of_another_recipe_is_refused(
    trained: dict[tuple[str, str], Path], tmp_path: Path
) -> None:
    result = run_cli(
        "mode=export", f"checkpoint.path={trained[('mlp', 'tf')]}", *SMALL["cnn"],
        "export.formats=[torch]", f"hydra.run.dir={tmp_path}",
    )  # fmt: skip
    assert result.returncode == 2  # a usage error, found before any framework starts
    assert result.stderr.strip() == (
        f"dualtrain: error: {trained[('mlp', 'tf')] / 'checkpoints' / 'step-000000015'} was "
        "written by recipe=mlp; use it with recipe=mlp (and the data it was trained on)"
    )
