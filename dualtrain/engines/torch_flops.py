"""FLOPs on torch, by torch's own counter, `torch.utils.flop_counter.FlopCounterMode`.

It counts the dense contractions (mm, addmm, bmm, baddbmm, convolution and its backward,
scaled dot-product attention) at 2 FLOPs per multiply-add: `model_summary.COUNTED`. Two
formulas are given to it (`custom_mapping`, its public way to add them):

- the CPU kernel of scaled dot-product attention, for which it has none (torch 2.13): its two
  products, as torch counts the GPU kernels;
- attention's backward, on every kernel: the four products of the gradient (of the scores, V, Q
  and K). torch's own formula adds a fifth, the scores the flash kernels recompute to save
  memory; TensorFlow, which keeps them, computes four, and the model's arithmetic needs four.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from dualtrain.model_summary import Flops

aten = torch.ops.aten


def _attention(query: Any, key: Any, value: Any, *args: Any, **kwargs: Any) -> int:
    """Q K^T and (scores) V, from the shapes (batch, heads, sequence, features)."""
    batch, heads, queries, width = query
    keys, value_width = key[-2], value[-1]
    return 2 * batch * heads * queries * keys * (width + value_width)


def _attention_backward(grad: Any, query: Any, key: Any, value: Any, *a: Any, **k: Any) -> int:
    """dScores = dOut V^T, dV = scores^T dOut, dQ = dScores K, dK = dScores^T Q: twice the
    forward's multiply-adds."""
    return 2 * _attention(query, key, value)


_FORMULAS = {
    "_scaled_dot_product_flash_attention_for_cpu": _attention,
    "_scaled_dot_product_flash_attention_for_cpu_backward": _attention_backward,
    "_scaled_dot_product_flash_attention_backward": _attention_backward,
    "_scaled_dot_product_efficient_attention_backward": _attention_backward,
    "_scaled_dot_product_cudnn_attention_backward": _attention_backward,
}
COUNTER = "torch.utils.flop_counter.FlopCounterMode"


@contextmanager
def _counting() -> Iterator[FlopCounterMode]:
    mapping = {getattr(aten, op): f for op, f in _FORMULAS.items() if hasattr(aten, op)}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        yield counter


def _by_op(counter: FlopCounterMode) -> dict[str, int]:
    return {str(op): int(n) for op, n in counter.get_flop_counts()["Global"].items()}


def count(model: Any, phases: list[Any], phase_variables: list[list[Any]], x: Any, y: Any) -> Flops:
    """The FLOPs of the inference pass on `x` (in inference mode) and of a training step: each
    phase's training loss and its gradients with respect to the phase's variables. What the
    training forward changes (batch norm statistics, seed states, torch's RNG) is put back."""
    with torch.inference_mode(), _counting() as forward:
        model(x, training=False)
    kept = [(v.value, v.value.detach().clone()) for v in model.variables]
    try:
        with torch.random.fork_rng(), _counting() as step:
            for phase, variables in zip(phases, phase_variables, strict=True):
                loss = phase.loss(model, x, y, True)
                torch.autograd.grad(loss, [v.value for v in variables], allow_unused=True)
    finally:
        with torch.no_grad():
            for tensor, value in kept:
                tensor.copy_(value)
    return Flops(_by_op(forward), _by_op(step), COUNTER)
