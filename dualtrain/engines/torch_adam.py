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
torch's kernel computes bias corrections c1 = 1 - b1^s, c2 = sqrt(1 - b2^s) in float64 from a
step tensor s and updates
    var -= (lr' / c1) * m / (sqrt(v) / c2 + eps')
The kernel is handed s = 1 at every step, so c1 = 1 - b1 and c2 = sqrt(1 - b2) are constants,
and lr' = alpha * c1 / c2, eps' = eps / c2 make its update Keras's exactly (up to rounding):
tests/backend/test_torch_adam.py holds the two within a few ulp of the weights over 100 steps.
alpha is Keras's own expression of `iterations`, computed on the device and handed over as a
tensor (the kernel's tensor-lr form): nothing is read back to the host in a step.

A step whose loss is NaN or Inf must change nothing. The engine hands the kernel `found_inf`,
with which it leaves the parameters and the momentum and velocity as they are; what the kernel
does not guard (`iterations`, AdamW's decay applied before it) the engine restores itself, and
everything where the kernel refuses the tensors and Keras's own update runs (`guarded`).
"""

from __future__ import annotations

import math
from typing import Any

import keras
import torch
from keras import ops

from dualtrain import compat


class FusedAdam:
    """A Keras Adam/AdamW whose update runs in torch's fused kernel.

    `found_inf`, when set (a float tensor, 1.0 for a step to skip), makes the kernel leave the
    parameters and their momentum and velocity unchanged.
    """

    def __init__(self, optimizer: Any, inner: Any, kernel: Any, adam: Any) -> None:
        self.optimizer = optimizer
        self.found_inf: torch.Tensor | None = None
        self._adam = adam
        beta_1, beta_2, epsilon = float(inner.beta_1), float(inner.beta_2), float(inner.epsilon)
        # The kernel's bias corrections at its step 1 (see the module docstring).
        correction_1, correction_2 = 1.0 - beta_1, math.sqrt(1.0 - beta_2)
        keras_update = adam.keras_update
        ones: dict[Any, torch.Tensor] = {}  # the step tensor, one per device

        @torch.no_grad()
        def update(grads: list[torch.Tensor], variables: list[Any], learning_rate: Any) -> None:
            params = compat.variable_tensors(variables)
            momentums, velocities = adam.slots(variables)
            if not params or not _fusable(params, momentums, velocities, grads):
                return keras_update(grads, variables, learning_rate)
            # Keras's step size, computed as Keras computes it (in the variables' dtype: its
            # powers of the betas round differently from the kernel's float64 ones at early
            # steps), on the device, in the torch ops keras.ops calls (without keras.ops's
            # Python: 0.13 ms a step through it, 0.06 ms so) ...
            dtype, device = params[0].dtype, params[0].device
            step = (inner.iterations.value + 1).to(dtype)
            beta_1_power = torch.pow(torch.tensor(beta_1, dtype=dtype, device=device), step)
            beta_2_power = torch.pow(torch.tensor(beta_2, dtype=dtype, device=device), step)
            rate = ops.cast(learning_rate, dtype)  # a variable, a schedule's tensor or a float
            alpha = rate * torch.sqrt(1 - beta_2_power) / (1 - beta_1_power)
            if device not in ones:
                ones[device] = torch.ones((), dtype=torch.float32, device=device)
            # ... and handed to the kernel in the form its own bias corrections undo.
            kernel(
                params,
                # The kernel reads each gradient's memory as laid out contiguously (torch 2.13's
                # CPU kernel makes a contiguous copy and then does not use it); gradients of
                # permuted views, as Keras's convolution kernels are on torch, are not.
                [g.contiguous() for g in grads],
                momentums,
                velocities,
                [],
                [ones[device]] * len(params),
                lr=alpha.to(torch.float64) * (correction_1 / correction_2),
                beta1=beta_1,
                beta2=beta_2,
                weight_decay=0.0,  # AdamW's decay is applied before, by Keras (decoupled)
                eps=epsilon / correction_2,
                amsgrad=False,
                maximize=False,
                found_inf=self.found_inf,
            )

        adam.replace(update)

    def guarded(self, variables: list[Any], grads: list[Any]) -> list[torch.Tensor]:
        """The tensors a skipped step of `grads` leaves unchanged by itself (found_inf): where
        the kernel runs, the momentums and velocities, and the parameters unless AdamW's decay,
        applied before the kernel, changes them; none where Keras's own update runs instead,
        which knows nothing of found_inf. The same test as the update's: Keras hands it the
        variables whose gradient is not None."""
        updated = [v for v, g in zip(variables, grads, strict=True) if g is not None]
        dense = [g for g in grads if g is not None]
        params = compat.variable_tensors(updated)
        momentums, velocities = self._adam.slots(updated)
        if not params or not _fusable(params, momentums, velocities, dense):
            return []
        inner = getattr(self.optimizer, "inner_optimizer", self.optimizer)
        return [*([] if inner.weight_decay else params), *momentums, *velocities]


def fuse_adam(optimizer: Any) -> FusedAdam | str:
    """Makes a Keras Adam/AdamW (or a LossScaleOptimizer around one) update with the fused
    kernel. Returns it, else why it keeps Keras's own update."""
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
    return FusedAdam(optimizer, inner, kernel, adam)


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
