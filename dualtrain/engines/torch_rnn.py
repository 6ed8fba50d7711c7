"""GRU and LSTM layers on torch as one fused ATen op per layer call, captured as one graph node.

torch.nn's GRU and LSTM are one ATen op each (`_VF.gru`, `_VF.lstm`): the time loop runs in C++
and autograd records each inner op in C++. Keras on torch calls them on CUDA only; elsewhere its
GRU and LSTM are a Python loop of about 15 ops per time step. During the torch engine's steps,
compat.fused_rnn makes them call the ops here, `dualtrain::gru` and `dualtrain::lstm`, which run
the same `_VF` function.

The `_VF` functions are CompositeImplicitAutograd: make_fx would record their per-step ops, and
the captured forward graph would run each from Python. So the ops here have two kernels:
- at the `Autograd` dispatch key, the `_VF` function itself: autograd records its inner ops as
  for torch.nn's layers (eager steps, a captured graph's call, a traced whole step);
- while engines/torch_graph.py traces a forward graph (`traced(ONE_NODE)`), the Autograd kernel
  dispatches below autograd instead, where make_fx's proxy mode records the op as ONE node and
  runs the `CompositeExplicitAutograd` kernel (the `_VF` function without autograd) for the
  values. When that graph runs, the node calls the Autograd kernel again: gradients as eager.
  Only the trace's own outputs lack autograd history, and the trace is only for the graph.
A whole step's trace (`traced(BY_INNER_OPS)`) records the inner ops, differentiated by autograd
as make_fx runs the step; the step graph is replayed and compared with the eager step before use.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from typing import Any

import torch

# How a make_fx trace records the ops: ONE_NODE while a forward graph is traced
# (CapturedFunction._capture), BY_INNER_OPS while a whole step is (CapturedStep._capture: its
# backward pass needs the op differentiable, so the trace records the inner ops), else None.
ONE_NODE, BY_INNER_OPS = "one node", "by inner ops"
_TRACE = contextvars.ContextVar[str | None]("dualtrain_rnn_trace", default=None)

NAMESPACE = "dualtrain"
_as_is = contextlib.nullcontext()


@contextlib.contextmanager
def traced(how: str) -> Iterator[None]:
    """Inside: a make_fx trace records `dualtrain::gru` and `dualtrain::lstm` `how` (ONE_NODE,
    BY_INNER_OPS)."""
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
            # On CPU torch runs the LSTM as oneDNN's kernel, whose forward op leaves out the
            # workspace its backward op reads when called under no_grad, as a step graph is
            # replayed: a traced step records the LSTM as torch's plain ops instead.
            by_inner_ops = _TRACE.get() == BY_INNER_OPS
            with _without_onednn() if by_inner_ops else _as_is:
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
        if _TRACE.get() == ONE_NODE:
            with below_autograd():
                return op(*args)
        return run(*args)

    return kernel


def _no_grad(run: Callable[..., Any]) -> Callable[..., Any]:
    def kernel(*args: Any) -> Any:
        with torch.no_grad():
            return run(*args)

    return kernel


@contextlib.contextmanager
def _without_onednn() -> Iterator[None]:
    """torch.backends.mkldnn.flags(enabled=False), leaving oneDNN's other settings as they are
    (`flags` resets them for the duration)."""
    saved = torch.backends.mkldnn.set_flags(_enabled=False, _fp32_precision=None)
    try:
        yield
    finally:
        torch.backends.mkldnn.set_flags(_enabled=saved[0], _fp32_precision=None)
