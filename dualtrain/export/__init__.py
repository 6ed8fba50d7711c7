"""Export: deployable models from a backend-neutral checkpoint, each verified in its own runtime.

    python -m dualtrain mode=export checkpoint.path=RUN_DIR export.formats=[saved_model,onnx]

The export run (no framework) starts one process per backend the formats need, one after the
other: TensorFlow writes `saved_model` and `tflite`, PyTorch writes `onnx` and `torch`. Each
process loads the checkpoint's weights into the recipe's Keras model, whichever backend trained
it, writes its formats to `<run_dir>/export/<format>/`, loads each back in the runtime that serves
it, and compares its outputs on val data with the Keras model's. `export/report.json` records every
format: its check and figure, file size and latency. A format that fails is recorded with its cause;
the others are still written.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dualtrain.errors import ConfigError, DualtrainError, RunError
from dualtrain.settings import Settings

# The backend whose process writes each format, and the runtime that checks it.
FORMAT_BACKENDS = {"saved_model": "tf", "tflite": "tf", "onnx": "torch", "torch": "torch"}
# float32 formats must reproduce the Keras model's outputs within this (max abs). The runtimes
# reorder float32 sums (fused kernels, XNNPACK): measured up to 7.6e-6 on the trained cnn's logits
# (docs/export.md), so 1e-4 leaves room and still flags a real conversion error.
TOLERANCE = 1e-4
LATENCY_REPEATS = 20

CommandFor = Callable[[list[str], Path], list[str]]
# A format's model as loaded back in its runtime: a batch of inputs -> outputs (NumPy).
Predict = Callable[[np.ndarray], np.ndarray]


class ExportFailure(DualtrainError):
    """One format could not be written or did not pass its check; the others go on."""


@dataclass(frozen=True)
class Signature:
    """The one input and output an exported model has: names and shapes (batch left out)."""

    input_name: str
    input_shape: tuple[int, ...]
    output_name: str


@dataclass(frozen=True)
class Written:
    """What a format writer returns: where it wrote, the loaded model, and facts for the report."""

    path: Path
    predict: Predict
    runtime: str
    details: dict[str, Any]
    quantized: bool = False


def export_checkpoint(settings: Settings, source: Path, command_for: CommandFor) -> dict[str, Any]:
    """Writes `settings.export.formats` from the checkpoint `source`; returns report.json.

    Raises:
        RunError: naming each format that failed and why, after the others are written.
    """
    record = _read_report(source / "trainer.json")
    if record.get("recipe") != settings.recipe.name:  # found before any process starts
        raise ConfigError(
            f"{source} was written by recipe={record.get('recipe')}; use it with "
            f"recipe={record.get('recipe')} (and the data it was trained on)"
        )
    export_dir = settings.run_dir / "export"
    export_dir.mkdir(parents=True, exist_ok=True)
    report_path = export_dir / "report.json"
    report_path.unlink(missing_ok=True)
    # What the data went through before the model (a CSV's encoding, a folder's class names):
    # beside the exported models, for whoever feeds them.
    if record.get("data_transform") is not None:
        _write_report(export_dir / "data_transform.json", record["data_transform"])
    by_backend: dict[str, list[str]] = {}
    for name in settings.export.formats:
        by_backend.setdefault(FORMAT_BACKENDS[name], []).append(name)
    for backend, formats in by_backend.items():
        overrides = [
            f"backend={backend}",
            "mode=export",
            "export.worker=true",
            f"export.formats=[{','.join(formats)}]",
            f"checkpoint.path='{_quoted(source)}'",
        ]
        print(f"export: {', '.join(formats)} on {backend} from {source}", flush=True)
        code = subprocess.call(command_for(overrides, settings.run_dir))
        if code != 0:
            report = _read_report(report_path)
            for name in formats:
                report.setdefault("formats", {}).setdefault(name, {
                    "status": "failed",
                    "error": f"the {backend} export process failed with exit code {code}; its "
                    "error is above",
                })  # fmt: skip
            _write_report(report_path, report)
    report = _read_report(report_path)
    results = report.get("formats", {})
    for name in settings.export.formats:
        result = results.get(name, {"status": "failed", "error": "no result was recorded"})
        shown = (
            f"{result['path']} ({result['size_bytes'] / 1e6:.2f} MB; {_figure(result)})"
            if result["status"] == "ok"
            else f"FAILED: {result['error']}"
        )
        print(f"  {name:<12} {shown}", flush=True)
    failed = [n for n in settings.export.formats if results.get(n, {}).get("status") != "ok"]
    if failed:
        causes = "; ".join(f"{n}: {results.get(n, {}).get('error', 'no result')}" for n in failed)
        written = [n for n in settings.export.formats if n not in failed]
        raise RunError(
            f"export failed for {', '.join(failed)} ({causes}); "
            + (f"written: {', '.join(written)}; " if written else "")
            + f"see {report_path}"
        )
    return report


def run_worker(settings: Settings) -> dict[str, Any]:
    """In a process of `settings.backend`: writes and checks this backend's formats."""
    from dualtrain.run import load_trained

    engine, checkpoint, source = load_trained(settings)
    model = engine.model
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise RunError(
            f"recipe {settings.recipe.name}: export needs a model with one input and one output; "
            f"this one has {len(model.inputs)} and {len(model.outputs)}"
        )
    signature = Signature(
        input_name=_safe_name(model.inputs[0].name, "input"),
        input_shape=tuple(int(d) for d in model.inputs[0].shape[1:]),
        output_name=_safe_name((getattr(model, "output_names", None) or ["output"])[0], "output"),
    )
    writers = _writers(settings.backend.name)
    val = engine.data.val
    # Odd batch sizes: an exported model with a batch dimension fixed to anything is caught.
    batch = val.x[: min(37, len(val))]
    reference = _keras_predict(model)
    expected = reference(batch)
    # Val accuracy for classifiers: a model whose outputs are one score per class.
    classifier = tuple(model.outputs[0].shape[1:]) == (engine.data.info.num_classes,)
    keras_accuracy = _accuracy(reference, val.x, val.y) if classifier else None
    report_path = settings.run_dir / "export" / "report.json"
    for name in settings.export.formats:
        directory = settings.run_dir / "export" / name
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        started = time.perf_counter()
        try:
            written = writers[name](model, directory, signature, settings, batch)
            result = _check(written, batch, expected, val.x, val.y, keras_accuracy)
            result["export_seconds"] = round(time.perf_counter() - started, 3)
            result["path"] = str(written.path.relative_to(settings.run_dir))
            result["size_bytes"] = _size(written.path)
        except ExportFailure as err:
            result = {"status": "failed", "error": str(err)}
        result = {"exported_on": settings.backend.name, **result}
        report = _read_report(report_path)
        report.update(
            recipe=settings.recipe.name,
            checkpoint=str(source.resolve()),
            checkpoint_backend=checkpoint.trainer["backend"],
            checkpoint_step=checkpoint.step,
            tolerance=TOLERANCE,
        )
        report.setdefault("formats", {})[name] = result
        _write_report(report_path, report)
    return _read_report(report_path)


def _check(
    written: Written,
    batch: np.ndarray,
    expected: np.ndarray,
    val_x: np.ndarray,
    val_y: np.ndarray,
    keras_accuracy: float | None,
) -> dict[str, Any]:
    """Runs the loaded model on batches of 1 and of N, compares it with the Keras model's
    outputs, measures its latency and, for classifiers, its val accuracy."""
    differences = []
    for size in (1, len(batch)):
        got = np.asarray(written.predict(batch[:size]))
        if got.shape != expected[:size].shape:
            raise ExportFailure(
                f"{written.runtime} gave outputs of shape {got.shape} for a batch of {size}; "
                f"the Keras model gives {expected[:size].shape}"
            )
        differences.append(float(np.max(np.abs(got - expected[:size]))))
    max_diff = max(differences)
    result: dict[str, Any] = {
        "status": "ok",
        "runtime": written.runtime,
        **written.details,
        "check": "val accuracy change" if written.quantized else f"max abs diff <= {TOLERANCE}",
        "max_abs_diff": max_diff,
        "batch_sizes_checked": [1, len(batch)],
    }
    if not written.quantized and not max_diff <= TOLERANCE:
        raise ExportFailure(
            f"the model loaded in {written.runtime} differs from the Keras model by up to "
            f"{max_diff:.3g} (max abs), more than {TOLERANCE:g}"
        )
    if keras_accuracy is not None:
        accuracy = _accuracy(written.predict, val_x, val_y)
        result.update(
            val_accuracy=accuracy,
            keras_val_accuracy=keras_accuracy,
            val_accuracy_change=accuracy - keras_accuracy,
        )
    result["latency_ms_per_batch"] = _latency_ms(written.predict, batch)
    result["latency_batch_size"] = len(batch)
    return result


def _keras_predict(model: Any) -> Predict:
    import keras

    def predict(x: np.ndarray) -> np.ndarray:
        return keras.ops.convert_to_numpy(model(keras.ops.convert_to_tensor(x), training=False))

    return predict


def _accuracy(predict: Predict, x: np.ndarray, y: np.ndarray, batch_size: int = 64) -> float:
    hits = 0
    for start in range(0, len(x), batch_size):
        logits = predict(x[start : start + batch_size])
        hits += int(np.sum(np.argmax(logits, axis=-1) == y[start : start + batch_size]))
    return hits / len(x)


def _latency_ms(predict: Predict, batch: np.ndarray) -> float:
    """Median wall time of one batch through the loaded model, after warm-up calls."""
    for _ in range(3):
        predict(batch)
    times = []
    for _ in range(LATENCY_REPEATS):
        started = time.perf_counter()
        predict(batch)
        times.append(time.perf_counter() - started)
    return round(float(np.median(times)) * 1000, 4)


def _writers(backend: str) -> dict[str, Callable[..., Written]]:
    if backend == "tf":
        from dualtrain.export import tensorflow

        return {"saved_model": tensorflow.write_saved_model, "tflite": tensorflow.write_tflite}
    from dualtrain.export import torch

    return {"onnx": torch.write_onnx, "torch": torch.write_exported_program}


def _figure(result: dict[str, Any]) -> str:
    parts = [f"max abs diff {result['max_abs_diff']:.2g}"]
    if "val_accuracy_change" in result:
        change = result["val_accuracy_change"]
        parts.append(f"val accuracy {result['val_accuracy']:.4f} ({change:+.4f})")
    parts.append(f"{result['latency_ms_per_batch']:.2f} ms/batch of {result['latency_batch_size']}")
    return ", ".join(parts)


def _safe_name(name: str, default: str) -> str:
    cleaned = "".join(c if c.isalnum() or c == "_" else "_" for c in str(name))
    return cleaned if cleaned and not cleaned[0].isdigit() else default


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _quoted(path: Path) -> str:
    return str(path).replace("\\", "\\\\").replace("'", "\\'")


def _read_report(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    content = json.loads(path.read_text(encoding="utf-8"))
    return content if isinstance(content, dict) else {}


def _write_report(path: Path, report: dict[str, Any]) -> None:
    from dualtrain.run import write_json

    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, report)
