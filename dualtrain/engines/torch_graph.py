"""The Keras forward pass and loss, captured once into a graph of ATen ops that torch runs.

On PyTorch eager, a Keras model spends much of its step time in Python around the kernels: the
layer-call machinery, dtype conversions, and the NHWC<->NCHW copies around every convolution and
pooling (Keras keeps images channels-last; torch's kernels take NCHW). Capturing the function with
`make_fx` (real tensors, per input shape) records only the ATen ops; running the recorded graph
skips the Python around them.

The graph is a pure function of tensors. It is traced inside Keras's `StatelessScope`, which maps
every model variable to a graph input and records assignments instead of making them, so:
- trainable variables are graph inputs, passed in on every call: gradients reach the variables'
  own tensors, and checkpoints, restores and optimizer updates need no change;
- what the function assigns (batch normalization's moving statistics, the seed state of a seeded
  random layer, Keras's global seed generator) comes out of the graph as values, which
  `apply_updates` assigns after the backward pass, as the eager step would have;
- seeded random numbers are drawn by tensor arithmetic from the seed state
  (engines/torch_random.py), so each call draws anew and a resumed run draws the same;
- GRU and LSTM layers are one node each, the op torch.nn's run (engines/torch_rnn.py), not
  their time loop unrolled.
Subclassed models and users' own layers are traced like functional ones, as tf.function traces
them on the tf backend: Python control flow on shapes and arguments is fixed per input shape;
control flow on a tensor's value cannot be recorded and makes the capture fall back.

One rewrite: a copy that makes a permuted (NCHW view of an NHWC) tensor contiguous is dropped. The
permuted view is already a valid NCHW tensor in torch's channels-last memory format, which the
CPU convolution and pooling kernels take directly and produce again, so the permutes back become
free views too. Values stay the same to float32 rounding (tested).

A function that cannot be captured safely runs eagerly, with one info line that says why: it reads
a tensor's value on the host (a Python `if` on a tensor, `.item()`), it changes a trainable
variable or a graph input in place, or the graph does not reproduce the eager values on its first
call.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.fx.experimental.proxy_tensor import make_fx

from dualtrain import compat
from dualtrain.engines import torch_rnn

log = logging.getLogger("dualtrain")
aten = torch.ops.aten

# The first call of each graph is checked against the eager function on the same inputs. Both run
# the same kernels except for the memory format of convolution inputs, which changes the order of
# float32 sums: differences of a few ulps of the values (about 1e-6 relative) are expected.
_CHECK_RTOL = 1e-4
_CHECK_ATOL = 1e-5


@dataclasses.dataclass
class _Graph:
    module: Any  # the GraphModule, once traced
    state: list[Any]  # the variables whose tensors follow the arguments, in order
    assigned: list[Any]  # the variables whose new values the graph returns, in order


class CapturedFunction:
    """`fn(*tensors)` of a Keras model, run as a captured ATen graph, one per input shape.

    Args:
        fn: the function to capture; it reads the model's variables.
        variables: every variable of the model; their current tensors are passed to the graph on
            each call.
        name: for log lines.
    """

    def __init__(self, fn: Callable[..., Any], variables: Sequence[Any], name: str) -> None:
        self.fn = fn
        self.variables = list(variables)
        self.name = name
        self.graphs: dict[tuple[Any, ...], _Graph | None] = {}
        # The library internals the capture needs, checked once (compat logs if they differ).
        self.failed: str | None = compat.graph_capture_problem()
        self._pending: list[tuple[Any, torch.Tensor]] = []

    def __call__(self, *tensors: Any) -> Any:
        key = _signature(tensors)
        if key not in self.graphs:
            self.graphs[key] = self._capture(tensors)
        graph = self.graphs[key]
        if graph is None:
            return self.fn(*tensors)
        output, updates = graph.module(*tensors, *compat.variable_tensors(graph.state))
        self._pending.extend(zip(graph.assigned, updates, strict=True))
        return output

    def apply_updates(self) -> None:
        """Assigns the values the graph calls since the last apply computed for the variables
        they assign. The torch engine calls it after each backward pass: an in-place change
        before it could alter a tensor autograd saved (the eager step assigns during the
        forward pass; the next forward pass sees the same values either way)."""
        with torch.no_grad():
            for variable, value in self._pending:
                variable.assign(value.detach())
        self._pending.clear()

    def _capture(self, tensors: Sequence[torch.Tensor]) -> _Graph | None:
        if self.failed:
            return None
        rng = torch.get_rng_state()
        # The function once eagerly without changing anything: the values the graph must give,
        # and which variables it assigns, Keras's global seed generator's among them.
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                expected, assigned, new_values = _stateless(self.fn, self.variables, tensors)
        except Exception as err:  # e.g. a layer that creates variables when called
            self._fail("it does not run without changing the model's variables", err)
            return None
        known = {id(v) for v in self.variables}
        for variable in assigned:
            if variable.trainable:
                self._fail(f"it assigns to the trainable variable {variable.path}")
                return None
        state = self.variables + [v for v in assigned if id(v) not in known]
        by_id = {id(v): value for v, value in zip(assigned, new_values, strict=True)}
        order = [v for v in state if id(v) in by_id]
        expected_updates = [by_id[id(v)] for v in order]
        graph = _Graph(None, state, order)
        values = [v.value for v in state]
        versions = [compat.tensor_version(t) for t in values]
        try:
            # Tracing runs the function on real tensors: keep the RNG stream (dropout masks)
            # where the eager path would have it.
            with torch.random.fork_rng(devices=[]), torch_rnn.traced(torch_rnn.ONE_NODE):
                graph.module = make_fx(self._traced(graph))(*tensors, *values)
        except Exception as err:  # an op or a Python construct make_fx cannot record
            self._fail(_untraceable(err), err)
            return None
        if [compat.tensor_version(t) for t in values] != versions:
            self._fail("it changes the model's variables in place")
            return None
        if any(_mutates_input(node) for node in graph.module.graph.nodes):
            self._fail("the graph changes its inputs in place")
            return None
        _drop_layout_copies(graph.module)
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                torch.set_rng_state(rng)  # the global RNG the eager run drew from
                got = graph.module(*tensors, *values)
            same = all(
                torch.allclose(g.float(), e.float(), rtol=_CHECK_RTOL, atol=_CHECK_ATOL)
                for g, e in zip(_flat(got), _flat((expected, expected_updates)), strict=True)
            )
        except Exception as err:  # a kernel that refuses what the rewritten graph gives it
            self._fail("a kernel refuses the captured graph's inputs", err)
            return None
        if not same:
            self._fail("the captured graph does not reproduce the eager values")
            return None
        return graph

    def _traced(self, graph: _Graph) -> Callable[..., Any]:
        """The function of (tensors..., state tensors...) that make_fx records: the output, and
        the new values of the variables it assigns."""

        def traced(*args: torch.Tensor) -> Any:
            count = len(args) - len(graph.state)
            output, assigned, values = _stateless(self.fn, graph.state, args[:count], args[count:])
            by_id = {id(v): value for v, value in zip(assigned, values, strict=True)}
            return output, [by_id[id(v)] for v in graph.assigned]

        return traced

    def _fail(self, reason: str, err: Exception | None = None) -> None:
        """This function runs eagerly from now on; one info line says why."""
        self.failed = reason
        _log_fallback(
            "capture_forward", self.name, "runs eagerly, as plain Keras on torch (same results, "
            "slower steps)", reason, err,
        )  # fmt: skip


def _stateless(
    fn: Callable[..., Any],
    state: Sequence[Any],
    tensors: Sequence[Any],
    values: Sequence[Any] | None = None,
) -> tuple[Any, list[Any], list[Any]]:
    """`fn(*tensors)` with each variable of `state` reading its tensor from `values` (default:
    its own), changing none: the output, the variables it assigned, and their new values."""
    if values is None:
        values = [v.value for v in state]
    with compat.recording_scope(list(zip(state, values, strict=True))) as scope:
        output = fn(*tensors)
    assigned = list(scope.assigned.values())
    return output, assigned, [scope.get_current_value(v) for v in assigned]


def _untraceable(err: Exception, what: str = "") -> str:
    """Why tracing failed, in the terms of the user's code rather than torch's; `what`: the
    optimizer's update, where that alone was traced."""
    text = str(err)
    if "_local_scalar_dense" in text or "data-dependent" in text or "value out of" in text:
        if what:
            return (
                f"{what} reads a tensor's value on the host (a learning-rate schedule or a "
                "constraint with a Python `if` on a tensor, or keras.ops.cond), which a "
                "captured graph cannot replay"
            )
        return (
            "it reads a tensor's value on the host (.item(), int(...) or a Python `if` on a "
            "tensor; keras.random.shuffle, categorical or gamma with a seed), which a captured "
            "graph cannot replay"
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
    # in a captured step (CapturedStep), the backward kernels that read the same inputs
    aten.convolution_backward.default,
    aten.max_pool2d_with_indices_backward.default,
    aten.avg_pool2d_backward.default,
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


# A step graph runs its ops from Python, a few microseconds each; the forward graph leaves the
# backward ops to autograd's C++ engine. Above this many ops the whole-step graph was slower
# (benchmarks/zoo.py, one thread, Keras's own recurrent loops: a GRU over 24 steps, 1,362 ops,
# 4,432 samples/s against 12,660 with the forward graph; an LSTM over 32 tokens, 1,579 ops, 7,806
# against 8,009), below it faster or even (a Transformer encoder, 481 ops: 3,844 against 3,220).
# (A fused GRU or LSTM, engines/torch_rnn.py, keeps the forward graph whatever the count.)
MAX_STEP_OPS = 1000


@dataclasses.dataclass
class _StepGraph:
    module: Any  # the GraphModule
    state: list[Any]  # the model's variables, then the optimizer's, as the graph takes them
    model_count: int  # how many of `state` are the model's
    trainable: list[int]  # where in `state` the variables the optimizer updates are
    assigned: list[Any]  # the model variables the forward pass assigns (batch norm, seeds)


class CapturedStep:
    """One optimizer step of one phase as one graph per batch shape: the loss, its gradients
    and the optimizer's update (backend.capture_step).

    make_fx records the backward pass as autograd runs it, op by op, and Keras's
    `optimizer.stateless_apply` as the update (for Adam and AdamW the fused kernel, which updates
    the parameters, momentums and velocities in place). The step then costs one graph call: no
    Keras layer, optimizer or autograd-engine Python runs in it. A step whose loss is NaN or Inf
    changes nothing, decided in the graph (the kernel's found_inf, `where` for the rest).

    The first step of each batch shape runs as before (the captured forward pass and an eager
    update): `check` then captures the step from the state before it, replays it on a copy and
    keeps the graph only if it gives that step's loss and every variable's new value. Only Adam
    without weight decay is captured: Keras's other torch optimizers (and AdamW's decay) update
    their tensors in place in ways a skipped step could not undo in the graph.
    """

    def __init__(
        self,
        loss_fn: Callable[[Any, Any], Any],
        model_variables: Sequence[Any],
        phase_variables: Sequence[Any],
        optimizer: Any,
        fused: Any,
        name: str,
    ) -> None:
        self.loss_fn = loss_fn
        self.model_variables = list(model_variables)
        self.optimizer = optimizer
        self.fused = fused
        self.name = name
        self.graphs: dict[Any, _StepGraph | None] = {}
        self._pending: tuple[Any, list[torch.Tensor], torch.Tensor] | None = None
        position = {id(v): i for i, v in enumerate(self.model_variables)}
        self.trainable = [position.get(id(v), -1) for v in phase_variables]
        self.failed: str | None = compat.graph_capture_problem() or _update_problem(
            optimizer, fused
        )
        if not self.failed and -1 in self.trainable:
            self.failed = "the phase trains variables that are not the model's"

    def _state(self) -> list[Any]:
        return [*self.model_variables, *self.optimizer.variables]

    def __call__(self, x: Any, y: Any) -> torch.Tensor | None:
        """Runs the step and returns its loss; None when the caller must run it (not captured,
        or the first step of a batch shape, after which the caller calls `check`)."""
        if self.failed:
            return None
        key = _signature((x, y))
        if key not in self.graphs:
            before = [v.value.detach().clone() for v in self._state()]
            self._pending = (key, before, torch.get_rng_state())
            return None
        graph = self.graphs[key]
        if graph is None:
            return None
        with torch.no_grad():
            loss, new_values = graph.module(x, y, *compat.variable_tensors(graph.state))
            changed = compat.variable_tensors(_changed(graph))
            for tensor, value in zip(changed, new_values, strict=True):
                if value is not tensor:  # the kernel updated it in place
                    tensor.copy_(value)
        return loss

    def check(self, x: Any, y: Any, loss: torch.Tensor) -> None:
        """After the caller ran the first step of a batch shape: captures the step from the
        state before it, and keeps the graph if it gives the same loss and new state."""
        if self._pending is None:
            return
        key, before, rng = self._pending
        self._pending = None
        self.graphs[key] = self._capture(x, y, before, rng, loss)
        if self.graphs[key] is None:
            self.failed = self.failed or "the captured step does not reproduce the eager step"

    def _capture(
        self, x: Any, y: Any, before: list[torch.Tensor], rng: torch.Tensor, loss: torch.Tensor
    ) -> _StepGraph | None:
        state = self._state()
        graph = _StepGraph(None, state, len(self.model_variables), self.trainable, [])

        def copies() -> list[torch.Tensor]:
            values = [t.clone() for t in before]
            for i in self.trainable:
                values[i].requires_grad_(True)
            return values

        try:
            with torch.random.fork_rng(devices=[]), torch_rnn.traced(torch_rnn.REFUSED):
                torch.set_rng_state(rng)
                graph.module = make_fx(self._traced(graph))(x, y, *copies())
        except torch_rnn.UnrolledInAStep:
            self._fail(
                "it runs a GRU or LSTM as one op, whose backward pass a step graph would unroll "
                "over the time steps: the captured forward pass with autograd's own engine runs "
                "it faster"
            )
            return None
        except Exception as err:  # an op or a Python construct make_fx cannot record
            self._fail(_untraceable(err), err)
            return None
        if _ops(graph.module) > MAX_STEP_OPS:
            self._fail(
                f"its graph has {_ops(graph.module)} operations, more than {MAX_STEP_OPS} (a "
                "recurrent layer unrolled over its steps): the captured forward pass with "
                "autograd's own engine runs so many small ones faster"
            )
            return None
        if any(_mutates_input(n) and not _is_kernel(n) for n in graph.module.graph.nodes):
            self._fail("the graph changes its inputs in place")
            return None
        outside = [v for v in graph.assigned if not any(v is m for m in self.model_variables)]
        if outside or any(v.trainable for v in graph.assigned):
            self._fail("the loss assigns to variables other than the model's state")
            return None
        _drop_layout_copies(graph.module)
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                torch.set_rng_state(rng)
                values = copies()
                got_loss, new_values = graph.module(x, y, *values)
        except Exception as err:  # a kernel that refuses what the rewritten graph gives it
            self._fail("a kernel refuses the captured step's inputs", err)
            return None
        expected = [loss, *[v.value for v in _changed(graph)]]
        got = [got_loss, *new_values]
        same = all(
            torch.allclose(g.float(), e.float(), rtol=_CHECK_RTOL, atol=_CHECK_ATOL)
            for g, e in zip(got, expected, strict=True)
        )
        if not same:
            self._fail("the captured step does not reproduce the eager step")
            return None
        log.debug("backend.capture_step: %s: %d ops", self.name, _ops(graph.module))
        return graph

    def _traced(self, graph: _StepGraph) -> Callable[..., Any]:
        count = len(self.model_variables)

        def step(x: Any, y: Any, *values: torch.Tensor) -> Any:
            model, optimizer_values = list(values[:count]), list(values[count:])
            mapping = list(zip(self.model_variables, model, strict=True))
            with compat.recording_scope(mapping) as scope:
                loss = self.loss_fn(x, y).float()
            graph.assigned = list(scope.assigned.values())
            assigned = [scope.get_current_value(v) for v in graph.assigned]
            trainable = [model[i] for i in graph.trainable]
            scaled = self.optimizer.scale_loss(loss)
            grads = torch.autograd.grad(scaled, trainable, allow_unused=True)
            new = _skippable_update(
                self.optimizer, self.fused, list(grads), trainable, optimizer_values,
                torch.isfinite(loss),
            )  # fmt: skip
            return loss.detach(), [*assigned, *new]

        return step

    def _fail(self, reason: str, err: Exception | None = None) -> None:
        """This step runs as a forward graph and a separate update (CapturedUpdate) from now on;
        one info line."""
        self.failed = reason
        _log_fallback(
            "capture_step", self.name, "runs as a captured forward pass and a separate update",
            reason, err,
        )  # fmt: skip


class CapturedUpdate:
    """One phase's optimizer update alone as one graph, where its step is not one graph (a fused
    GRU or LSTM, gradient accumulation, gradient histograms, a distributed sum of the
    gradients): the engine computes the gradients (the captured forward pass and autograd's
    engine) and this applies them, as `optimizer.apply` with the engine's finiteness guard does.

    The graph is the update of a captured step (`CapturedStep`) without the loss and its
    gradients: Keras's `optimizer.stateless_apply` as make_fx records it, the fused Adam kernel
    guarded by found_inf, `where` for the rest. It replaces the Python of Keras's `apply` (about
    0.2 ms a step, docs/performance.md) with one graph call. The first update runs eagerly;
    `check` then captures the graph from the state before it and keeps it only if it gives every
    variable's new value. The same optimizers as `CapturedStep`: Adam without weight decay.
    """

    def __init__(self, optimizer: Any, fused: Any, variables: Sequence[Any], name: str) -> None:
        self.optimizer = optimizer
        self.fused = fused
        self.variables = list(variables)
        self.name = name
        self.graphs: dict[Any, Any] = {}
        self._pending: tuple[Any, list[torch.Tensor]] | None = None
        self.failed: str | None = compat.graph_capture_problem() or _update_problem(
            optimizer, fused
        )

    def _state(self) -> list[Any]:
        return [*self.variables, *self.optimizer.variables]

    def __call__(self, grads: list[torch.Tensor | None], finite: torch.Tensor) -> bool:
        """Applies `grads` where `finite` holds; False when the caller must apply them (not
        captured, or the first update, after which the caller calls `check`)."""
        if self.failed:
            return False
        key = _signature(grads)
        if key not in self.graphs:
            self._pending = (key, [v.value.detach().clone() for v in self._state()])
            return False
        graph = self.graphs[key]
        if graph is None:
            return False
        state = compat.variable_tensors(self._state())
        with torch.no_grad():
            new_values = graph(finite, *[g for g in grads if g is not None], *state)
            for tensor, value in zip(state, new_values, strict=True):
                if value is not tensor:  # the kernel updated it in place
                    tensor.copy_(value)
        return True

    def check(self, grads: list[torch.Tensor | None], finite: torch.Tensor) -> None:
        """After the caller applied the first update of `grads`' shapes: captures the update
        from the state before it, and keeps the graph if it gives the same new state."""
        if self._pending is None:
            return
        key, before = self._pending
        self._pending = None
        # A skipped update would check only that the graph changes nothing: wait for a finite
        # one (one read on the host, at capture only).
        if bool(finite):
            self.graphs[key] = self._capture(grads, finite, before)

    def _capture(
        self, grads: list[torch.Tensor | None], finite: torch.Tensor, before: list[torch.Tensor]
    ) -> Any:
        count, present = len(self.variables), [g is not None for g in grads]

        def update(finite: torch.Tensor, *args: torch.Tensor) -> list[torch.Tensor]:
            given = iter(args[: sum(present)])
            values = list(args[sum(present) :])
            full = [next(given) if p else None for p in present]
            return _skippable_update(
                self.optimizer, self.fused, full, values[:count], values[count:], finite
            )

        given = [g for g in grads if g is not None]
        try:
            module = make_fx(update)(finite, *given, *[t.clone() for t in before])
        except Exception as err:  # an op or a Python construct make_fx cannot record
            self._fail(_untraceable(err, what="the optimizer's update"), err)
            return None
        if any(_mutates_input(n) and not _is_kernel(n) for n in module.graph.nodes):
            self._fail("the graph changes its inputs in place")
            return None
        try:
            with torch.no_grad():
                got = module(finite, *given, *[t.clone() for t in before])
        except Exception as err:  # a kernel that refuses what the graph gives it
            self._fail("a kernel refuses the captured update's inputs", err)
            return None
        expected = [v.value for v in self._state()]
        if not all(
            torch.allclose(g.float(), e.float(), rtol=_CHECK_RTOL, atol=_CHECK_ATOL)
            for g, e in zip(got, expected, strict=True)
        ):
            self._fail("the captured update does not reproduce the eager update")
            return None
        log.debug("backend.capture_step: %s: %d ops", self.name, _ops(module))
        return module

    def _fail(self, reason: str, err: Exception | None = None) -> None:
        """This update runs as Keras's `optimizer.apply` from now on; one info line."""
        self.failed = reason
        _log_fallback("capture_step", self.name, "runs eagerly", reason, err)


def _update_problem(optimizer: Any, fused: Any) -> str | None:
    """Why `optimizer`'s update cannot be captured in a graph that skips it for a non-finite
    loss (None: it can)."""
    if fused is None:
        return f"{type(optimizer).__name__} has no update the graph can skip"
    if getattr(optimizer, "inner_optimizer", None) is not None:
        return "mixed_float16's loss scaling decides on the host"
    if optimizer.weight_decay:
        # Keras's torch optimizers decay the weights in place, before the update: a skipped
        # step could not undo it in the graph.
        return f"{type(optimizer).__name__}'s weight decay changes the weights in place"
    return None


def _skippable_update(
    optimizer: Any,
    fused: Any,
    grads: list[torch.Tensor | None],
    trainable: list[torch.Tensor],
    optimizer_values: list[torch.Tensor],
    finite: torch.Tensor,
) -> list[torch.Tensor]:
    """The new values of `trainable` and `optimizer_values` (in that order) after Keras's
    `optimizer.stateless_apply` of `grads`, unchanged where `finite` is False: the fused
    kernel's found_inf guards what it updates in place, `where` the rest."""
    fused.found_inf = (~finite).to(torch.float32)
    try:
        new_trainable, new_optimizer = optimizer.stateless_apply(optimizer_values, grads, trainable)
    finally:
        fused.found_inf = None
    new, old = [*new_trainable, *new_optimizer], [*trainable, *optimizer_values]
    return [n if n is o else torch.where(finite, n, o) for n, o in zip(new, old, strict=True)]


def _log_fallback(setting: str, name: str, runs: str, reason: str, err: Exception | None) -> None:
    """One info line: what `name` runs as instead, and why in words. The exception behind it is
    torch's tracing machinery speaking (with advice about make_fx options that a user of
    dualtrain cannot act on), so it goes to the debug log only."""
    log.info("backend.%s: %s %s: %s", setting, name, runs, reason)
    if err is not None:
        log.debug("backend.%s: %s: %s: %s", setting, name, type(err).__name__, err)


def _changed(graph: _StepGraph) -> list[Any]:
    """The variables whose new values a step graph returns, in its order: those the forward pass
    assigns, the optimizer's trainable variables, the optimizer's own."""
    trainable = [graph.state[i] for i in graph.trainable]
    return [*graph.assigned, *trainable, *graph.state[graph.model_count :]]


def _ops(module: Any) -> int:
    return sum(1 for node in module.graph.nodes if node.op == "call_function")


def _is_kernel(node: torch.fx.Node) -> bool:
    """The fused Adam kernel, which updates the parameters and the optimizer's state in place."""
    return node.op == "call_function" and str(node.target).startswith("aten._fused_adam_")
