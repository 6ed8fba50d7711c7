"""Multi-label: multi-hot targets with BinaryCrossentropy and AUC (scikit-learn's generator)."""

from __future__ import annotations

import keras
import numpy as np

from dualtrain.data import DataInfo


def load_data() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import make_multilabel_classification

    x, y = make_multilabel_classification(n_samples=800, n_features=12, n_classes=4, random_state=0)
    return x.astype("float32"), y.astype(bool)


def build_model(data: DataInfo) -> keras.Model:
    inputs = keras.Input(shape=data.input_shape)
    hidden = keras.layers.Dense(32, activation="relu")(inputs)
    return keras.Model(inputs, keras.layers.Dense(data.num_classes)(hidden))


def loss() -> keras.losses.Loss:
    return keras.losses.BinaryCrossentropy(from_logits=True)


def metrics() -> list[keras.metrics.Metric]:
    return [keras.metrics.AUC(from_logits=True, name="auc", multi_label=True)]
