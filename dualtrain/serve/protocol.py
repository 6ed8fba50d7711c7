"""The two REST protocols the server speaks, as plain functions of JSON and NumPy.

TF Serving's (`POST /v1/models/<name>:predict`, `{"instances": ...}` or `{"inputs": ...}`) and
KServe's v2, the Open Inference Protocol (`POST /v2/models/<name>/infer`). A request body becomes
the model's inputs by name, each a NumPy array in the input's dtype with the batch first, checked
against the signature that `export/report.json` records; the outputs by name become the answer in
the shape the request asked for. Every mistake in a request is a `BadRequest`: one line that says
what is wrong and what would be right. Nothing here imports a framework or LitServe.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# The model version every answer names: one export is one version, as TF Serving's `<name>/1/`.
VERSION = "1"
SIGNATURE = "serving_default"

# NumPy dtype name -> the Open Inference Protocol's datatype and TensorFlow's DataType name.
V2_DATATYPES = {
    "bool": "BOOL",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "float16": "FP16",
    "float32": "FP32",
    "float64": "FP64",
}
TF_DATATYPES = {
    "bool": "DT_BOOL",
    "uint8": "DT_UINT8",
    "uint16": "DT_UINT16",
    "uint32": "DT_UINT32",
    "uint64": "DT_UINT64",
    "int8": "DT_INT8",
    "int16": "DT_INT16",
    "int32": "DT_INT32",
    "int64": "DT_INT64",
    "float16": "DT_HALF",
    "float32": "DT_FLOAT",
    "float64": "DT_DOUBLE",
}


class BadRequest(Exception):
    """A request the model cannot take: answered with this status and `{"error": message}`."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Tensor:
    """One input or output: its name, one sample's shape (batch left out) and NumPy dtype."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str

    @property
    def shown(self) -> str:
        """The full shape, batch first, as the report writes it: [null, 30]."""
        return json.dumps([None, *self.shape])

    def v2(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "datatype": V2_DATATYPES.get(self.dtype, self.dtype.upper()),
            "shape": [-1, *(-1 if d is None else d for d in self.shape)],
        }

    def tf(self) -> dict[str, Any]:
        dims = [-1, *(-1 if d is None else d for d in self.shape)]
        return {
            "dtype": TF_DATATYPES.get(self.dtype, "DT_INVALID"),
            "tensor_shape": {
                "dim": [{"size": str(d), "name": ""} for d in dims],
                "unknown_rank": False,
            },
            "name": self.name,
        }


@dataclass(frozen=True)
class Model:
    """What the server serves: the model's name, the format and its file, and its signature.

    Built from `export/report.json` in the command's process; sent (pickled) to LitServe's
    inference worker, which loads `path` in the format's runtime.
    """

    name: str
    format: str
    path: Path
    runtime: str
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]

    @classmethod
    def from_report(cls, report: Mapping[str, Any], name: str, fmt: str, path: Path) -> Model:
        """Raises:
        ValueError: report.json's inputs or outputs are not a list of {name, shape, dtype}
            with a known dtype and a shape of positive sizes (or null) after the batch."""
        entry = report["formats"][fmt]
        runtime = entry.get("runtime", fmt)
        return cls(
            name=name,
            format=fmt,
            path=path,
            runtime=" ".join(runtime.split()) if isinstance(runtime, str) else fmt,
            inputs=tensors(report["inputs"], "inputs"),
            outputs=tensors(report["outputs"], "outputs"),
        )

    @property
    def input_names(self) -> str:
        return ", ".join(f"{t.name} {t.shown} {t.dtype}" for t in self.inputs)


def tensors(entries: Any, where: str) -> tuple[Tensor, ...]:
    """report.json's inputs or outputs, checked: they are data, and every request is checked
    against them."""
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{where} is not a non-empty list")
    found = []
    for i, e in enumerate(entries):
        shape = e.get("shape") if isinstance(e, dict) else None
        if not (
            isinstance(e, dict)
            and isinstance(e.get("name"), str)
            and e["name"]
            and e.get("dtype") in V2_DATATYPES
            and isinstance(shape, list)
            and shape
            and all(
                d is None or (isinstance(d, int) and not isinstance(d, bool) and d > 0)
                for d in shape[1:]
            )
        ):
            raise ValueError(
                f"{where}[{i}] is not {{name, shape, dtype}} with a shape of positive sizes or "
                f"null and a dtype of {', '.join(V2_DATATYPES)}"
            )
        found.append(Tensor(e["name"], tuple(shape[1:]), e["dtype"]))
    if len({t.name for t in found}) < len(found):
        raise ValueError(f"{where} names a tensor twice")
    return tuple(found)


Named = dict[str, np.ndarray]


@dataclass(frozen=True)
class Parsed:
    """A request's inputs by name (the batch first) and how to answer it.

    Attributes:
        style: "instances" or "inputs" (TF Serving's row and columnar formats) or "v2".
        outputs: the outputs to answer with (v2's `outputs`; all of them otherwise).
        request_id: v2's `id`, echoed in the answer.
    """

    inputs: Named
    style: str
    outputs: tuple[str, ...]
    request_id: str | None = None

    @property
    def size(self) -> int:
        return len(next(iter(self.inputs.values())))


def parse_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except UnicodeDecodeError as err:
        raise BadRequest(f"the body is not UTF-8 text ({err.reason}); send JSON") from err
    except RecursionError as err:
        raise BadRequest(
            "the body's JSON is nested too deeply; send a tensor as nested lists"
        ) from err
    except json.JSONDecodeError as err:
        raise BadRequest(
            f"the body is not valid JSON ({err.msg} at line {err.lineno} column {err.colno})"
        ) from err
    except ValueError as err:  # an integer of more digits than Python converts (4,300)
        raise BadRequest(
            "the body's JSON holds a number of more than 4,300 digits; send numbers the "
            "model's dtype can hold"
        ) from err


def parse_tf_serving(model: Model, body: Any) -> Parsed:
    """TF Serving's predict request: `{"instances": [...]}` (a value per sample, or an object of
    values by input name) or `{"inputs": ...}` (a tensor, or an object of tensors by name)."""
    if not isinstance(body, dict):
        raise BadRequest(
            'the body must be a JSON object with "instances" (a list, one item per sample) or '
            '"inputs" (a tensor, or an object by input name)'
        )
    signature = body.get("signature_name", SIGNATURE)
    if signature != SIGNATURE:
        raise BadRequest(
            f'signature_name {signature!r} is not served; the only one is "{SIGNATURE}"'
        )
    unknown = sorted(set(body) - {"instances", "inputs", "signature_name"})
    if unknown:
        raise BadRequest(
            f"unknown field{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
            'a predict request has "instances" or "inputs", and optionally "signature_name"'
        )
    names = tuple(t.name for t in model.outputs)
    if ("instances" in body) == ("inputs" in body):
        raise BadRequest(
            'give either "instances" (row format: a list, one item per sample) or "inputs" '
            "(columnar format), not " + ("both" if "instances" in body else "neither")
        )
    if "instances" in body:
        return Parsed(_instances(model, body["instances"]), "instances", names)
    return Parsed(_columns(model, body["inputs"]), "inputs", names)


def _instances(model: Model, instances: Any) -> Named:
    if not isinstance(instances, list) or not instances:
        raise BadRequest('"instances" must be a non-empty list, one item per sample')
    by_object = [isinstance(item, dict) for item in instances]
    if len(model.inputs) > 1 and not all(by_object):
        at = by_object.index(False)
        raise BadRequest(
            f"instance {at} is not an object; this model takes several inputs, so each instance "
            f"is an object by input name: {model.input_names}"
        )
    if any(by_object) and not all(by_object):
        raise BadRequest("instances mix objects and plain values; use one form for all of them")
    if not all(by_object):  # one input, each instance its value
        (tensor,) = model.inputs
        return {tensor.name: _stacked(tensor, instances)}
    for i, item in enumerate(instances):
        _check_names(model, item, f"instance {i}")
    return {t.name: _stacked(t, [item[t.name] for item in instances]) for t in model.inputs}


def _stacked(tensor: Tensor, values: list[Any]) -> np.ndarray:
    """One input's values, one per instance, as a batch."""
    array = _array(tensor, values)
    if not _fits(array.shape[1:], tensor.shape):
        raise BadRequest(
            f"input {tensor.name!r} takes {tensor.shown}: each instance "
            f"{json.dumps(list(tensor.shape))}; got instances of shape "
            f"{json.dumps(list(array.shape[1:]))}"
        )
    return array


def _columns(model: Model, inputs: Any) -> Named:
    if len(model.inputs) == 1 and not isinstance(inputs, dict):
        (tensor,) = model.inputs
        named = {tensor.name: _batch(tensor, inputs)}
    else:
        if not isinstance(inputs, dict):
            raise BadRequest(
                f'"inputs" must be an object by input name; this model takes {model.input_names}'
            )
        _check_names(model, inputs, '"inputs"')
        named = {t.name: _batch(t, inputs[t.name]) for t in model.inputs}
    _same_batch(named)
    return named


def _batch(tensor: Tensor, value: Any) -> np.ndarray:
    array = _array(tensor, value)
    if array.ndim == 0 or not _fits(array.shape[1:], tensor.shape):
        raise BadRequest(
            f"input {tensor.name!r} takes shape {tensor.shown} (the batch first); "
            f"got {json.dumps(list(array.shape))}"
        )
    if len(array) == 0:
        raise BadRequest(f"input {tensor.name!r} has no samples; send at least one")
    return array


def _same_batch(named: Named) -> None:
    sizes = {name: len(a) for name, a in named.items()}
    if len(set(sizes.values())) > 1:
        shown = ", ".join(f"{n} {s}" for n, s in sizes.items())
        raise BadRequest(
            f"the inputs have different batch sizes ({shown}); give each the same number of samples"
        )


def _check_names(model: Model, given: Mapping[str, Any], where: str) -> None:
    wanted = [t.name for t in model.inputs]
    unknown = [k for k in given if k not in wanted]
    if unknown:
        raise BadRequest(
            f"{where} names unknown input {unknown[0]!r}; the model's inputs are "
            f"{model.input_names}"
        )
    missing = [n for n in wanted if n not in given]
    if missing:
        raise BadRequest(
            f"{where} lacks input {missing[0]!r}; the model's inputs are {model.input_names}"
        )


def parse_v2(model: Model, body: Any) -> Parsed:
    """The Open Inference Protocol's inference request: `{"inputs": [{"name", "shape",
    "datatype", "data"}], "outputs": [{"name"}] (optional), "id" (optional)}`."""
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list):
        raise BadRequest(
            'the body must be a JSON object with "inputs": a list of {"name", "shape", '
            '"datatype", "data"}, one per model input'
        )
    by_name = {t.name: t for t in model.inputs}
    named: Named = {}
    for i, entry in enumerate(body["inputs"]):
        if not isinstance(entry, dict):
            raise BadRequest(
                f'"inputs"[{i}] must be an object with "name", "shape", "datatype", "data"'
            )
        lacking = [k for k in ("name", "shape", "datatype", "data") if k not in entry]
        if lacking:
            raise BadRequest(
                f'"inputs"[{i}] lacks {", ".join(map(repr, lacking))}; each input has "name", '
                '"shape", "datatype", "data"'
            )
        name = entry["name"]
        tensor = by_name.get(name) if isinstance(name, str) else None
        if tensor is None:
            raise BadRequest(f"unknown input {name!r}; the model's inputs are {model.input_names}")
        if name in named:
            raise BadRequest(f"input {name!r} is given twice; give each input once")
        shape = entry["shape"]
        if not (
            isinstance(shape, list)
            and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
        ):
            raise BadRequest(
                f'input {name!r}: "shape" must be a list of non-negative integers, e.g. '
                f"{json.dumps([1, *(d or 1 for d in tensor.shape)])}"
            )
        if len(shape) == 0 or not _fits(tuple(shape[1:]), tensor.shape):
            raise BadRequest(
                f"input {name!r} takes shape {tensor.shown} (the batch first); "
                f"got {json.dumps(shape)}"
            )
        if shape[0] == 0:
            raise BadRequest(f"input {name!r} has no samples; send at least one")
        want = V2_DATATYPES.get(tensor.dtype, tensor.dtype.upper())
        if entry["datatype"] != want:
            raise BadRequest(
                f'input {name!r} is {want}, not {entry["datatype"]!r}; send "datatype": "{want}"'
            )
        array = _array(tensor, entry["data"])
        if array.size != math.prod(shape):
            raise BadRequest(
                f"input {name!r} has {array.size} values; its shape {json.dumps(shape)} needs "
                f"{math.prod(shape)} (data in row-major order)"
            )
        named[name] = array.reshape(shape)
    missing = [t.name for t in model.inputs if t.name not in named]
    if missing:
        raise BadRequest(
            f"input {missing[0]!r} is missing; the model's inputs are {model.input_names}"
        )
    _same_batch(named)
    outputs = tuple(t.name for t in model.outputs)
    asked = body.get("outputs")
    if asked is not None:
        if not isinstance(asked, list) or not all(
            isinstance(o, dict) and "name" in o for o in asked
        ):
            raise BadRequest(
                '"outputs" must be a list of {"name": ...}; leave it out for all outputs'
            )
        unknown = [o["name"] for o in asked if o["name"] not in outputs]
        if unknown:
            raise BadRequest(
                f"unknown output {unknown[0]!r}; the model's outputs are {', '.join(outputs)}"
            )
        outputs = tuple(dict.fromkeys(o["name"] for o in asked))  # each output once
    request_id = body.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequest(f'"id" must be a string (it is echoed in the answer); got {request_id!r}')
    return Parsed(named, "v2", outputs, request_id)


def check_answer_size(model: Model, parsed: Parsed, limit: int) -> None:
    """Refuses a request whose answer would hold more than `limit` values: a few bytes of input
    can ask for far more output (a language model's scores over its vocabulary at every position),
    which the worker would compute and the server write out as JSON. Sizes not fixed in
    report.json count as 1."""
    by_name = {t.name: t for t in model.outputs}
    per_sample = sum(math.prod(d or 1 for d in by_name[n].shape) for n in parsed.outputs)
    values = parsed.size * per_sample
    if values > limit:
        raise BadRequest(
            f"the answer would hold {values:,} values ({parsed.size:,} samples of {per_sample:,}), "
            f"more than the server answers ({limit:,}, --max-answer-values); send at most "
            f"{max(1, limit // per_sample):,} samples per request"
        )


def _array(tensor: Tensor, value: Any) -> np.ndarray:
    """JSON numbers (nested lists) -> an array in the input's dtype; anything else is refused."""
    name = tensor.name
    try:
        array = np.asarray(value)
    except ValueError as err:  # lists of different lengths
        raise BadRequest(
            f"input {name!r} is ragged (lists of different lengths); it takes {tensor.shown}"
        ) from err
    if array.dtype == object:
        raise BadRequest(
            f"input {name!r} is ragged or holds something other than numbers; it takes "
            f"{tensor.shown} {tensor.dtype}"
        )
    if array.dtype.kind not in "iuf":
        shown = {"U": "strings", "S": "strings", "b": "true/false"}.get(
            array.dtype.kind, array.dtype.name
        )
        raise BadRequest(
            f"input {name!r} holds {shown}, not numbers; it takes {tensor.dtype} values"
        )
    target = np.dtype(tensor.dtype)
    if target.kind in "iu":
        if array.dtype.kind == "f" and (
            not np.all(np.isfinite(array)) or not np.all(array == np.round(array))
        ):
            raise BadRequest(
                f"input {name!r} holds non-integer numbers; it takes {tensor.dtype} values (ids)"
            )
        info = np.iinfo(target)
        if array.size and (array.min() < info.min or array.max() > info.max):
            raise BadRequest(
                f"input {name!r} holds values outside {tensor.dtype}'s range "
                f"[{info.min}, {info.max}]"
            )
        # Integer inputs are ids (tokens, categories). The runtimes take a negative id as
        # counted from the end of an Embedding's table, and answer where Keras would fail.
        if array.size and array.min() < 0:
            raise BadRequest(
                f"input {name!r} holds a negative id ({int(array.min())}); ids are 0 or more"
            )
    with np.errstate(over="ignore"):  # a value beyond the dtype's range: refused below
        converted = np.ascontiguousarray(array, dtype=target)
    if (
        target.kind == "f"
        and array.dtype != target
        and np.any(np.isinf(converted) & np.isfinite(array))
    ):
        raise BadRequest(
            f"input {name!r} holds values beyond {tensor.dtype}'s range "
            f"(±{float(np.finfo(target).max):.4g})"
        )
    return converted


def _fits(got: tuple[int, ...], want: tuple[int | None, ...]) -> bool:
    return len(got) == len(want) and all(
        w is None or g == w for g, w in zip(got, want, strict=True)
    )


def answer(model: Model, parsed: Parsed, outputs: Named) -> dict[str, Any]:
    """The outputs by name -> the answer in the request's protocol and format."""
    if parsed.style == "v2":
        result: dict[str, Any] = {"model_name": model.name, "model_version": VERSION}
        if parsed.request_id is not None:
            result["id"] = parsed.request_id
        by_name = {t.name: t for t in model.outputs}
        result["outputs"] = [
            {
                "name": name,
                "datatype": by_name[name].v2()["datatype"],
                "shape": list(outputs[name].shape),
                "data": outputs[name].reshape(-1).tolist(),
            }
            for name in parsed.outputs
        ]
        return result
    single = len(model.outputs) == 1
    if parsed.style == "instances":
        if single:
            return {"predictions": outputs[model.outputs[0].name].tolist()}
        columns = {name: outputs[name].tolist() for name in parsed.outputs}
        return {"predictions": [{n: c[i] for n, c in columns.items()} for i in range(parsed.size)]}
    if single:
        return {"outputs": outputs[model.outputs[0].name].tolist()}
    return {"outputs": {name: outputs[name].tolist() for name in parsed.outputs}}


def model_status() -> dict[str, Any]:
    """TF Serving's GetModelStatus answer for the one version served."""
    return {
        "model_version_status": [
            {
                "version": VERSION,
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            }
        ]
    }


def tf_metadata(model: Model) -> dict[str, Any]:
    """TF Serving's GetModelMetadata answer: the serving signature's inputs and outputs."""
    return {
        "model_spec": {"name": model.name, "signature_name": "", "version": VERSION},
        "metadata": {
            "signature_def": {
                "signature_def": {
                    SIGNATURE: {
                        "inputs": {t.name: t.tf() for t in model.inputs},
                        "outputs": {t.name: t.tf() for t in model.outputs},
                        "method_name": "tensorflow/serving/predict",
                    }
                }
            }
        },
    }


# The Open Inference Protocol's `platform` for each format.
PLATFORMS = {
    "onnx": "onnxruntime_onnx",
    "torch": "pytorch_exportedprogram",
    "saved_model": "tensorflow_savedmodel",
    "tflite": "tensorflow_tflite",
}


def v2_metadata(model: Model) -> dict[str, Any]:
    return {
        "name": model.name,
        "versions": [VERSION],
        "platform": PLATFORMS.get(model.format, model.format),
        "inputs": [t.v2() for t in model.inputs],
        "outputs": [t.v2() for t in model.outputs],
    }
