"""A user's loss written in keras.ops, as README's `my_recipes` example writes it (one-hot labels
and log-softmax), on the zoo's MLP and feature data (benchmarks/zoo.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from keras import ops
from zoo_recipes import build_model, features, metrics

__all__ = ["build_model", "features", "loss", "metrics"]


def loss() -> Callable[[Any, Any], Any]:
    def cross_entropy(y_true: Any, logits: Any) -> Any:
        one_hot = ops.one_hot(y_true, ops.shape(logits)[-1])
        return ops.mean(-ops.sum(one_hot * ops.log_softmax(logits), axis=-1))

    return cross_entropy
