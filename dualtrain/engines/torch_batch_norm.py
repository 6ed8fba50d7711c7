"""Keras's BatchNormalization on torch through torch's own batch-norm kernel.

Keras computes batch normalization on torch as separate ops: the batch's mean and variance as
`mean(x)` and `mean(x**2) - mean**2`, then `(x - mean) * rsqrt(var + eps) * gamma + beta`, and
autograd differentiates each op on its own. torch has one kernel for all of it
(`aten.native_batch_norm`, and `native_batch_norm_backward` for its gradient) that reads the
activations once or twice instead of about ten times and takes the channels-last memory that
Keras's NHWC activations already have. On a 64x16x16x16 activation (one thread) forward and
backward took 0.5-0.8 ms through the kernel against 1.4-1.5 ms as Keras's ops.

`normalize` gives the same values as Keras's layer to float32 rounding (the kernel accumulates
the statistics in float64 on CPU, Keras in float32), with Keras's semantics: the moving averages
take the biased batch variance, as Keras's do (torch's own layer keeps the unbiased one).
dualtrain's torch steps run it (compat.fused_batch_norm); model building, export and plain Keras
keep Keras's layer.
"""

from __future__ import annotations

from typing import Any

import torch


def normalize(layer: Any, inputs: torch.Tensor, training: bool) -> torch.Tensor:
    """The layer's output for `inputs`; in training, also assigns its moving statistics.

    Args:
        layer: a built keras.layers.BatchNormalization (no renorm, no mask: the caller checks).
        inputs: the layer's input, any float dtype (computed in at least float32, as Keras does).
        training: batch statistics and moving-average updates, else the moving statistics.
    """
    dtype = torch.promote_types(inputs.dtype, torch.float32)
    x = torch.movedim(inputs.to(dtype), layer.axis, 1)  # channels second: a view, no copy
    gamma = layer.gamma.value.to(dtype) if layer.scale else None
    beta = layer.beta.value.to(dtype) if layer.center else None
    if not training:
        out = torch.ops.aten.native_batch_norm(
            x,
            gamma,
            beta,
            layer.moving_mean.value.to(dtype),
            layer.moving_variance.value.to(dtype),
            False,
            0.0,
            layer.epsilon,
        )[0]
    else:
        out, mean, invstd = torch.ops.aten.native_batch_norm(
            x, gamma, beta, None, None, True, 0.0, layer.epsilon
        )
        # The kernel returns 1/sqrt(var + eps); var itself in float64, so that the subtraction
        # loses nothing measurable for a variance of eps or more (1e-3 by default).
        variance = (invstd.double().reciprocal().square() - layer.epsilon).to(dtype)
        momentum = layer.momentum
        moving_mean = layer.moving_mean.value.to(dtype)
        moving_variance = layer.moving_variance.value.to(dtype)
        layer.moving_mean.assign(moving_mean * momentum + mean.detach() * (1.0 - momentum))
        layer.moving_variance.assign(
            moving_variance * momentum + variance.detach() * (1.0 - momentum)
        )
    return torch.movedim(out, 1, layer.axis).to(_torch_dtype(layer.compute_dtype))


def _torch_dtype(name: str) -> torch.dtype:
    return getattr(torch, name)
