"""Each format loaded in its own runtime, as the exporter loads it back to check it.

`load(model)` imports only the chosen format's runtime (in LitServe's inference worker) and returns
a function from inputs by name to outputs by name, NumPy in and out, any batch size.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from collections.abc import Callable

import numpy as np

from dualtrain.export import native_stderr_without
from dualtrain.serve.protocol import Model, Named

Run = Callable[[Named], Named]

# The package each format's runtime needs, and the extra that installs it.
PACKAGES = {
    "onnx": (("onnxruntime",), "export"),
    "torch": (("torch",), "torch"),
    "saved_model": (("tensorflow",), "tf"),
    "tflite": (("ai_edge_litert", "tensorflow"), "export"),  # LiteRT, else TensorFlow's own
}


def missing_runtime(fmt: str) -> str | None:
    """The install command for a format whose runtime is not installed; None if it is."""
    modules, extra = PACKAGES[fmt]
    if any(importlib.util.find_spec(m) is not None for m in modules):
        return None
    return f"{fmt} needs {modules[0]}: pip install -c constraints.txt 'dualtrain[{extra}]'"


def load(model: Model) -> Run:
    loader = {
        "onnx": _onnx,
        "torch": _torch,
        "saved_model": _saved_model,
        "tflite": _tflite,
    }[model.format]
    return loader(model)


def _onnx(model: Model) -> Run:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(model.path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]

    def run(named: Named) -> Named:
        return dict(zip(names, session.run(names, named), strict=True))

    return run


def _torch(model: Model) -> Run:
    import torch

    with contextlib.redirect_stdout(sys.stderr):  # torch.export.load's notices are not answers
        module = torch.export.load(str(model.path)).module()
    single_input = len(model.inputs) == 1
    single_output = len(model.outputs) == 1

    def run(named: Named) -> Named:
        tensors = {k: torch.from_numpy(v) for k, v in named.items()}
        with torch.inference_mode():
            got = module(tensors[model.inputs[0].name] if single_input else tensors)
        if single_output:
            return {model.outputs[0].name: got.numpy()}
        return {k: v.numpy() for k, v in got.items()}

    return run


def _saved_model(model: Model) -> Run:
    from dualtrain.engines import select_backend

    select_backend("tf")  # TensorFlow imported without its start-up notices, as a tf run does
    import tensorflow as tf

    serving = tf.saved_model.load(str(model.path)).signatures["serving_default"]

    def run(named: Named) -> Named:
        got = serving(**{k: tf.constant(v) for k, v in named.items()})
        return {k: v.numpy() for k, v in got.items()}

    return run


def _tflite(model: Model) -> Run:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # TensorFlow's own, deprecated since TF 2.20
        from dualtrain.engines import select_backend

        select_backend("tf")
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    with native_stderr_without(("INFO: ",)):
        interpreter = Interpreter(model_path=str(model.path))
        runner = interpreter.get_signature_runner("serving_default")
        # The first call makes the XNNPACK delegate, which prints a line on file descriptor 2.
        runner(**{t.name: np.zeros((1, *(d or 1 for d in t.shape)), t.dtype) for t in model.inputs})

    def run(named: Named) -> Named:
        # The flatbuffer keeps a dynamic batch; the signature runner sizes its inputs to each call.
        return {k: np.array(v) for k, v in runner(**named).items()}

    return run


def describe(error: BaseException) -> str:
    """An exception's first line, for a one-line answer."""
    text = str(error).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


__all__ = ["PACKAGES", "Run", "describe", "load", "missing_runtime"]
