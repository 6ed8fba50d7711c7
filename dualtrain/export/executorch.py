"""ExecuTorch: a `.pte` program lowered to the XNNPACK delegate, written in a PyTorch-backend
process and run back in ExecuTorch's own runtime (its Python bindings wrap the C++ runtime that
Android and iOS apps link)."""

from __future__ import annotations

import operator
from importlib.metadata import version
from typing import Any

import numpy as np
import torch

from dualtrain.errors import first_line
from dualtrain.export import (
    ExportFailure,
    ExportJob,
    Signature,
    Written,
    native_stderr_without,
    quiet_python,
)
from dualtrain.export.torch import _example, _export, _quiet

# ExecuTorch plans each tensor's memory for its largest shape, so the batch is bounded: up to 1024
# samples a call (the checks run 1, 37 and 64). The `torch` format's 2^20 would plan gigabytes.
MAX_BATCH = 1024
DELEGATE = "XnnpackBackend"
# ExecuTorch's ScalarType codes (as its method metadata reports dtypes) as NumPy names.
_SCALAR_TYPES = {
    0: "uint8",
    1: "int8",
    2: "int16",
    3: "int32",
    4: "int64",
    5: "float16",
    6: "float32",
    7: "float64",
    11: "bool",
}


def write_executorch(job: ExportJob) -> Written:
    """An ExecuTorch program `model.pte`: the torch.export graph with a batch of 1 to
    `MAX_BATCH`, its weights folded into constants, lowered with the XNNPACK partitioner. Its
    method `forward` takes the inputs as tensors in the order `details["inputs"]` gives and
    returns the outputs in the order of `details["outputs"]`."""
    model, directory, signature = job.model, job.directory, job.signature
    batch = job.batch
    with _quiet_import():
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.devtools.backend_debug import get_delegation_info
        from executorch.exir import to_edge_transform_and_lower
        from executorch.exir.passes.constant_prop_pass import constant_prop_pass
        from executorch.runtime import Runtime

    program = _export(model, signature, _example(signature, batch), max_batch=MAX_BATCH)
    try:
        with _quiet(), _quiet_import():
            _drop_layout_copies(program)
            _pieces_as_slices(program)
            program = constant_prop_pass(program)
            edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
            lowered = edge.exported_program()
            # Counted before to_executorch, whose passes add memory-planning nodes to the graph.
            delegation = get_delegation_info(lowered.graph_module)
            order = _flat_order(lowered, signature)
            traced = _traced_shapes(lowered, order)
            manager = edge.to_executorch()
    except Exception as err:
        raise ExportFailure(f"ExecuTorch could not lower the model: {first_line(err)}") from err
    fixed = [(n, s[0]) for n, s in zip(order["inputs"], traced["inputs"], strict=True) if s[0]]
    if fixed:
        name, size = fixed[0]
        raise ExportFailure(
            f"ExecuTorch's lowering fixed the batch of input {name!r} at {size} (the example's "
            "size), so the program would take no other batch"
        )
    path = directory / "model.pte"
    with path.open("wb") as file:
        manager.write_to_file(file)

    runtime = Runtime.get()
    if not runtime.backend_registry.is_available(DELEGATE):
        raise ExportFailure(f"this executorch build's runtime has no {DELEGATE} to run the program")
    log: list[str] = []
    try:
        with native_stderr_without(("[cpuinfo_utils.cpp:",), log):
            method = runtime.load_program(path).load_method("forward")
    except Exception as err:
        why = f" ({log[-1].strip()})" if log else ""  # e.g. "Missing operator: ..."
        raise ExportFailure(f"ExecuTorch's runtime could not load {path.name}: {err}{why}") from err
    assert method is not None  # load_method returns None for no method name it knows

    def run(named: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        flat = [torch.from_numpy(np.ascontiguousarray(named[n])) for n in order["inputs"]]
        size = len(flat[0])
        if not 1 <= size <= MAX_BATCH:
            raise ExportFailure(f"model.pte takes batches of 1 to {MAX_BATCH}, not {size}")
        try:
            got = method.execute(flat)
        except RuntimeError as err:
            raise ExportFailure(
                f"ExecuTorch's runtime failed on a batch of {size} ({err}; its log lines above "
                "say where)"
            ) from err
        # Copies: the outputs live in the program's planned memory, which the next call reuses.
        return {n: t.numpy().copy() for n, t in zip(order["outputs"], got, strict=True)}

    plan = manager.executorch_program.execution_plan[0]
    details: dict[str, Any] = {
        "method": "forward",
        "inputs": order["inputs"],
        "outputs": order["outputs"],
        "dynamic_batch": [1, MAX_BATCH],
        "delegate": sorted({d.id for d in plan.delegates}),
        "delegated_subgraphs": delegation.num_delegated_subgraphs,
        "delegated_nodes": delegation.num_delegated_nodes,
        # Outside the delegate: ExecuTorch's own kernels, which the app's runtime must link.
        "not_delegated_nodes": _not_delegated(delegation),
        "kernels": sorted({o.name for o in plan.operators}),
        "planned_memory_bytes": sum(plan.non_const_buffer_sizes),
    }
    return Written(
        path=path,
        run=run,
        signature=signature,
        runtime=f"ExecuTorch runtime {version('executorch')}",
        interface=_interface(method.metadata, order, traced),
        details=details,
    )


def _drop_layout_copies(program: Any) -> None:
    """Removes the copies that only change a tensor's memory layout (Keras's torch backend makes
    convolution kernels channels-last): the values are the same, and a kernel that is not a
    constant is one XNNPACK does not take (its convolution wants static weights)."""
    layouts = (torch.channels_last, torch.channels_last_3d)
    copies = (torch.ops.aten.contiguous.default, torch.ops.aten.clone.default)
    graph = program.graph_module.graph
    for node in list(graph.nodes):
        if node.target in copies and node.kwargs.get("memory_format") in layouts:
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
    program.graph_module.recompile()


def _pieces_as_slices(program: Any) -> None:
    """Rewrites the ops that return a list of pieces (chunk, split, unbind: an LSTM cell's gates)
    as one slice (or select) per piece taken, the same values. ExecuTorch's edge verifier reads
    such a list's first piece where it means the list, and so fixes a dynamic batch at the
    example's size when the pieces keep the batch."""
    graph = program.graph_module.graph
    for node in list(graph.nodes):
        pieces = _pieces(node)
        users = list(node.users)
        if pieces is None or not all(u.target is operator.getitem for u in users):
            continue
        source, dim, bounds = pieces
        for user in users:
            start, end = bounds[user.args[1]]
            with graph.inserting_before(user):
                if end is None:  # unbind: the piece drops the dimension
                    piece = graph.call_function(torch.ops.aten.select.int, (source, dim, start))
                else:
                    piece = graph.call_function(
                        torch.ops.aten.slice.Tensor, (source, dim, start, end)
                    )
            piece.meta = dict(user.meta)
            user.replace_all_uses_with(piece)
            graph.erase_node(user)
        graph.erase_node(node)
    program.graph_module.recompile()


def _pieces(node: Any) -> tuple[Any, int, list[tuple[int, int | None]]] | None:
    """(the tensor, the dimension, each piece's start and end; end None: a select) of a chunk,
    split or unbind along a dimension of known size; None for any other node."""
    aten = torch.ops.aten
    ops = (aten.chunk.default, aten.split.Tensor, aten.split_with_sizes.default, aten.unbind.int)
    if node.op != "call_function" or node.target not in ops:
        return None
    source = node.args[0]
    value = source.meta.get("val")
    arguments = list(node.args[1:])
    if node.target is aten.unbind.int:
        dim = int(arguments[0] if arguments else node.kwargs.get("dim", 0))
    else:
        dim = int(arguments[1] if len(arguments) > 1 else node.kwargs.get("dim", 0))
    if value is None or not isinstance(value.shape[dim], int):
        return None
    dim %= value.dim()
    size = int(value.shape[dim])
    if node.target is aten.unbind.int:
        return source, dim, [(i, None) for i in range(size)]
    if node.target is aten.split_with_sizes.default:
        lengths = [int(n) for n in arguments[0]]
    else:
        step = (
            -(-size // int(arguments[0]))
            if node.target is aten.chunk.default
            else int(arguments[0])
        )
        lengths = [min(step, size - start) for start in range(0, size, step)]
    starts = [sum(lengths[:i]) for i in range(len(lengths))]
    return source, dim, [(start, start + n) for start, n in zip(starts, lengths, strict=True)]


def _flat_order(program: Any, signature: Signature) -> dict[str, list[str]]:
    """The names of the method's inputs and outputs in the order it takes and returns them: the
    program's call takes one tensor or a dict by input name, flattened in its key order."""
    from torch.utils import _pytree

    in_spec, out_spec = program.call_spec.in_spec, program.call_spec.out_spec
    (taken,), _ = _pytree.tree_unflatten(list(range(in_spec.num_leaves)), in_spec)
    given = _pytree.tree_unflatten(list(range(out_spec.num_leaves)), out_spec)

    def ordered(structure: Any, lone: str) -> list[str]:
        if not isinstance(structure, dict):
            return [lone]
        return [str(name) for name, _ in sorted(structure.items(), key=lambda item: item[1])]

    return {
        "inputs": ordered(taken, signature.inputs[0].name),
        "outputs": ordered(given, signature.outputs[0].name),
    }


def _traced_shapes(program: Any, order: dict[str, list[str]]) -> dict[str, list[list[Any]]]:
    """The shapes the lowered program's graph records for its inputs and outputs, in the
    method's order (None for a dynamic dimension; a dimension the lowering fixed is a number,
    though torch may still hold it as a symbol)."""
    from torch.fx.experimental.symbolic_shapes import is_concrete_int

    placeholders = {n.name: n for n in program.graph.find_nodes(op="placeholder")}
    inputs = [placeholders[n] for n in program.graph_signature.user_inputs]
    [output_node] = program.graph.find_nodes(op="output")
    outputs = list(output_node.args[0])[-len(program.graph_signature.user_outputs) :]

    def shape(node: Any) -> list[Any]:
        return [int(d) if is_concrete_int(d) else None for d in node.meta["val"].shape]

    return {"inputs": [shape(n) for n in inputs], "outputs": [shape(n) for n in outputs]}


def _interface(
    meta: Any, order: dict[str, list[str]], traced: dict[str, list[list[Any]]]
) -> dict[str, list[dict[str, Any]]]:
    """The method's inputs and outputs as the runtime reports them (sizes and dtypes; its sizes
    are the planned, largest ones), with None for the dimensions the program leaves dynamic."""

    def entry(name: str, info: Any, shape: list[Any]) -> dict[str, Any]:
        sizes = [None if t is None else int(s) for s, t in zip(info.sizes(), shape, strict=True)]
        code = int(info.dtype())
        return {
            "name": name,
            "shape": sizes,
            "dtype": _SCALAR_TYPES.get(code, f"ScalarType {code}"),
        }

    return {
        "inputs": [
            entry(name, meta.input_tensor_meta(i), traced["inputs"][i])
            for i, name in enumerate(order["inputs"])
        ],
        "outputs": [
            entry(name, meta.output_tensor_meta(i), traced["outputs"][i])
            for i, name in enumerate(order["outputs"])
        ],
    }


def _not_delegated(delegation: Any) -> dict[str, int]:
    """Nodes left to ExecuTorch's own kernels, by op (getitem, which picks a delegate call's
    results, left out)."""
    return {
        op: breakdown.non_delegated
        for op, breakdown in sorted(delegation.delegation_by_operator.items())
        if breakdown.non_delegated and op != "getitem"
    }


def _quiet_import() -> Any:
    """executorch's modules warn at import and while lowering (deprecations in torch's pytree,
    torchao's optional kernels)."""
    return quiet_python(
        ("executorch", "torchao", "torch.utils._pytree"), FutureWarning, DeprecationWarning
    )
