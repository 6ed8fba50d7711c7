"""ONNX and torch.export ExportedPrograms, written in a PyTorch-backend process and checked in
onnxruntime and torch.export.load."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path
from typing import Any

import keras
import numpy as np
import torch

from dualtrain.export import ExportFailure, Signature, Written
from dualtrain.settings import Settings

# Large enough for any serving batch; torch.export needs an upper bound to reason about shapes.
MAX_BATCH = 1 << 20


class _Inference(torch.nn.Module):
    """The Keras model in inference mode (dropout off, normalization statistics fixed)."""

    def __init__(self, model: keras.Model) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, training=False)


def write_exported_program(
    model: keras.Model, directory: Path, signature: Signature, settings: Settings, batch: np.ndarray
) -> Written:
    """A torch.export ExportedProgram (.pt2) with a dynamic batch dimension, for TorchServe and
    ExecuTorch."""
    program = _export(model, batch)
    path = directory / "model.pt2"
    with _quiet():
        torch.export.save(program, str(path))
        loaded = torch.export.load(str(path)).module()

    def predict(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return loaded(torch.from_numpy(np.ascontiguousarray(x))).numpy()

    return Written(
        path=path,
        predict=predict,
        runtime="torch.export.load",
        details={"input": signature.input_name, "dynamic_batch": [1, MAX_BATCH]},
    )


def write_onnx(
    model: keras.Model, directory: Path, signature: Signature, settings: Settings, batch: np.ndarray
) -> Written:
    """ONNX from the torch.export graph (torch's dynamo exporter), with a dynamic batch axis."""
    try:
        import onnx
        import onnxruntime
    except ImportError as err:
        raise ExportFailure(
            f"needs the {err.name} package: pip install -c constraints.txt 'dualtrain[export]'"
        ) from err
    path = directory / "model.onnx"
    try:
        with _quiet():
            torch.onnx.export(
                _Inference(model).eval(),
                (torch.from_numpy(batch),),
                str(path),
                dynamo=True,
                input_names=[signature.input_name],
                output_names=[signature.output_name],
                dynamic_shapes=_dynamic_batch(),  # named: the ONNX input's first axis is "batch"
                external_data=False,
            )
    except ImportError as err:  # onnxscript, which the dynamo exporter needs
        raise ExportFailure(
            f"needs the {err.name} package: pip install -c constraints.txt 'dualtrain[export]'"
        ) from err
    except Exception as err:
        raise ExportFailure(f"torch.onnx.export failed: {_first_line(err)}") from err
    proto = onnx.load(str(path))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    [input_meta] = session.get_inputs()

    def predict(x: np.ndarray) -> np.ndarray:
        return session.run(None, {input_meta.name: x.astype(np.float32)})[0]

    return Written(
        path=path,
        predict=predict,
        runtime=f"onnxruntime {onnxruntime.__version__}",
        details={
            "opset": next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
            "input": input_meta.name,
            "input_shape": [d if isinstance(d, int) else str(d) for d in input_meta.shape],
            "outputs": [o.name for o in session.get_outputs()],
        },
    )


def _dynamic_batch() -> dict[str, Any]:
    return {"x": {0: torch.export.Dim("batch", min=1, max=MAX_BATCH)}}


def _export(model: keras.Model, batch: np.ndarray) -> Any:
    try:
        with _quiet():
            return torch.export.export(
                _Inference(model).eval(),
                (torch.from_numpy(batch),),
                dynamic_shapes=_dynamic_batch(),
            )
    except Exception as err:
        raise ExportFailure(f"torch.export could not trace the model: {_first_line(err)}") from err


@contextlib.contextmanager
def _quiet() -> Any:
    """The exporters print progress and warnings (e.g. torchvision ops skipped); a run shows
    its own lines only. The ONNX exporter's optimizer passes (onnxscript, onnx_ir) log a line at
    INFO per pass ("Removed 11 unused nodes"), which Hydra's root logger would show."""
    names = ("torch.onnx", "torch.export", "torch._export", "onnxscript", "onnx_ir")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
