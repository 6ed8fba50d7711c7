"""Seeded random numbers on torch as plain tensor arithmetic: counter-based, graph-capturable.

Keras on torch draws a seeded layer's random numbers (Dropout(seed=...), GaussianNoise, the
GRU/LSTM dropout masks, `keras.random.*` with a seed) from a `torch.Generator` that it seeds by
reading the layer's seed state on the host (`int(seed)`). A graph cannot replay that read: make_fx
refuses it, and a seed baked into a graph would repeat one mask at every step. It is also a host
round trip in every step.

Here the numbers are a hash of (seed state, element index): murmur3's 32-bit finalizer, applied
twice, in int64 arithmetic (products wrap, the low 32 bits are kept). The seed state is a tensor
(Keras's `SeedGenerator` state, a model variable), so the draw is a function of tensors: captured
graphs take the state in and hand the advanced state out, checkpoints keep it, and a run resumed
from one draws what the uninterrupted run drew. The torch engine draws from here in every step,
captured or eager (debug=eager), so the two give the same numbers.

Unseeded Dropout keeps Keras's fast path (torch's dropout kernel on torch's global RNG, whose
state the checkpoints keep).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

_LOW_32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9  # 2^32 / golden ratio: spreads consecutive counters apart


def _fmix(h: torch.Tensor) -> torch.Tensor:
    """murmur3's finalizer: a bijection of uint32 values (held in int64) that mixes every bit."""
    h = h ^ (h >> 16)
    h = (h * 0x85EBCA6B) & _LOW_32
    h = h ^ (h >> 13)
    h = (h * 0xC2B2AE35) & _LOW_32
    return h ^ (h >> 16)


def random_bits(seed: torch.Tensor, count: int, device: Any) -> torch.Tensor:
    """`count` uint32 values (in int64) for a Keras seed tensor of two int32s (seed, counter)."""
    seed = seed.to(device=device, dtype=torch.int64) & _LOW_32
    key = _fmix(_fmix(seed[0]) ^ ((seed[1] * _GOLDEN) & _LOW_32))
    index = torch.arange(count, dtype=torch.int64, device=device)
    return _fmix(_fmix((index * _GOLDEN + key) & _LOW_32) ^ key)


def uniform_01(seed: torch.Tensor, shape: Sequence[int], device: Any) -> torch.Tensor:
    """float32 in [0, 1): the top 24 bits of each hash, exactly representable."""
    count = math.prod(shape)
    bits = random_bits(seed, count, device) >> 8
    return (bits.to(torch.float32) * 2.0**-24).reshape(tuple(shape))


def normal_01(seed: torch.Tensor, shape: Sequence[int], device: Any) -> torch.Tensor:
    """Standard normal float32 by Box-Muller, from two uniforms per value."""
    count = math.prod(shape)
    pairs = uniform_01(seed, (2, count), device)
    radius = torch.sqrt(-2.0 * torch.log1p(-pairs[0]))  # 1 - u lies in (0, 1]: no log(0)
    return (radius * torch.cos(2.0 * math.pi * pairs[1])).reshape(tuple(shape))
