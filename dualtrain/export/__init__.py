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

import contextlib
import importlib
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dualtrain.data import DataInfo, structure
from dualtrain.data.dataset import ArrayDataset
from dualtrain.errors import ConfigError, DualtrainError, RunError
from dualtrain.settings import Settings

# The backend whose process writes each format, and the module and function that write it (imported
# only when the format is asked for: a format's own dependencies stay optional).
WRITERS = {
    "saved_model": ("tf", "dualtrain.export.tensorflow", "write_saved_model"),
    "tflite": ("tf", "dualtrain.export.tensorflow", "write_tflite"),
    "tfjs": ("tf", "dualtrain.export.tfjs", "write_tfjs"),
    "onnx": ("torch", "dualtrain.export.torch", "write_onnx"),
    "torch": ("torch", "dualtrain.export.torch", "write_exported_program"),
    "executorch": ("torch", "dualtrain.export.executorch", "write_executorch"),
}
FORMAT_BACKENDS = {name: backend for name, (backend, _, _) in WRITERS.items()}
# float32 formats must reproduce the Keras model's outputs within this (max abs). The runtimes
# reorder float32 sums (fused kernels, XNNPACK): measured up to 7.6e-6 on the trained cnn's logits
# (docs/export.md), so 1e-4 leaves room and still flags a real conversion error.
TOLERANCE = 1e-4
LATENCY_REPEATS = 20
# The val samples checked where the val split is a batch source, not read whole.
BATCH_SOURCE_SAMPLES = 1024

CommandFor = Callable[[list[str], Path], list[str]]
# A format's model as loaded back in its runtime: inputs by name -> outputs by name (NumPy).
Run = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
# Kept for callers of the one-input form: a batch -> outputs, as the Keras model takes them.
Predict = Callable[[Any], Any]


class ExportFailure(DualtrainError):
    """One format could not be written or did not pass its check; the others go on."""


@dataclass(frozen=True)
class Port:
    """One input or output of an exported model.

    Attributes:
        name: the name the exported signature gives it (letters, digits and `_`).
        shape: one sample's shape (batch left out).
        dtype: NumPy's name for its dtype ("float32", "int32", ...).
        key: where it sits in what the Keras model takes or returns: a dict key, a position in
            a list, or None for the only one.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    key: str | int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "shape": [None, *self.shape], "dtype": self.dtype}


@dataclass(frozen=True, init=False)
class Signature:
    """The inputs and outputs every exported format has, by name, and how the Keras model takes
    and returns them (`input_kind`, `output_kind`: array | dict | tuple, data/structure.py).

    `Signature(input_name=..., input_shape=..., output_name=...)` is the one float input, one
    output form.
    """

    inputs: tuple[Port, ...]
    outputs: tuple[Port, ...]
    input_kind: str
    output_kind: str

    def __init__(
        self,
        inputs: tuple[Port, ...] = (),
        outputs: tuple[Port, ...] = (),
        input_kind: str = structure.ARRAY,
        output_kind: str = structure.ARRAY,
        *,
        input_name: str | None = None,
        input_shape: tuple[int, ...] = (),
        output_name: str | None = None,
    ) -> None:
        if input_name is not None:
            inputs = (Port(input_name, tuple(input_shape), "float32"),)
        if output_name is not None:
            outputs = (Port(output_name, (), "float32"),)
        object.__setattr__(self, "inputs", tuple(inputs))
        object.__setattr__(self, "outputs", tuple(outputs))
        object.__setattr__(self, "input_kind", input_kind)
        object.__setattr__(self, "output_kind", output_kind)

    @property
    def single_input(self) -> bool:
        return self.input_kind == structure.ARRAY

    @property
    def single_output(self) -> bool:
        return self.output_kind == structure.ARRAY

    def feed(self, x: Any) -> dict[str, np.ndarray]:
        """Features as the data gives them (one array, a dict or a tuple) -> by input name, in
        each input's dtype."""
        if self.single_input:
            leaves = {self.inputs[0].name: x}
        else:
            leaves = {p.name: x[p.key] for p in self.inputs}
        return {
            p.name: np.ascontiguousarray(np.asarray(leaves[p.name]), dtype=p.dtype)
            for p in self.inputs
        }

    def model_inputs(self, named: Mapping[str, Any]) -> Any:
        """Inputs by name -> the structure the Keras model is called with."""
        if self.single_input:
            return named[self.inputs[0].name]
        if self.input_kind == structure.DICT:
            return {p.key: named[p.name] for p in self.inputs}
        return [named[p.name] for p in self.inputs]

    def outputs_by_name(self, result: Any) -> dict[str, Any]:
        """What the Keras model returned -> outputs by name."""
        if self.single_output:
            return {self.outputs[0].name: result}
        return {p.name: result[p.key] for p in self.outputs}

    def model_outputs(self, named: Mapping[str, Any]) -> Any:
        """Outputs by name -> the structure the Keras model returns."""
        if self.single_output:
            return named[self.outputs[0].name]
        if self.output_kind == structure.DICT:
            return {p.key: named[p.name] for p in self.outputs}
        return [named[p.name] for p in self.outputs]

    def to_json(self) -> dict[str, Any]:
        return {
            "inputs": [p.to_json() for p in self.inputs],
            "outputs": [p.to_json() for p in self.outputs],
        }


@dataclass(frozen=True)
class ExportJob:
    """What a format's writer gets: the model with its trained weights, the directory to write
    into (empty), the signature every format has, the run's settings, an odd-sized batch of val
    features (an example for tracing, and the first check), and `calibration`, which draws a
    sample of the training features for a writer that calibrates (TFLite's int8)."""

    model: Any
    directory: Path
    signature: Signature
    settings: Settings
    batch: Any
    calibration: Callable[[], Any]


@dataclass(frozen=True)
class Written:
    """What a format writer returns: where it wrote, the loaded model, and facts for the report.

    Attributes:
        run: the model as loaded back in its runtime, inputs by name -> outputs by name.
        interface: its inputs and outputs as that runtime reports them: {"inputs": [...],
            "outputs": [...]}, each {"name", "shape" (None where any size goes), "dtype"}.
    """

    path: Path
    run: Run
    signature: Signature
    runtime: str
    interface: dict[str, list[dict[str, Any]]]
    details: dict[str, Any]
    quantized: bool = False

    def predict(self, x: Any) -> Any:
        """Like the Keras model: features as the data gives them -> outputs as it returns them."""
        return self.signature.model_outputs(self.run(self.signature.feed(x)))


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
    if record.get("ema") is not None:
        ema = record["ema"]
        print(f"export: the weights are the run's moving average (trainer.ema={ema['momentum']})")
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
    from dualtrain.run import load_trained, weights_words

    engine, checkpoint, source = load_trained(settings, averaged=True)
    model = engine.model
    val = _in_memory(engine.data.val)
    # Odd batch sizes: an exported model with a batch dimension fixed to anything is caught.
    batch_x, _ = val.rows(np.arange(min(37, len(val))))
    signature, expected = _signature(model, engine.data.info, batch_x)
    fed = signature.feed(batch_x)
    tasks = _output_tasks(signature, engine.data.info, model, expected)
    reference = _keras_run(model, signature)
    keras_accuracy = _accuracies(reference, signature, val, tasks)
    report_path = settings.run_dir / "export" / "report.json"
    for name in settings.export.formats:
        directory = settings.run_dir / "export" / name
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        started = time.perf_counter()
        try:
            job = ExportJob(
                model, directory, signature, settings, batch_x,
                calibration=lambda: _calibration(engine.data.train),
            )  # fmt: skip
            written = _writer(name)(job)
            result = _check(written, fed, expected, val, tasks, keras_accuracy)
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
            weights=weights_words(checkpoint, averaged=True),
            tolerance=TOLERANCE,
            **signature.to_json(),
        )
        report.setdefault("formats", {})[name] = result
        _write_report(report_path, report)
    return _read_report(report_path)


@dataclass(frozen=True)
class _Task:
    """The target an output meets: its name, task and number of classes."""

    target: str
    task: str | None
    num_classes: int | None

    @property
    def classifier(self) -> bool:
        return self.task == "classification" and self.num_classes is not None


def _signature(model: Any, info: DataInfo, x: Any) -> tuple[Signature, dict[str, np.ndarray]]:
    """The model's inputs as the data names them, in the dtype of the model's Input (int32 token
    ids stay int32), and its outputs as it returns them on `x`; also those outputs by name."""
    declared = _declared_inputs(model, info.input_kind)
    inputs = []
    for i, spec in enumerate(info.inputs):
        if info.input_kind == structure.ARRAY:
            key: str | int | None = None
            tensor = declared[0] if declared else None
            name = _input_name(tensor, "input")
        elif info.input_kind == structure.DICT:
            key, name = spec.name, _safe_name(spec.name, f"input_{i}")
            tensor = declared.get(spec.name) if isinstance(declared, dict) else None
        else:
            key = i
            tensor = declared[i] if declared and len(declared) > i else None
            name = _input_name(tensor, f"input_{i}")
        inputs.append(Port(name, _shape(tensor, spec.shape), _dtype(tensor, spec.dtype), key))
    kind = info.input_kind if info.input_kind in (structure.DICT, structure.TUPLE) else "array"
    signature = Signature(tuple(_unique(inputs, "input")), (), kind)
    result = _keras_call(model, signature.model_inputs(signature.feed(x)))
    output_kind = structure.kind(result)
    if output_kind == structure.DICT:
        keys: list[str | int | None] = list(result)
        names = [str(k) for k in result]
    elif output_kind == structure.TUPLE:
        given = list(getattr(model, "output_names", None) or [])
        keys = list(range(len(result)))
        names = given if len(given) == len(result) else [f"output_{i}" for i in keys]
    elif output_kind == structure.ARRAY:
        keys, names = [None], [(getattr(model, "output_names", None) or ["output"])[0]]
    else:
        raise RunError("export: the model returned nothing; it needs at least one output")
    outputs = []
    for i, (key, name) in enumerate(zip(keys, names, strict=True)):
        value = result if key is None else result[key]
        if not isinstance(value, np.ndarray):
            raise RunError(
                f"export: the model's output {name!r} is a {type(value).__name__}, not one "
                "tensor; the formats take outputs that are tensors (one, a dict or a list)"
            )
        name = _safe_name(name, f"output_{i}")
        outputs.append(Port(name, value.shape[1:], value.dtype.name, key))
    signature = Signature(signature.inputs, tuple(_unique(outputs, "output")), kind, output_kind)
    return signature, signature.outputs_by_name(result)


def _declared_inputs(model: Any, kind: str) -> Any:
    """The model's Input tensors in the structure it was built with (a dict by key, a list, or
    one); None for a model with no Inputs (subclassed)."""
    try:
        declared = model.input
    except (AttributeError, ValueError):
        return None
    if kind == structure.DICT:  # Inputs by key, or by name where the model took a list
        if isinstance(declared, Mapping):
            return dict(declared)
        return {t.name: t for t in declared} if isinstance(declared, (list, tuple)) else None
    if isinstance(declared, (list, tuple)):
        return list(declared)
    return [declared] if declared is not None else None


def _input_name(tensor: Any, default: str) -> str:
    """An Input's name; `default` for one Keras named itself ("keras_tensor_7": a count of the
    process's tensors, which differs between the exporting processes)."""
    name = str(getattr(tensor, "name", "") or "")
    return default if not name or name.startswith("keras_tensor") else _safe_name(name, default)


def _shape(tensor: Any, data_shape: tuple[int, ...]) -> tuple[int, ...]:
    shape = tuple(getattr(tensor, "shape", None) or (None, *data_shape))[1:]
    if len(shape) != len(data_shape):
        return tuple(data_shape)
    return tuple(int(s if d is None else d) for d, s in zip(shape, data_shape, strict=True))


def _dtype(tensor: Any, data_dtype: str) -> str:
    """The model's Input dtype decides; without one, the data's (float64 as float32)."""
    if tensor is not None and getattr(tensor, "dtype", None):
        return str(np.dtype(str(tensor.dtype)))
    return "float32" if np.dtype(data_dtype).kind == "f" else str(np.dtype(data_dtype))


def _unique(ports: list[Port], what: str) -> list[Port]:
    names = [p.name for p in ports]
    if len(set(names)) != len(names):
        raise RunError(
            f"export: the model's {what}s {names} are not distinct once made signature names "
            "(letters, digits, _); name them apart"
        )
    return ports


def _output_tasks(
    signature: Signature, info: DataInfo, model: Any, expected: dict[str, np.ndarray]
) -> dict[str, _Task]:
    """Which target each output meets, by output name (outputs without a target left out)."""
    from dualtrain.engines.targets import match_outputs

    if info.target_kind == structure.NONE:
        return {}
    match = match_outputs(
        info, model, signature.model_outputs(expected), f"recipe {type(model).__name__}"
    )
    tasks = {}
    for target, output in zip(match.targets, match.outputs, strict=True):
        if signature.single_output:
            port = signature.outputs[0]
        elif signature.output_kind == structure.DICT:
            port = next(p for p in signature.outputs if p.key == output)
        else:
            port = signature.outputs[list(match.output_names).index(output)]
        spec = info.target(target)
        classes = spec.num_classes if port.shape == (spec.num_classes,) else None
        tasks[port.name] = _Task(target, spec.task, classes)
    return tasks


def _calibration(train: Any) -> Any:
    """The training features that calibrate an int8 model: `CALIBRATION_SAMPLES` drawn at
    random (seeded, so an export is repeatable) from the training split, or its first ones
    where the split is a batch source."""
    from dualtrain.export.tensorflow import CALIBRATION_SAMPLES

    if isinstance(train, ArrayDataset):
        rows = np.random.default_rng(0).permutation(len(train))[:CALIBRATION_SAMPLES]
        x, _ = train.rows(np.sort(rows))
    else:
        head = train.head(CALIBRATION_SAMPLES)
        x, _ = head.rows(np.arange(len(head)))
    return x


def _in_memory(val: Any) -> ArrayDataset:
    """The val split as arrays; of a split of batches that a source makes (a PyDataset, which
    is not read whole), its first `BATCH_SOURCE_SAMPLES` samples."""
    if isinstance(val, ArrayDataset):
        return val
    head: ArrayDataset = val.head(BATCH_SOURCE_SAMPLES)
    return head


def _check(
    written: Written,
    fed: dict[str, np.ndarray],
    expected: dict[str, np.ndarray],
    val: ArrayDataset,
    tasks: dict[str, _Task],
    keras_accuracy: dict[str, float],
) -> dict[str, Any]:
    """Runs the loaded model on batches of 1 and of N, compares each output with the Keras
    model's, measures its latency and, for each classification output, its val accuracy."""
    signature = written.signature
    interface = _interface_mismatch(written)
    if interface:
        raise ExportFailure(interface)
    count = len(next(iter(fed.values())))
    differences: dict[str, list[float]] = {p.name: [] for p in signature.outputs}
    for size in (1, count):
        got = written.run({k: v[:size] for k, v in fed.items()})
        for port in signature.outputs:
            want = expected[port.name][:size]
            out = np.asarray(got[port.name])
            if out.shape != want.shape:
                raise ExportFailure(
                    f"{written.runtime} gave {_output(signature, port)} of shape {out.shape} for "
                    f"a batch of {size}; the Keras model gives {want.shape}"
                )
            differences[port.name].append(float(np.max(np.abs(out - want), initial=0.0)))
    per_output: dict[str, dict[str, Any]] = {}
    for port in signature.outputs:
        task = tasks.get(port.name)
        per_output[port.name] = {
            "task": task.task if task else None,
            "max_abs_diff": max(differences[port.name]),
        }
    max_diff = max(entry["max_abs_diff"] for entry in per_output.values())
    any_classifier = any(t.classifier for t in tasks.values())
    result: dict[str, Any] = {
        "status": "ok",
        "runtime": written.runtime,
        **written.details,
        "interface": written.interface,
        "check": (
            ("val accuracy change" if any_classifier else "max abs diff (quantized: reported only)")
            if written.quantized
            else f"max abs diff <= {TOLERANCE}"
        ),
        "max_abs_diff": max_diff,
        "batch_sizes_checked": [1, count],
    }
    if not written.quantized and not max_diff <= TOLERANCE:
        worst = max(per_output, key=lambda n: per_output[n]["max_abs_diff"])
        raise ExportFailure(
            f"the model loaded in {written.runtime} differs from the Keras model by up to "
            f"{max_diff:.3g} (max abs, output {worst!r}), more than {TOLERANCE:g}"
        )
    accuracy = _accuracies(written.run, signature, val, tasks)
    for name, value in accuracy.items():
        per_output[name].update(
            val_accuracy=value,
            keras_val_accuracy=keras_accuracy[name],
            val_accuracy_change=value - keras_accuracy[name],
        )
    if signature.single_output and accuracy:  # one output: its figures as they always were
        (name,) = accuracy
        result.update({k: v for k, v in per_output[name].items() if k.startswith(("val", "keras"))})
    result["per_output"] = per_output
    result["latency_ms_per_batch"] = _latency_ms(written.run, fed)
    result["latency_batch_size"] = count
    return result


def _interface_mismatch(written: Written) -> str | None:
    """Where the format's own inputs and outputs differ from the signature in names or dtypes
    (an exporter that widened int32 to int64, say); None where they agree."""
    for side in ("inputs", "outputs"):
        want = {p.name: p.dtype for p in getattr(written.signature, side)}
        got = {e["name"]: e["dtype"] for e in written.interface[side]}
        if set(got) != set(want):
            return (
                f"{written.runtime} names the {side} {sorted(got)}; the Keras model's are "
                f"{sorted(want)}"
            )
        # int8 inputs and outputs (TFLite's full-integer option) stand for float ones, with the
        # scales the details record.
        int8_io = written.details.get("io_dtype") == "int8"
        changed = [
            f"{n} as {got[n]}, not {want[n]}"
            for n in want
            if got[n] != want[n] and not (int8_io and got[n] == "int8")
        ]
        if changed:
            return f"{written.runtime} takes or gives {side[:-1]} {'; '.join(changed)}"
    return None


def _output(signature: Signature, port: Port) -> str:
    return "outputs" if signature.single_output else f"output {port.name!r}"


def _keras_call(model: Any, inputs: Any) -> Any:
    import keras

    result = model(structure.map_leaves(keras.ops.convert_to_tensor, inputs), training=False)
    if isinstance(result, (list, tuple)) and not isinstance(result, Mapping):
        result = list(result)
    return structure.map_leaves(keras.ops.convert_to_numpy, result)


def _keras_run(model: Any, signature: Signature) -> Run:
    def run(named: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return signature.outputs_by_name(_keras_call(model, signature.model_inputs(named)))

    return run


def _accuracies(
    run: Run, signature: Signature, val: ArrayDataset, tasks: dict[str, _Task], batch_size: int = 64
) -> dict[str, float]:
    """Val accuracy of each classification output (argmax of its scores against the labels)."""
    classifiers = {name: task for name, task in tasks.items() if task.classifier}
    if not classifiers:
        return {}
    hits = dict.fromkeys(classifiers, 0)
    for start in range(0, len(val), batch_size):
        x, y = val.rows(np.arange(start, min(start + batch_size, len(val))))
        got = run(signature.feed(x))
        labels = structure.named(y, classifiers[next(iter(classifiers))].target)
        for name, task in classifiers.items():
            truth = np.asarray(labels[task.target]).reshape(-1)
            hits[name] += int(np.sum(np.argmax(got[name], axis=-1) == truth))
    return {name: count / len(val) for name, count in hits.items()}


def _latency_ms(run: Run, fed: dict[str, np.ndarray]) -> float:
    """Median wall time of one batch through the loaded model, after warm-up calls."""
    for _ in range(3):
        run(fed)
    times = []
    for _ in range(LATENCY_REPEATS):
        started = time.perf_counter()
        run(fed)
        times.append(time.perf_counter() - started)
    return round(float(np.median(times)) * 1000, 4)


# The extra that installs each format's optional packages.
EXTRAS = {"onnx": "export", "tflite": "export", "executorch": "mobile"}


def _writer(name: str) -> Callable[[ExportJob], Written]:
    _, module, function = WRITERS[name]
    try:
        loaded = importlib.import_module(module)
    except ImportError as err:
        extra = EXTRAS.get(name, "all")
        raise ExportFailure(
            f"needs the {err.name or err} package: pip install -c constraints.txt "
            f"'dualtrain[{extra}]'"
        ) from err
    writer: Callable[[ExportJob], Written] = getattr(loaded, function)
    return writer


def _figure(result: dict[str, Any]) -> str:
    parts = [f"max abs diff {result['max_abs_diff']:.2g}"]
    if "val_accuracy_change" in result:
        change = result["val_accuracy_change"]
        parts.append(f"val accuracy {result['val_accuracy']:.4f} ({change:+.4f})")
    elif len(result.get("per_output", {})) > 1:  # several outputs: each classifier's accuracy
        for name, entry in result["per_output"].items():
            if "val_accuracy_change" in entry:
                change = entry["val_accuracy_change"]
                parts.append(f"{name} val accuracy {entry['val_accuracy']:.4f} ({change:+.4f})")
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


@contextlib.contextmanager
def quiet_python(
    loggers: tuple[str, ...], *categories: type[Warning], messages: tuple[str, ...] = ()
) -> Iterator[None]:
    """Converters print progress and warnings while they import and run; a run shows its own
    lines only. For the block: the named loggers at ERROR, stdout collected and dropped, and the
    warnings of `categories` (or whose message matches one of `messages`) ignored."""
    named = [logging.getLogger(n) for n in loggers]
    levels = [lg.level for lg in named]
    for lg in named:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            for category in categories:
                warnings.simplefilter("ignore", category)
            for message in messages:
                warnings.filterwarnings("ignore", message)
            yield
    finally:
        for lg, level in zip(named, levels, strict=True):
            lg.setLevel(level)


@contextlib.contextmanager
def native_stderr_without(
    chatter: tuple[str, ...], passed: list[str] | None = None
) -> Iterator[None]:
    """Runtimes' C++ code prints progress on file descriptor 2, out of Python logging's reach
    (LiteRT's "INFO: Created TensorFlow Lite XNNPACK delegate", XNNPACK's CPU probe): the
    block's native stderr is collected and passed on without the lines that start with
    `chatter` (errors and warnings still show); the lines passed on are also added to `passed`."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as collected:
        os.dup2(collected.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            collected.seek(0)
            lines = collected.read().decode(errors="replace").splitlines(keepends=True)
            kept = [line for line in lines if not line.startswith(chatter)]
            if passed is not None:
                passed.extend(kept)
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()
