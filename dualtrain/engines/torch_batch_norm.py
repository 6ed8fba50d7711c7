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
        out, mean, variance = batch_norm_training(x, gamma, beta, layer.epsilon)
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


@torch.library.custom_op("dualtrain::batch_norm_training", mutates_args=())
def batch_norm_training(
    x: torch.Tensor, gamma: torch.Tensor | None, beta: torch.Tensor | None, epsilon: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batch normalization of `x` (channels on dim 1) by its own statistics: the output, the
    batch mean and the biased batch variance.

    The statistics as Keras computes them (`mean(x**2) - mean(x)**2`, in x's dtype), so that
    torch and tf runs of one model keep agreeing (mode=parity); the normalization and, in the
    backward pass, the gradients by torch's kernels. One op (a custom op) in a captured graph, so
    autograd differentiates it by `_backward` wherever the graph runs."""
    dims = [d for d in range(x.dim()) if d != 1]
    mean = x.mean(dim=dims)
    variance = (x * x).mean(dim=dims) - mean * mean
    out = torch.ops.aten.native_batch_norm(x, gamma, beta, mean, variance, False, 0.0, epsilon)
    return out[0], mean, variance


@batch_norm_training.register_fake
def _(x: torch.Tensor, gamma: Any, beta: Any, epsilon: float) -> Any:
    channels = x.new_empty(x.shape[1])
    return torch.empty_like(x), channels, torch.empty_like(channels)


def _setup(ctx: Any, inputs: Any, output: Any) -> None:
    x, gamma, beta, epsilon = inputs
    _, mean, variance = output
    ctx.save_for_backward(x, gamma, mean, variance)
    ctx.epsilon = epsilon
    ctx.affine = (gamma is not None, beta is not None)


def _backward(ctx: Any, grad: torch.Tensor, *_statistics: Any) -> Any:
    """torch's batch-norm gradient, with the statistics the forward pass used (the gradients
    of the returned statistics are not taken: they only feed the moving averages)."""
    x, gamma, mean, variance = ctx.saved_tensors
    invstd = torch.rsqrt(variance + ctx.epsilon)
    dx, dgamma, dbeta = torch.ops.aten.native_batch_norm_backward(
        grad, x, gamma, None, None, mean, invstd, True, ctx.epsilon, [True, *ctx.affine]
    )
    return dx, dgamma, dbeta, None


batch_norm_training.register_autograd(_backward, setup_context=_setup)
