"""SavedModel and TFLite, written in a TensorFlow-backend process and checked in their runtimes."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from dualtrain.export import ExportFailure, Signature, Written
from dualtrain.settings import Settings


def write_saved_model(
    model: keras.Model, directory: Path, signature: Signature, settings: Settings, batch: np.ndarray
) -> Written:
    """A SavedModel whose `serving_default` signature takes the named input with any batch size
    and returns the named output: what TF Serving loads."""
    _write_saved_model(model, directory, signature)
    serving = tf.saved_model.load(str(directory)).signatures["serving_default"]

    def predict(x: np.ndarray) -> np.ndarray:
        return serving(**{signature.input_name: tf.constant(x)})[signature.output_name].numpy()

    inputs = serving.structured_input_signature[1]
    return Written(
        path=directory,
        predict=predict,
        runtime="tf.saved_model.load",
        details={
            "signature": "serving_default",
            "inputs": {
                k: [None if d is None else int(d) for d in v.shape] for k, v in inputs.items()
            },
            "outputs": sorted(serving.structured_outputs),
        },
    )


def write_tflite(
    model: keras.Model, directory: Path, signature: Signature, settings: Settings, batch: np.ndarray
) -> Written:
    """A LiteRT (TFLite) flatbuffer converted from a SavedModel, quantized as
    `export.tflite_quantize` says: none, dynamic (int8 weights) or float16 (float16 weights)."""
    saved = directory / "saved_model.tmp"
    _write_saved_model(model, saved, signature)
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
    quantize = settings.export.tflite_quantize
    if quantize != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    try:
        flatbuffer = converter.convert()
    except Exception as err:  # the converter's errors name the op it cannot convert
        raise ExportFailure(f"the TFLite converter failed: {_first_line(err)}") from err
    finally:
        tf.io.gfile.rmtree(str(saved))
    path = directory / "model.tflite"
    path.write_bytes(flatbuffer)
    interpreter_class, runtime = _interpreter()
    with _without_native_info():
        interpreter = interpreter_class(model_path=str(path))
        interpreter.allocate_tensors()
    [input_detail] = interpreter.get_input_details()
    [output_detail] = interpreter.get_output_details()

    def predict(x: np.ndarray) -> np.ndarray:
        # The flatbuffer keeps a dynamic batch (shape_signature -1); set this call's size.
        if tuple(input_detail["shape"]) != x.shape:
            interpreter.resize_tensor_input(input_detail["index"], list(x.shape))
            interpreter.allocate_tensors()
            input_detail["shape"] = np.array(x.shape)
        interpreter.set_tensor(input_detail["index"], x.astype(np.float32))
        interpreter.invoke()
        return np.array(interpreter.get_tensor(output_detail["index"]))

    return Written(
        path=path,
        predict=predict,
        runtime=runtime,
        details={
            "quantize": quantize,
            "signatures": interpreter.get_signature_list(),
            "input_shape_signature": [int(d) for d in input_detail["shape_signature"]],
        },
        quantized=quantize != "none",
    )


def _write_saved_model(model: keras.Model, directory: Path, signature: Signature) -> None:
    archive = keras.export.ExportArchive()
    archive.track(model)
    spec = tf.TensorSpec((None, *signature.input_shape), tf.float32, name=signature.input_name)

    def serve(inputs: Any) -> dict[str, Any]:
        return {signature.output_name: model(inputs, training=False)}

    archive.add_endpoint(name="serving_default", fn=serve, input_signature=[spec])
    # TensorFlow's saver logs "Assets written to: ..." at INFO, which Hydra's root logger shows;
    # the run's own report names what was written.
    tf_logger = logging.getLogger("tensorflow")
    level = tf_logger.level
    tf_logger.setLevel(logging.WARNING)
    try:
        archive.write_out(str(directory), verbose=False)
    except Exception as err:
        raise ExportFailure(f"writing the SavedModel failed: {_first_line(err)}") from err
    finally:
        tf_logger.setLevel(level)


@contextlib.contextmanager
def _without_native_info() -> Iterator[None]:
    """LiteRT's C++ runtime prints "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." on
    file descriptor 2, out of Python logging's reach: the block's native stderr is collected, and
    all but such INFO lines are passed on (errors and warnings still show)."""
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
            kept = "".join(line for line in lines if not line.startswith("INFO: "))
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()


def _interpreter() -> tuple[Any, str]:
    """LiteRT's interpreter (ai-edge-litert), else TensorFlow's own (deprecated in TF 2.20+)."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, "ai_edge_litert.interpreter"
    except ImportError:
        return tf.lite.Interpreter, "tf.lite.Interpreter"


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
