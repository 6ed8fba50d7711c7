"""Keras's Adam and AdamW on torch, updated by torch's fused Adam kernel.

Keras's torch Adam (keras/src/backend/torch/optimizers/torch_adam.py) updates the variables in
about ten `torch._foreach_*` passes over every parameter; torch's `_fused_adam_` makes one,
several times faster (docs/performance.md, "Measured choices").

Only the update arithmetic is replaced. Everything else stays Keras's: `optimizer.apply` still
clips, unscales (LossScaleOptimizer), applies AdamW's decoupled weight decay, evaluates the lr
schedule and counts `iterations`; the kernel updates the optimizer's own momentum and velocity
variables, so checkpoints, restores and the tf backend see no difference.

Keras computes the step size in the variables' dtype and updates
    var -= m * alpha / (sqrt(v) + eps),   alpha = lr * sqrt(1 - b2^t) / (1 - b1^t)
torch's kernel computes its bias corrections c1 = 1 - b1^t, c2 = sqrt(1 - b2^t) in float64 and
updates
    var -= (lr' / c1) * m / (sqrt(v) / c2 + eps')
which is Keras's update for lr' = alpha * c1 / c2 and eps' = eps / c2. With Keras's own float32
alpha the two differ in rounding only: tests/backend/test_torch_adam.py holds them within a few
ulp of the weights over 100 steps.
"""

from __future__ import annotations

import math
from typing import Any

import keras
import torch
from keras import ops

from dualtrain import compat


def fuse_adam(optimizer: Any) -> str | None:
    """Makes a Keras Adam/AdamW (or a LossScaleOptimizer around one) update with the fused
    kernel. Returns None when done, else why it keeps Keras's own update."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    if not isinstance(inner, keras.optimizers.Adam):  # AdamW is an Adam
        return f"{type(inner).__name__} has no fused update"
    if inner.amsgrad:
        return "amsgrad has no fused update here"
    if inner.use_ema:
        return "use_ema keeps Keras's update"
    # The internals are checked here, once; without them Keras's own update stays (compat.py).
    kernel = compat.fused_adam_kernel()
    if kernel is None:
        return "this torch's fused Adam kernel differs from the one dualtrain was written for"
    adam = compat.keras_adam_update(inner)
    if adam is None:
        return "this Keras's Adam internals differ from the ones dualtrain was written for"
    beta_1, beta_2, epsilon = float(inner.beta_1), float(inner.beta_2), float(inner.epsilon)
    keras_update = adam.keras_update

    @torch.no_grad()
    def update(grads: list[torch.Tensor], variables: list[Any], learning_rate: Any) -> None:
        params = [v.value for v in variables]
        momentums, velocities = adam.slots(variables)
        if not params or not _fusable(params, momentums, velocities, grads):
            return keras_update(grads, variables, learning_rate)
        # Two reads (on a GPU a sync each, as the engine's finiteness check already is): the
        # step (the update of step t runs before `iterations` counts it), and Keras's step size,
        # computed as Keras computes it (in the variables' dtype: its powers of the betas round
        # differently from the kernel's float64 ones at early steps) ...
        t = float(inner.iterations.value) + 1.0
        dtype = params[0].dtype
        step = ops.cast(t, dtype)  # the same value as Keras's cast of the integer counter
        beta_1_power = ops.power(ops.cast(beta_1, dtype), step)
        beta_2_power = ops.power(ops.cast(beta_2, dtype), step)
        alpha = float(
            ops.cast(learning_rate, dtype) * ops.sqrt(1 - beta_2_power) / (1 - beta_1_power)
        )
        # ... and handed to the kernel in the form its own bias corrections undo.
        correction_1, correction_2 = 1.0 - beta_1**t, math.sqrt(1.0 - beta_2**t)
        # The kernel reads the step from a tensor per parameter; one tensor serves them all.
        steps = [torch.tensor(t, dtype=torch.float32, device=params[0].device)] * len(params)
        kernel(
            params,
            # The kernel reads each gradient's memory as laid out contiguously (torch 2.13's CPU
            # kernel makes a contiguous copy and then does not use it); gradients of permuted
            # views, as Keras's convolution kernels are on torch, are not.
            [g.contiguous() for g in grads],
            momentums,
            velocities,
            [],
            steps,
            lr=alpha * correction_1 / correction_2,
            beta1=beta_1,
            beta2=beta_2,
            weight_decay=0.0,  # AdamW's decay is applied before, by Keras (decoupled)
            eps=epsilon / correction_2,
            amsgrad=False,
            maximize=False,
        )

    adam.replace(update)
    return None


def _fusable(
    params: list[torch.Tensor],
    momentums: list[torch.Tensor],
    velocities: list[torch.Tensor],
    grads: list[torch.Tensor],
) -> bool:
    """The kernel takes dense float tensors of one dtype and device (the step size above is
    computed in the first one's dtype, as Keras does), and writes into the parameters and the
    state in place: those must be contiguous."""
    first = params[0]
    for p, m, v, g in zip(params, momentums, velocities, grads, strict=True):
        if not p.is_floating_point() or g.is_sparse:
            return False
        if any(t.dtype != first.dtype or t.device != first.device for t in (p, m, v, g)):
            return False
        if any(t.shape != p.shape for t in (m, v, g)):
            return False
        if not (p.is_contiguous() and m.is_contiguous() and v.is_contiguous()):
            return False
    return True
