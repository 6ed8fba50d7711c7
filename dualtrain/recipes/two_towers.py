"""two_towers: two named inputs, two named outputs (generated rows: numbers and a category id;
a class and a value).

Two towers meet in a shared trunk:

- the numbers tower standardizes the float features with train-split statistics kept as model
  variables (the mlp recipe's `Standardize` layer, so a checkpoint rebuilds without data);
- the category tower looks the int32 id up in an `Embedding` table (`embedding_dim` numbers per
  category) and flattens it.

Their concatenation goes through Dense-ReLU blocks into two heads, named like the data's targets
so that each target meets its output by name: `kind` (one logit per class,
`SparseCategoricalCrossentropy(from_logits=True)`) and `value` (one float, mean squared error).
`loss()` returns a dict by output name, weighted by `recipe.loss_weights` in the total;
`metrics()` a dict of lists by output name, logged as `val/kind/accuracy` and `val/value/mae`.
No dropout: without random layers `mode=parity` compares the model as it trains.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras

from dualtrain.data import DataInfo, moments
from dualtrain.recipes.mlp import Standardize


def build_model(
    data: DataInfo,
    hidden_units: Sequence[int] = (64, 32),
    embedding_dim: int = 4,
    num_categories: int | None = None,
) -> keras.Model:
    """The two towers, a shared trunk, a `kind` head and a `value` head.

    `num_categories`: the size of the embedding table; None: the largest id in the train split
    plus one (a model rebuilt without data needs it set, as the recipe's YAML does).
    """
    numbers_x = data.x_train["numbers"] if data.x_train is not None else None
    mean, variance = moments(numbers_x) if numbers_x is not None else (None, None)
    if num_categories is None:
        if data.x_train is None:
            raise ValueError("two_towers: set recipe.model.num_categories to rebuild without data")
        num_categories = int(data.x_train["category"].max()) + 1
    numbers = keras.Input(shape=data.input("numbers").shape, name="numbers")
    category = keras.Input(shape=data.input("category").shape, name="category", dtype="int32")
    numeric = Standardize(mean, variance, name="standardize")(numbers)
    embedded = keras.layers.Embedding(num_categories, embedding_dim, name="embedding")(category)
    h = keras.layers.Concatenate()([numeric, keras.layers.Flatten()(embedded)])
    for units in hidden_units:
        h = keras.layers.Dense(units, activation="relu")(h)
    kind = keras.layers.Dense(data.target("kind").num_classes, name="kind")(h)
    value = keras.layers.Dense(data.target("value").shape[-1], name="value")(h)
    return keras.Model(
        {"numbers": numbers, "category": category},
        {"kind": kind, "value": value},
        name="two_towers",
    )


def loss() -> dict[str, keras.losses.Loss]:
    return {
        "kind": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        "value": keras.losses.MeanSquaredError(),
    }


def metrics() -> dict[str, list[keras.metrics.Metric]]:
    return {
        "kind": [keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        "value": [keras.metrics.MeanAbsoluteError(name="mae")],
    }
