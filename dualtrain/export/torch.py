"""ONNX and torch.export ExportedPrograms, written in a PyTorch-backend process and checked in
onnxruntime and torch.export.load."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import torch

from dualtrain.errors import first_line
from dualtrain.export import ExportFailure, ExportJob, Signature, Written, quiet_python

# Large enough for any serving batch; torch.export needs an upper bound to reason about shapes.
MAX_BATCH = 1 << 20


class _Inference(torch.nn.Module):
    """The Keras model in inference mode (dropout off, normalization statistics fixed), called
    with one tensor (one input) or a dict of tensors by input name, returning one tensor (one
    output) or a dict by output name."""

    def __init__(self, model: keras.Model, signature: Signature | None = None) -> None:
        super().__init__()
        self.model = model
        self.signature = signature

    def forward(self, x: Any) -> Any:
        if self.signature is None:
            return self.model(x, training=False)
        named = {self.signature.inputs[0].name: x} if self.signature.single_input else x
        result = self.model(self.signature.model_inputs(named), training=False)
        outputs = self.signature.outputs_by_name(result)
        if self.signature.single_output:
            return outputs[self.signature.outputs[0].name]
        return {p.name: outputs[p.name] for p in self.signature.outputs}


def write_exported_program(job: ExportJob) -> Written:
    """A torch.export ExportedProgram (.pt2) with a dynamic batch dimension, for TorchServe and
    ExecuTorch: `module()(x)` takes one tensor, or a dict of tensors by input name, and returns
    one tensor, or a dict by output name."""
    model, directory, signature = job.model, job.directory, job.signature
    batch = job.batch
    example = _example(signature, batch)
    program = _export(model, signature, example)
    path = directory / "model.pt2"
    with _quiet():
        torch.export.save(program, str(path))
        reloaded = torch.export.load(str(path))
        loaded = reloaded.module()

    def run(named: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with torch.no_grad():
            got = loaded(_from_named(signature, named))
        return _to_named(signature, got)

    details: dict[str, Any] = {"dynamic_batch": [1, MAX_BATCH]}
    if signature.single_input:
        details = {"input": signature.inputs[0].name, **details}
    else:
        details = {"inputs": [p.name for p in signature.inputs], **details}
    return Written(
        path=path,
        run=run,
        signature=signature,
        runtime="torch.export.load",
        interface=_program_interface(reloaded, signature),
        details=details,
    )


def write_onnx(job: ExportJob) -> Written:
    """ONNX from the torch.export graph (torch's dynamo exporter), with a dynamic batch axis and
    the named inputs and outputs."""
    model, directory, signature = job.model, job.directory, job.signature
    batch = job.batch
    try:
        import onnx
        import onnxruntime
    except ImportError as err:
        raise ExportFailure(
            f"needs the {err.name} package: pip install -c constraints.txt 'dualtrain[export]'"
        ) from err
    path = directory / "model.onnx"
    example = _example(signature, batch)
    try:
        with _quiet():
            torch.onnx.export(
                _Inference(model, signature).eval(),
                # As a keyword: a dict as the last positional argument would read as kwargs.
                (),
                str(path),
                kwargs={"x": example},
                dynamo=True,
                input_names=[p.name for p in signature.inputs],
                output_names=[p.name for p in signature.outputs],
                dynamic_shapes=_dynamic_batch(signature),  # the ONNX inputs' first axis: "batch"
                external_data=False,
            )
    except ImportError as err:  # onnxscript, which the dynamo exporter needs
        raise ExportFailure(
            f"needs the {err.name} package: pip install -c constraints.txt 'dualtrain[export]'"
        ) from err
    except Exception as err:
        raise ExportFailure(f"torch.onnx.export failed: {first_line(err)}") from err
    proto = onnx.load(str(path))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    output_names = [o.name for o in session.get_outputs()]

    def run(named: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(output_names, session.run(output_names, named), strict=True))

    inputs = session.get_inputs()
    details: dict[str, Any] = {
        "opset": next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    }
    if len(inputs) == 1:
        details["input"] = inputs[0].name
        details["input_shape"] = [d if isinstance(d, int) else str(d) for d in inputs[0].shape]
    else:
        details["inputs"] = [i.name for i in inputs]
    details["outputs"] = output_names
    return Written(
        path=path,
        run=run,
        signature=signature,
        runtime=f"onnxruntime {onnxruntime.__version__}",
        interface={
            "inputs": [_onnx_entry(i) for i in inputs],
            "outputs": [_onnx_entry(o) for o in session.get_outputs()],
        },
        details=details,
    )


def _example(signature: Signature, batch: Any) -> Any:
    return _from_named(signature, signature.feed(batch))


def _from_named(signature: Signature, named: dict[str, np.ndarray]) -> Any:
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in named.items()}
    return tensors[signature.inputs[0].name] if signature.single_input else tensors


def _to_named(signature: Signature, got: Any) -> dict[str, np.ndarray]:
    if signature.single_output:
        return {signature.outputs[0].name: got.numpy()}
    return {k: v.numpy() for k, v in got.items()}


def _dynamic_batch(signature: Signature, max_batch: int = MAX_BATCH) -> dict[str, Any]:
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    if signature.single_input:
        return {"x": {0: batch}}
    return {"x": {p.name: {0: batch} for p in signature.inputs}}


def _export(
    model: keras.Model, signature: Signature, example: Any, max_batch: int = MAX_BATCH
) -> Any:
    try:
        with _quiet():
            return torch.export.export(
                _Inference(model, signature).eval(),
                (example,),
                dynamic_shapes=_dynamic_batch(signature, max_batch),
            )
    except Exception as err:
        raise ExportFailure(f"torch.export could not trace the model: {first_line(err)}") from err


def _program_interface(program: Any, signature: Signature) -> dict[str, list[dict[str, Any]]]:
    """The program's inputs and outputs: the keys its call takes and returns (the signature's
    name for a lone tensor), with the shapes and dtypes its graph records (None: the batch)."""
    from torch.utils import _pytree

    placeholders = {n.name: n for n in program.graph.find_nodes(op="placeholder")}
    user_inputs = [placeholders[n] for n in program.graph_signature.user_inputs]
    [output_node] = program.graph.find_nodes(op="output")
    user_outputs = list(output_node.args[0])[-len(program.graph_signature.user_outputs) :]
    # The call's structure with each leaf's position: ((x,), {}) and the returned value.
    (taken,), _ = _pytree.tree_unflatten(list(range(len(user_inputs))), program.call_spec.in_spec)
    given = _pytree.tree_unflatten(list(range(len(user_outputs))), program.call_spec.out_spec)

    def entries(structure: Any, nodes: list[Any], lone: str) -> list[dict[str, Any]]:
        positions = structure.items() if isinstance(structure, dict) else [(lone, structure)]
        return [_fx_entry(str(name), nodes[i]) for name, i in positions]

    return {
        "inputs": entries(taken, user_inputs, signature.inputs[0].name),
        "outputs": entries(given, user_outputs, signature.outputs[0].name),
    }


def _fx_entry(name: str, node: Any) -> dict[str, Any]:
    value = node.meta["val"]
    shape = [d if isinstance(d, int) else None for d in value.shape]
    return {"name": name, "shape": shape, "dtype": str(value.dtype).removeprefix("torch.")}


# ONNX's element types as NumPy names.
_ONNX_TYPES = {"float": "float32", "double": "float64", "float16": "float16", "bool": "bool"}


def _onnx_entry(arg: Any) -> dict[str, Any]:
    element = str(arg.type).removeprefix("tensor(").removesuffix(")")
    return {
        "name": arg.name,
        "shape": [d if isinstance(d, int) else None for d in arg.shape],
        "dtype": _ONNX_TYPES.get(element, element),
    }


def _quiet() -> Any:
    """The exporters print progress and warnings (e.g. torchvision ops skipped). The ONNX
    exporter's optimizer passes (onnxscript, onnx_ir) log a line at INFO per pass ("Removed 11
    unused nodes"), which Hydra's root logger would show. Several inputs share the one batch
    axis; the exporter names it once and says so."""
    return quiet_python(
        ("torch.onnx", "torch.export", "torch._export", "onnxscript", "onnx_ir"),
        FutureWarning,
        messages=(".*The axis name: batch will not be used",),
    )
