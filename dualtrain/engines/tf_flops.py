"""FLOPs on TensorFlow, by TensorFlow's own counter: its profiler's `float_operation` over the
graph of one tf.function holding both passes, traced for two samples (nothing runs).

The profiler counts every op it has a rule for, elementwise ones too; of them, only the dense
contractions are kept (`PROFILED`: model_summary.COUNTED), and only the ops that each pass's
outputs need (a gradient TensorFlow builds but does not use, as that of the data, is
left out, as torch never computes it). Three contractions are counted here instead (`OWN`):

- `Einsum` (Keras's attention and EinsumDense on tf), for which the profiler has no rule: an
  einsum of two operands multiplies and adds once per combination of its indices;
- the two gradients of a convolution, `Conv2DBackpropInput` (also a transposed convolution's
  forward pass) and `Conv2DBackpropFilter`: each makes as many multiply-adds as the forward
  convolution; the profiler's rule takes the input's size over the strides instead, which is
  that only with `same` padding (it counted 23% more than that for bench_cnn's `valid` ones).

XLA's cost analysis was the other candidate: TensorFlow 2.21 gives a function's HLO text
(`experimental_get_compiler_ir`) but no cost analysis from Python, and it compiles the function
(seconds) and counts elementwise ops with the contractions, with no split by op.
"""

from __future__ import annotations

import math
from typing import Any

import tensorflow as tf

from dualtrain.engines.tensorflow import graph_function
from dualtrain.model_summary import NOT_COUNTED, Flops

# The contractions whose profiler rule counts 2 FLOPs per multiply-add.
PROFILED = (
    "MatMul",
    "BatchMatMul",
    "BatchMatMulV2",
    "BatchMatMulV3",
    "Conv2D",
    "Conv3D",
    "DepthwiseConv2dNative",
)
# Contractions it has no rule for, and ops whose body it does not see (a recurrent layer's loop):
# named in the summary when a graph needs them, since their FLOPs are missing from the count.
UNSEEN = (
    "Conv3DBackpropInputV2",
    "Conv3DBackpropFilterV2",
    "DepthwiseConv2dNativeBackpropInput",
    "DepthwiseConv2dNativeBackpropFilter",
    "While",
    "StatelessWhile",
)
COUNTER = "tf.compat.v1.profiler float_operation"


def count(model: Any, phases: list[Any], phase_variables: list[list[Any]], x: Any, y: Any) -> Flops:
    """The FLOPs of the inference pass on `x` and of a training step: each phase's training loss
    and its gradients with respect to the phase's variables. Traced only: no state changes."""

    def forward(x: Any) -> Any:
        return model(x, training=False)

    def step(x: Any, y: Any) -> list[Any]:
        grads = []
        for phase, variables in zip(phases, phase_variables, strict=True):
            with tf.GradientTape() as tape:
                loss = phase.loss(model, x, y, True)
            grads += [g for g in tape.gradient(loss, variables) if g is not None]
        return grads

    def both(x: Any, y: Any) -> tuple[Any, list[Any]]:
        return forward(x), step(x, y)

    # One trace and one profile for both: each is most of the counting's cost.
    function = graph_function(both).get_concrete_function(x, y)
    counted = _profiled(function.graph)
    inference, gradients = function.structured_outputs
    return Flops(
        _contractions(tf.nest.flatten(inference, expand_composites=True), counted),
        _contractions(tf.nest.flatten(gradients, expand_composites=True), counted),
        COUNTER,
    )


def _profiled(graph: Any) -> dict[str, int]:
    """The profiler's float ops of every op of the graph that has any, by op name."""
    options = (
        tf.compat.v1.profiler.ProfileOptionBuilder(
            tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
        )
        .with_empty_output()
        .build()
    )
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel("ERROR")  # the profiler's notice that it is a TF1 API
    try:
        profile = tf.compat.v1.profiler.profile(graph, cmd="scope", options=options)
    finally:
        logger.setLevel(level)
    return dict(_nodes(profile))


def _contractions(outputs: list[Any], profiled: dict[str, int]) -> dict[str, int]:
    """The contractions that `outputs` need, FLOPs by op type."""
    flops: dict[str, int] = {}
    for op in _needed(outputs).values():
        if op.type in PROFILED:
            flops[op.type] = flops.get(op.type, 0) + profiled.get(op.name, 0)
        elif op.type in OWN:
            flops[op.type] = flops.get(op.type, 0) + 2 * OWN[op.type](op)
        elif op.type in UNSEEN:
            flops.setdefault(op.type + NOT_COUNTED, 0)
    return flops


def _needed(outputs: list[Any]) -> dict[str, Any]:
    """The ops whose results the outputs need, by name (data inputs only: control dependencies
    order the variables' updates, which compute nothing the outputs use)."""
    needed: dict[str, Any] = {}
    stack = [t.op for t in outputs]
    while stack:
        op = stack.pop()
        if op.name not in needed:
            needed[op.name] = op
            stack.extend(t.op for t in op.inputs)
    return needed


def _nodes(node: Any) -> Any:
    """(name, its own float ops) of every node of the profiler's scope tree."""
    for child in node.children:
        yield child.name, int(child.float_ops)
        yield from _nodes(child)


def _einsum(op: Any) -> int:
    """Multiply-adds: the product of every index's size (an ellipsis: its broadcast dimensions')."""
    sizes: dict[str, int] = {}
    broadcast = 1
    terms = op.get_attr("equation").decode().split("->")[0].split(",")
    for term, tensor in zip(terms, op.inputs, strict=True):
        shape = tensor.shape.as_list()
        if "..." in term:
            head, tail = term.split("...")
            broadcast = max(broadcast, math.prod(shape[len(head) : len(shape) - len(tail)]))
            shape = shape[: len(head)] + shape[len(shape) - len(tail) :]
            term = head + tail
        sizes.update(zip(term, shape, strict=True))
    return broadcast * math.prod(sizes.values())


def _convolution_gradient(op: Any) -> int:
    """Multiply-adds of the forward convolution: each element of its output (the gradient's
    `out_backprop`, in either data format) takes one per element of a filter (all its
    values but the output channels)."""
    kernel = op.inputs[1] if op.type == "Conv2DBackpropInput" else op.outputs[0]
    out_backprop = op.inputs[2]
    filters = kernel.shape.as_list()[-1]
    return kernel.shape.num_elements() * out_backprop.shape.num_elements() // filters


# Contractions counted here (multiply-adds, doubled): see the module's docstring.
OWN = {
    "Einsum": _einsum,
    "Conv2DBackpropInput": _convolution_gradient,
    "Conv2DBackpropFilter": _convolution_gradient,
}
