"""multilabel: several labels per sample, one sigmoid score each (scikit-learn's generated
multi-label data: word counts drawn from each sample's labels).

The model standardizes the counts with train-split statistics kept as model variables (the mlp
recipe's `Standardize` layer, so a checkpoint rebuilds without data), then Dense-ReLU blocks and
one logit per label. Each label is its own yes/no question: the loss is binary cross-entropy on the
logits, averaged over labels and samples (`BinaryCrossentropy(from_logits=True)`), and a label is
predicted where its sigmoid is above 0.5 (its logit above 0).

Logged metrics: micro-averaged F1 over every (sample, label) decision (`SigmoidF1Score`: Keras's
`F1Score` given sigmoid probabilities, as it takes probabilities, not logits) and the AUC of the
scores over all labels (`AUC(from_logits=True)`, micro-averaged). No dropout: without random
layers `mode=parity` compares the model as it trains.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras

from dualtrain.data import DataInfo, moments
from dualtrain.recipes.mlp import Standardize


class SigmoidF1Score(keras.metrics.F1Score):
    """`keras.metrics.F1Score` on logits: the sigmoid is applied before the threshold."""

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        super().update_state(y_true, keras.ops.sigmoid(y_pred), sample_weight)


def build_model(data: DataInfo, hidden_units: Sequence[int] = (64,)) -> keras.Model:
    """Standardize, Dense-ReLU blocks, one logit per label."""
    mean, variance = moments(data.x_train) if data.x_train is not None else (None, None)
    inputs = keras.Input(shape=data.input_shape, name="features")
    x = Standardize(mean, variance, name="standardize")(inputs)
    for units in hidden_units:
        x = keras.layers.Dense(units, activation="relu")(x)
    logits = keras.layers.Dense(data.num_classes, name="logits")(x)
    return keras.Model(inputs, logits, name="multilabel")


def loss() -> keras.losses.Loss:
    return keras.losses.BinaryCrossentropy(from_logits=True)


def metrics() -> list[keras.metrics.Metric]:
    return [
        SigmoidF1Score(average="micro", threshold=0.5, name="f1"),
        keras.metrics.AUC(from_logits=True, name="auc"),
    ]
