"""SavedModel and TFLite, written in a TensorFlow-backend process and checked in their runtimes."""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from dualtrain.errors import first_line
from dualtrain.export import (
    ExportFailure,
    ExportJob,
    Port,
    Signature,
    Written,
    _latency_ms,
    native_stderr_without,
)

# What LiteRT's runtime and TFLite's int8 calibrator print from C++, hidden from the run's output.
LITERT_CHATTER = ("INFO: ", "fully_quantize: ")


def write_saved_model(job: ExportJob) -> Written:
    """A SavedModel whose `serving_default` signature takes each named input (in the dtype of
    the model's Input) with any batch size and returns a dict of the named outputs: what TF
    Serving loads."""
    model, directory, signature = job.model, job.directory, job.signature
    _write_saved_model(model, directory, signature)
    serving = tf.saved_model.load(str(directory)).signatures["serving_default"]

    def run(named: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        got = serving(**{k: tf.constant(v) for k, v in named.items()})
        return {k: v.numpy() for k, v in got.items()}

    inputs = serving.structured_input_signature[1]
    outputs = serving.structured_outputs
    details: dict[str, Any] = {
        "signature": "serving_default",
        "inputs": {k: [None if d is None else int(d) for d in v.shape] for k, v in inputs.items()},
        "outputs": sorted(outputs),
    }
    return Written(
        path=directory,
        run=run,
        signature=signature,
        runtime="tf.saved_model.load",
        interface={
            "inputs": _ordered(signature.inputs, [_spec(k, v) for k, v in inputs.items()]),
            "outputs": _ordered(signature.outputs, [_spec(k, v) for k, v in outputs.items()]),
        },
        details=details,
    )


def write_tflite(job: ExportJob) -> Written:
    """A LiteRT (TFLite) flatbuffer converted from a SavedModel, quantized as
    `export.tflite_quantize` says: none, dynamic (int8 weights), float16 (float16 weights) or
    int8 (full integer: weights and activations, their ranges calibrated on a sample of the
    training features, `job.calibration()`); its `serving_default` signature runner takes and
    returns the named inputs and outputs. With `export.tflite_int8_io` the flatbuffer's float
    inputs and outputs are int8 too: the check quantizes and dequantizes them with the scales it
    records."""
    model, directory, signature = job.model, job.directory, job.signature
    settings = job.settings
    batch = job.batch
    quantize = settings.export.tflite_quantize
    int8_io = quantize == "int8" and settings.export.tflite_int8_io
    if int8_io and any(np.dtype(p.dtype).kind != "f" for p in signature.inputs):
        raise ExportFailure(
            "export.tflite_int8_io=true makes float inputs int8, and this model also takes "
            f"{', '.join(p.name for p in signature.inputs if np.dtype(p.dtype).kind != 'f')} "
            "as integers; use export.tflite_int8_io=false (float32 inputs and outputs)"
        )
    saved = directory / "saved_model.tmp"
    _write_saved_model(model, saved, signature)
    try:
        calibration = job.calibration() if quantize == "int8" else None
        flatbuffer = _convert(saved, quantize, int8_io, signature, calibration)
        # A quantized model is reported beside the float one it came from: size and latency.
        plain = _convert(saved, "none", False, signature, None) if quantize != "none" else None
    finally:
        tf.io.gfile.rmtree(str(saved))
    path = directory / "model.tflite"
    path.write_bytes(flatbuffer)
    runner, interpreter, runtime = _runner(path, signature, batch, int8_io)
    input_details = runner.get_input_details()
    output_details = runner.get_output_details()
    scales = {k: v["quantization_parameters"] for k, v in input_details.items()}
    scales.update({k: v["quantization_parameters"] for k, v in output_details.items()})

    def run(named: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # The flatbuffer keeps a dynamic batch (shape_signature -1); the signature runner sizes
        # its inputs to each call's arrays.
        if int8_io:
            named = {k: _to_int8(v, scales[k]) for k, v in named.items()}
        got = runner(**named)
        if int8_io:
            return {k: _from_int8(v, scales[k]) for k, v in got.items()}
        return {k: np.array(v) for k, v in got.items()}

    details: dict[str, Any] = {
        "quantize": quantize,
        "signatures": interpreter.get_signature_list(),
    }
    if signature.single_input:
        [only] = input_details.values()
        details["input_shape_signature"] = [int(d) for d in only["shape_signature"]]
    if quantize == "int8":
        details["calibration_samples"] = _count(calibration)
        details["io_dtype"] = "int8" if int8_io else "float32"
        if int8_io:  # what a client needs to feed and read the int8 tensors
            details["io_quantization"] = {
                k: {"scale": float(v["scales"][0]), "zero_point": int(v["zero_points"][0])}
                for k, v in scales.items()
            }
    if plain is not None:
        float_path = directory / "float.tmp.tflite"
        float_path.write_bytes(plain)
        try:
            float_runner, _, _ = _runner(float_path, signature, batch, False)
            fed = signature.feed(batch)
            details["float_model"] = {
                "size_bytes": len(plain),
                "latency_ms_per_batch": _latency_ms(lambda n: float_runner(**n), fed),
            }
        finally:
            float_path.unlink()
    return Written(
        path=path,
        run=run,
        signature=signature,
        runtime=runtime,
        interface={
            "inputs": _ordered(signature.inputs, [_lite(k, v) for k, v in input_details.items()]),
            "outputs": _ordered(
                signature.outputs, [_lite(k, v) for k, v in output_details.items()]
            ),
        },
        details=details,
        quantized=quantize != "none",
    )


# Samples of the training features the int8 converter runs to find each activation's range.
CALIBRATION_SAMPLES = 256


def _convert(
    saved: Path, quantize: str, int8_io: bool, signature: Signature, calibration: Any
) -> bytes:
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
    if quantize != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if quantize == "int8":
        if calibration is None:
            raise ExportFailure("export.tflite_quantize=int8 needs training samples to calibrate")
        fed = signature.feed(calibration)

        def representative() -> Iterator[dict[str, np.ndarray]]:
            for i in range(_count(calibration)):
                yield {k: v[i : i + 1] for k, v in fed.items()}

        converter.representative_dataset = representative
        # Full integer: an op without an int8 kernel fails the conversion instead of staying
        # float (which the TFLite default does silently).
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if int8_io:
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
    try:
        # The int8 calibrator runs TensorFlow's deprecated interpreter (a warning the user can
        # do nothing about) and prints its settings from C++.
        with warnings.catch_warnings(), native_stderr_without(LITERT_CHATTER):
            warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
            flatbuffer: bytes = converter.convert()
    except Exception as err:  # the converter's errors name the op it cannot convert
        raise ExportFailure(f"the TFLite converter failed: {_converter_error(err)}") from err
    return flatbuffer


def _runner(path: Path, signature: Signature, batch: Any, int8_io: bool) -> tuple[Any, Any, str]:
    """The flatbuffer's `serving_default` signature runner, its interpreter and their name."""
    interpreter_class, runtime = _interpreter()
    with native_stderr_without(LITERT_CHATTER):
        interpreter = interpreter_class(model_path=str(path))
        runner = interpreter.get_signature_runner("serving_default")
        fed = signature.feed(batch)
        if int8_io:
            details = runner.get_input_details()
            fed = {k: _to_int8(v, details[k]["quantization_parameters"]) for k, v in fed.items()}
        runner(**fed)  # the first call makes the delegate, which says so
    return runner, interpreter, runtime


def _to_int8(values: np.ndarray, quantization: dict[str, Any]) -> np.ndarray:
    scale, zero = float(quantization["scales"][0]), int(quantization["zero_points"][0])
    return np.clip(np.round(values / scale) + zero, -128, 127).astype(np.int8)


def _from_int8(values: np.ndarray, quantization: dict[str, Any]) -> np.ndarray:
    scale, zero = float(quantization["scales"][0]), int(quantization["zero_points"][0])
    return ((np.asarray(values, dtype=np.float32) - zero) * scale).astype(np.float32)


def _count(calibration: Any) -> int:
    from dualtrain.data import structure

    return len(next(iter(structure.leaves(calibration)))) if calibration is not None else 0


def _write_saved_model(model: keras.Model, directory: Path, signature: Signature) -> None:
    archive = keras.export.ExportArchive()
    archive.track(model)
    # One argument per input, each named: the serving signature's keys are these names.
    specs = [
        tf.TensorSpec((None, *p.shape), tf.as_dtype(p.dtype), name=p.name) for p in signature.inputs
    ]

    def serve(*inputs: Any) -> dict[str, Any]:
        named = {p.name: x for p, x in zip(signature.inputs, inputs, strict=True)}
        return signature.outputs_by_name(model(signature.model_inputs(named), training=False))

    archive.add_endpoint(name="serving_default", fn=serve, input_signature=specs)
    # TensorFlow's saver logs "Assets written to: ..." at INFO, which Hydra's root logger shows;
    # the run's own report names what was written.
    tf_logger = logging.getLogger("tensorflow")
    level = tf_logger.level
    tf_logger.setLevel(logging.WARNING)
    try:
        archive.write_out(str(directory), verbose=False)
    except Exception as err:
        raise ExportFailure(f"writing the SavedModel failed: {first_line(err)}") from err
    finally:
        tf_logger.setLevel(level)


def _spec(name: str, spec: Any) -> dict[str, Any]:
    shape = [None if d is None else int(d) for d in spec.shape]
    return {"name": name, "shape": shape, "dtype": spec.dtype.as_numpy_dtype().dtype.name}


def _lite(name: str, detail: dict[str, Any]) -> dict[str, Any]:
    shape = [None if int(d) < 0 else int(d) for d in detail["shape_signature"]]
    return {"name": name, "shape": shape, "dtype": np.dtype(detail["dtype"]).name}


def _ordered(ports: tuple[Port, ...], entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A runtime's inputs or outputs in the signature's order (runtimes sort them by name)."""
    order = {p.name: i for i, p in enumerate(ports)}
    return sorted(entries, key=lambda e: order.get(e["name"], len(order)))


def _interpreter() -> tuple[Any, str]:
    """LiteRT's interpreter (ai-edge-litert), else TensorFlow's own (deprecated in TF 2.20+)."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, "ai_edge_litert.interpreter"
    except ImportError:
        return tf.lite.Interpreter, "tf.lite.Interpreter"


def _converter_error(err: Exception) -> str:
    """The converter's first error as one line: the op, what it lacks, and the layer it is in
    (its MLIR errors start with a long `loc(...)` call site)."""
    text = str(err)
    found = re.search(r"'(tf\.\w+)' op ([^\n]+)", text)
    if found is None:
        return first_line(err)
    op, said = found.group(1), found.group(2).strip()
    layer = re.search(r'"[^":]*:", "([^"@]+?)/[^/"@]*@', text)
    where = f" in {layer.group(1)}" if layer else ""
    message = f"{op}{where}: {said}"
    if op.startswith("tf.TensorList"):
        message += (
            "; the TFLite built-in ops run a recurrent layer's loop (LSTM, GRU) only with a "
            "fixed batch size, and the exported signature keeps the batch dynamic; the other "
            "way, Select TF ops, needs the Flex delegate, which neither LiteRT's interpreter nor "
            "tf.lite.Interpreter links"
        )
    return message
