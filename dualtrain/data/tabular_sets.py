"""Data sets of the task recipes (regression, multilabel, two_towers): scikit-learn's bundled
diabetes set and seeded generated data. Nothing is downloaded; no framework is imported here.

- `diabetes`: 442 patients, 10 raw features (age, sex, BMI, blood pressure, six serum
  measurements, unscaled: the recipe standardizes them inside its model), and a float target,
  disease progression one year later (25-346, mean 152, std 77), as (progression - 150) / 100
  (-1.25 to 1.96): centred near 0 with a spread near 1, so a model's output bias starts where
  the targets are and a constant guess has a squared error near 0.6. MSE is in squared hundreds
  of the original units, MAE in hundreds (x100 for the original); R² is unchanged by scaling.
  Fixed constants, not statistics of the data: no val sample shapes the train targets.
- `multilabel`: `sklearn.datasets.make_multilabel_classification` (word counts drawn from the
  sample's labels), seeded by the run's seed, with bool multi-hot targets.
- `two_towers`: seeded generated rows with two named inputs (`numbers`: float features;
  `category`: an int32 id) and two named targets (`kind`: a class index; `value`: a float).
"""

from __future__ import annotations

import numpy as np

from dualtrain.settings import Check, integer, number

# The diabetes targets: (progression - DIABETES_TARGET_SHIFT) / DIABETES_TARGET_SCALE.
DIABETES_TARGET_SHIFT = 150.0
DIABETES_TARGET_SCALE = 100.0


def diabetes() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's diabetes set: raw features (float32, 442 x 10) and (progression - 150) / 100
    as a (442, 1) float32 target."""
    from sklearn.datasets import load_diabetes

    x, y = load_diabetes(return_X_y=True, scaled=False)
    scaled = (y - DIABETES_TARGET_SHIFT) / DIABETES_TARGET_SCALE
    return x.astype("float32"), scaled.astype("float32").reshape(-1, 1)


def multilabel(
    seed: int,
    num_samples: int = 2000,
    num_features: int = 20,
    num_classes: int = 5,
    labels_per_sample: int = 2,
) -> tuple[np.ndarray, np.ndarray]:
    """`make_multilabel_classification` seeded by `seed`: word counts as float32 features and
    multi-hot targets as bool (so the task is multilabel even where recipe.task is not set)."""
    from sklearn.datasets import make_multilabel_classification

    x, y = make_multilabel_classification(
        n_samples=num_samples,
        n_features=num_features,
        n_classes=num_classes,
        n_labels=labels_per_sample,
        random_state=seed,
    )
    return x.astype("float32"), y.astype(bool)


def two_towers(
    seed: int,
    num_samples: int = 3000,
    num_features: int = 6,
    num_categories: int = 12,
    num_kinds: int = 3,
    noise: float = 0.3,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Rows with two inputs and two targets, seeded by `seed`.

    Each category has an offset vector and a value effect of its own (drawn once); a row's `kind`
    is the class whose random direction best matches its numbers plus its category's offset, and
    its `value` is a nonlinear function of the numbers (a product and a sine) plus the category's
    effect and Gaussian noise. Neither output can be predicted from the numbers alone.

    Returns:
        `({"numbers": (n, num_features) float32, "category": (n, 1) int32},
          {"kind": (n,) int32, "value": (n, 1) float32})`
    """
    rng = np.random.default_rng(seed)
    numbers = rng.normal(size=(num_samples, num_features)).astype("float32")
    category = rng.integers(0, num_categories, size=num_samples)
    offsets = rng.normal(scale=1.5, size=(num_categories, num_features))
    directions = rng.normal(size=(num_features, num_kinds))
    kind = np.argmax((numbers + offsets[category]) @ directions, axis=1)
    effects = rng.normal(size=num_categories)
    value = (
        numbers[:, 0] * numbers[:, 1]
        + np.sin(2.0 * numbers[:, 2])
        + effects[category]
        + noise * rng.normal(size=num_samples)
    )
    return (
        {"numbers": numbers, "category": category.astype("int32")[:, None]},
        {"kind": kind.astype("int32"), "value": value.astype("float32")[:, None]},
    )


# Checked when the config is read, before any framework is imported (settings.py).
CONFIG_KEYS: dict[str, dict[str, Check]] = {
    "multilabel": {
        "num_samples": integer(10),
        "num_features": integer(1),
        "num_classes": integer(2),
        "labels_per_sample": integer(1),
    },
    "two_towers": {
        "num_samples": integer(10),
        "num_features": integer(3),
        "num_categories": integer(1),
        "num_kinds": integer(2),
        "noise": number(lambda v: v >= 0, "a number >= 0 such as 0.3"),
    },
}
