"""The Keras forward pass and loss, captured once into a graph of ATen ops that torch runs.

On PyTorch eager, a Keras model spends much of its step time in Python around the kernels: the
layer-call machinery, dtype conversions, and the NHWC<->NCHW copies around every convolution and
pooling (Keras keeps images channels-last; torch's kernels take NCHW). Capturing the function with
`make_fx` (real tensors, per input shape) records only the ATen ops; running the recorded graph
skips the Python around them. The model's variables are graph inputs, passed in on every call, so
autograd and the Keras variables stay the single source of truth: gradients reach the variables'
own tensors, and checkpoints, restores and optimizer updates need no change.

One rewrite: a copy that makes a permuted (NCHW view of an NHWC) tensor contiguous is dropped. The
permuted view is already a valid NCHW tensor in torch's channels-last memory format, which the
CPU convolution and pooling kernels take directly and produce again, so the permutes back become
free views too. Values stay the same to float32 rounding (tested).

What cannot be captured safely falls back to the eager path with a log line: models that are not
functional (a subclassed `call` may branch on values), layers that update state in training (batch
normalization), random layers other than unseeded Dropout (whose masks come from torch's global
RNG, as in eager), and graphs that do not reproduce the eager values on their first call.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import keras
import torch
from torch.fx.experimental.proxy_tensor import make_fx

from dualtrain import compat

log = logging.getLogger("dualtrain")
aten = torch.ops.aten

# The first call of each graph is checked against the eager function on the same inputs. Both run
# the same kernels except for the memory format of convolution inputs, which changes the order of
# float32 sums: differences of a few ulps of the values (about 1e-6 relative) are expected.
_CHECK_RTOL = 1e-4
_CHECK_ATOL = 1e-5


def capture_problem(model: Any) -> str | None:
    """Why `model` cannot be captured safely, or None if it can."""
    if not isinstance(model, keras.Model) or not compat.is_functional(model):
        return f"{type(model).__name__} is not a functional or Sequential model"
    for layer in compat.sublayers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            return f"layer {layer.name} (BatchNormalization) updates its statistics in training"
        generators = compat.seed_generators(layer)
        if not generators:
            continue
        unseeded_dropout = (
            type(layer) is keras.layers.Dropout
            and layer.noise_shape is None
            and all(g.get_config()["seed"] is None for g in generators)
        )
        if not unseeded_dropout:
            return f"layer {layer.name} ({type(layer).__name__}) draws from a seeded generator"
    return None


class CapturedFunction:
    """`fn(*tensors)` of a Keras model, run as a captured ATen graph, one per input shape.

    Args:
        fn: the function to capture; it reads the model's variables.
        variables: every variable `fn` reads (all of the model's); their current tensors are
            passed to the graph on each call.
        name: for log lines.
    """

    def __init__(self, fn: Callable[..., Any], variables: Sequence[Any], name: str) -> None:
        self.fn = fn
        self.variables = list(variables)
        self.name = name
        self.graphs: dict[tuple[Any, ...], Callable[..., Any] | None] = {}
        # The library internals the capture needs, checked once (compat logs if they differ).
        self.failed: str | None = compat.graph_capture_problem(self.variables)

    def __call__(self, *tensors: Any) -> Any:
        key = _signature(tensors)
        if key not in self.graphs:
            self.graphs[key] = self._capture(tensors)
        graph = self.graphs[key]
        if graph is None:
            return self.fn(*tensors)
        return graph(*tensors, *[v.value for v in self.variables])

    def _capture(self, tensors: Sequence[torch.Tensor]) -> Callable[..., Any] | None:
        if self.failed:
            return None
        values = [v.value for v in self.variables]
        versions = [compat.tensor_version(t) for t in values]
        try:
            # Tracing runs the function on real tensors: keep the RNG stream (dropout masks)
            # where the eager path would have it.
            with torch.random.fork_rng(devices=[]):
                graph = make_fx(self._with_variables)(*tensors, *values)
        except Exception as err:  # an op or a Python construct make_fx cannot record
            return self._fail(_untraceable(err), err)
        if [compat.tensor_version(t) for t in values] != versions or any(
            v.value is not t for v, t in zip(self.variables, values, strict=True)
        ):
            return self._fail("the function changes the model's variables")
        if any(_mutates_input(node) for node in graph.graph.nodes):
            return self._fail("the graph changes its inputs in place")
        _drop_layout_copies(graph)
        try:
            same = self._same_values(graph, tensors, values)
        except Exception as err:  # a kernel that refuses what the rewritten graph gives it
            return self._fail("a kernel refuses the captured graph's inputs", err)
        if not same:
            return self._fail("the captured graph does not reproduce the eager values")
        return graph

    def _with_variables(self, *args: torch.Tensor) -> Any:
        """`fn` with the variables' tensors replaced by the graph's inputs."""
        count = len(args) - len(self.variables)
        saved = compat.variable_tensors(self.variables)
        compat.set_variable_tensors(self.variables, args[count:])
        try:
            return self.fn(*args[:count])
        finally:
            compat.set_variable_tensors(self.variables, saved)

    def _same_values(
        self, graph: Callable[..., Any], tensors: Sequence[torch.Tensor], values: list[Any]
    ) -> bool:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            state = torch.get_rng_state()
            expected = self.fn(*tensors)
            torch.set_rng_state(state)
            got = graph(*tensors, *values)
        return all(
            torch.allclose(g.float(), e.float(), rtol=_CHECK_RTOL, atol=_CHECK_ATOL)
            for g, e in zip(_flat(got), _flat(expected), strict=True)
        )

    def _fail(self, reason: str, err: Exception | None = None) -> Callable[..., Any] | None:
        """Logs why, in words, and returns no graph: this function runs eagerly from now on.

        The exception behind it is torch's tracing machinery speaking (with advice about make_fx
        options that a user of dualtrain cannot act on), so it goes to the debug log only.
        """
        self.failed = reason
        log.info(
            "backend.capture_forward: %s runs eagerly, as plain Keras on torch (same results, "
            "slower steps): %s",
            self.name,
            reason,
        )
        if err is not None:
            log.debug("backend.capture_forward: %s: %s: %s", self.name, type(err).__name__, err)
        return None


def _untraceable(err: Exception) -> str:
    """Why tracing failed, in the terms of the user's code rather than torch's."""
    text = str(err)
    if "_local_scalar_dense" in text or "data-dependent" in text or "value out of" in text:
        return (
            "it reads a tensor's value on the host (e.g. ops.one_hot, whose torch kernel checks "
            "the labels; .item(), int(...) or a Python `if` on a tensor), which a captured graph "
            "cannot replay"
        )
    return f"it uses an operation the graph capture cannot record ({type(err).__name__})"


def _flat(value: Any) -> list[torch.Tensor]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in _flat(item)]
    if isinstance(value, dict):
        return [t for item in value.values() for t in _flat(item)]
    return [value]


def _signature(value: Any) -> Any:
    """What one graph is captured for: the structure of the arguments (dicts of inputs, no
    targets), and each tensor's shape and dtype."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return tuple(_signature(item) for item in value)
    if isinstance(value, dict):
        return tuple((key, _signature(item)) for key, item in value.items())
    return (tuple(value.shape), value.dtype)


def _schema(node: torch.fx.Node) -> Any:
    return compat.op_schema(node.target) if node.op == "call_function" else None


def _aliases(node: torch.fx.Node) -> bool:
    """Whether the node's output is its first input or a view of it (in-place ops, views)."""
    schema = _schema(node)
    return bool(schema and schema.returns and schema.returns[0].alias_info is not None)


def _mutates_input(node: torch.fx.Node) -> bool:
    """An in-place op on a graph input (or a view of one). In-place ops on tensors the graph
    made itself (dropout's `bernoulli_` on a fresh `empty_like`) are safe."""
    schema = _schema(node)
    if schema is None or not schema.is_mutable:
        return False
    base = node.args[0] if node.args else None
    while isinstance(base, torch.fx.Node) and _aliases(base):
        base = base.args[0] if base.args else None
    return not (isinstance(base, torch.fx.Node) and base.op == "call_function")


# Kernels that take any memory layout (and read, never write, their input); a permuted view may
# go to them without a contiguous copy. Other ops (`view`) may need the copy.
_LAYOUT_FREE = {
    aten.convolution.default,
    aten.max_pool2d_with_indices.default,
    aten.avg_pool2d.default,
}


def _drop_layout_copies(graph: torch.fx.GraphModule) -> None:
    """clone(permute(x)) -> permute(x) where only convolution and pooling kernels read the copy:
    they take the permuted view (channels-last memory format) as it is."""
    for node in list(graph.graph.nodes):
        if (
            node.op == "call_function"
            and node.target == aten.clone.default
            and isinstance(node.args[0], torch.fx.Node)
            and node.args[0].target == aten.permute.default
            and all(user.target in _LAYOUT_FREE for user in node.users)
        ):
            node.replace_all_uses_with(node.args[0])
            graph.graph.erase_node(node)
    graph.graph.eliminate_dead_code()
    graph.recompile()
