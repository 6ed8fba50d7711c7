"""GRU and LSTM layers on torch as one fused ATen op per layer call, captured as one graph node.

torch.nn's GRU and LSTM are one ATen op each (`_VF.gru`, `_VF.lstm`): the time loop runs in C++
and autograd records each inner op in C++. Keras on torch calls them on CUDA only; elsewhere its
GRU and LSTM are a Python loop of about 15 ops per time step. During the torch engine's steps,
compat.fused_rnn makes them call the ops here, `dualtrain::gru` and `dualtrain::lstm`, which run
the same `_VF` function.

The `_VF` functions are CompositeImplicitAutograd: make_fx would record their per-step ops, and
the captured forward graph would run each from Python. So the ops here have two kernels:
- at the `Autograd` dispatch key, the `_VF` function itself: autograd records its inner ops as
  for torch.nn's layers (eager steps, a captured graph's call);
- while engines/torch_graph.py traces a forward graph (`traced(ONE_NODE)`), the Autograd kernel
  dispatches below autograd instead, where make_fx's proxy mode records the op as ONE node and
  runs the `CompositeExplicitAutograd` kernel (the `_VF` function without autograd) for the
  values. When that graph runs, the node calls the Autograd kernel again: gradients as eager.
  Only the trace's own outputs lack autograd history, and the trace is only for the graph.
A whole step's trace (`traced(REFUSED)`) stops at the op (UnrolledInAStep): such a step keeps
the forward graph, faster than a step graph could be.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from typing import Any

import torch

# How a make_fx trace takes the ops: ONE_NODE while a forward graph is traced
# (CapturedFunction._capture), REFUSED while a whole step is (CapturedStep._capture), else None.
ONE_NODE, REFUSED = "one node", "refused"
_TRACE = contextvars.ContextVar[str | None]("dualtrain_rnn_trace", default=None)

NAMESPACE = "dualtrain"


class UnrolledInAStep(Exception):
    """A whole step's trace reached a fused GRU or LSTM. A step graph would record the backward
    pass too, which autograd runs in C++ for the op but make_fx records op by op: the layer's
    time loop unrolled, each op then run from Python. Measured (one thread, a model of
    tests/backend/users/layers.py: Embedding and LSTM(8) over 12 token ids, batches of 64): the
    step graph 30,883 samples per CPU-second, the forward graph with the fused op 44,551. (That
    step graph had the LSTM in torch's plain ops: on CPU the LSTM is oneDNN's op, one node, whose
    backward op fails in a step graph replayed under no_grad, its workspace left out.)"""


@contextlib.contextmanager
def traced(how: str) -> Iterator[None]:
    """Inside: a make_fx trace records `dualtrain::gru` and `dualtrain::lstm` as one node each
    (ONE_NODE), or stops at them with UnrolledInAStep (REFUSED)."""
    token = _TRACE.set(how)
    try:
        yield
    finally:
        _TRACE.reset(token)


class FusedOps:
    """`gru(inputs, h0, params)` -> (outputs, h_n) and `lstm(inputs, h0, c0, params)` -> (outputs,
    h_n, c_n): one batch-first, single-layer, unidirectional layer with biases, as torch.nn's.

    Args:
        vf_gru, vf_lstm: torch's `_VF.gru` and `_VF.lstm` (through compat).
        below_autograd: torch's guard that dispatches below the Autograd key (through compat).
    """

    def __init__(
        self, vf_gru: Callable[..., Any], vf_lstm: Callable[..., Any], below_autograd: Any
    ) -> None:
        def run_gru(inputs: Any, h0: Any, params: list[Any]) -> tuple[Any, Any]:
            # has_biases, num_layers, dropout, train (dropout only), bidirectional, batch_first
            out, h_n = vf_gru(
                inputs, h0, params, True, 1, 0.0, torch.is_grad_enabled(), False, True
            )
            return out, h_n

        def run_lstm(inputs: Any, h0: Any, c0: Any, params: list[Any]) -> tuple[Any, Any, Any]:
            out, h_n, c_n = vf_lstm(
                inputs, (h0, c0), params, True, 1, 0.0, torch.is_grad_enabled(), False, True
            )
            return out, h_n, c_n

        self._library = torch.library.Library(NAMESPACE, "FRAGMENT")
        self._library.define("gru(Tensor input, Tensor h0, Tensor[] params) -> (Tensor, Tensor)")
        self._library.define(
            "lstm(Tensor input, Tensor h0, Tensor c0, Tensor[] params) -> (Tensor, Tensor, Tensor)"
        )
        ops = getattr(torch.ops, NAMESPACE)
        self.gru_op = ops.gru.default
        self.lstm_op = ops.lstm.default
        for name, run, op in (("gru", run_gru, self.gru_op), ("lstm", run_lstm, self.lstm_op)):
            self._library.impl(name, _autograd_kernel(run, op, below_autograd), "Autograd")
            self._library.impl(name, _no_grad(run), "CompositeExplicitAutograd")

    def gru(self, inputs: Any, h0: Any, params: list[Any]) -> tuple[Any, Any]:
        out, h_n = self.gru_op(inputs, h0, params)
        return out, h_n

    def lstm(self, inputs: Any, h0: Any, c0: Any, params: list[Any]) -> tuple[Any, Any, Any]:
        out, h_n, c_n = self.lstm_op(inputs, h0, c0, params)
        return out, h_n, c_n


def _autograd_kernel(run: Callable[..., Any], op: Any, below_autograd: Any) -> Callable[..., Any]:
    def kernel(*args: Any) -> Any:
        trace = _TRACE.get()
        if trace == ONE_NODE:
            with below_autograd():
                return op(*args)
        if trace == REFUSED:
            raise UnrolledInAStep(f"{op} in a step graph")
        return run(*args)

    return kernel


def _no_grad(run: Callable[..., Any]) -> Callable[..., Any]:
    def kernel(*args: Any) -> Any:
        with torch.no_grad():
            return run(*args)

    return kernel
