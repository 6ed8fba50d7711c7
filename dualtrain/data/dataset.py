"""Backend-neutral data: arrays in memory, a seeded stratified split, and a seeded batch order.

The engines adapt these to tf.data and to a torch DataLoader; both read the batch order from
`ArrayDataset.batches`, so one seed gives the same batches in the same order on both backends.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from dualtrain.errors import RunError
from dualtrain.settings import DataSettings


@dataclass(frozen=True)
class ArrayDataset:
    """Features and labels of one split, with the order they are batched in."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.x)

    def batches(self, batch_size: int, seed: int | None = None, epoch: int = 0) -> list[np.ndarray]:
        """Returns the index arrays of each batch; shuffled by (seed, epoch) unless seed is None.

        The last batch may be smaller: every sample is seen once per epoch.
        """
        order = np.arange(len(self))
        if seed is not None:
            order = np.random.default_rng([seed, epoch]).permutation(len(self))
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@dataclass(frozen=True)
class DataInfo:
    """What a recipe's model builder knows about the data."""

    input_shape: tuple[int, ...]
    num_classes: int
    x_train: np.ndarray  # for layers that fit statistics on the train split (e.g. Normalization)


@dataclass(frozen=True)
class DataSplits:
    train: ArrayDataset
    val: ArrayDataset
    info: DataInfo


def load_data(settings: DataSettings, seed: int) -> DataSplits:
    """Calls the configured source and splits its arrays into train and val.

    A source returns either `(x, y)`, split here into a seeded stratified val fraction, or
    `(x_train, y_train, x_val, y_val)` when the data comes with its own val split.
    """
    source = _resolve(settings.source)
    kwargs = dict(settings.params)
    if "seed" in inspect.signature(source).parameters:
        kwargs["seed"] = seed
    try:
        arrays = source(**kwargs)
    except TypeError as err:
        if "argument" not in str(err):
            raise
        accepted = ", ".join(inspect.signature(source).parameters)
        raise RunError(
            f"data source {settings.source} does not take the config's data keys "
            f"{sorted(settings.params)}: {err}; it accepts: {accepted}"
        ) from None
    if len(arrays) == 2:
        x, y = (np.asarray(a) for a in arrays)
        _check_arrays(x, y, settings.source)
        train, val = stratified_split(x, y, settings.val_fraction, seed)
    elif len(arrays) == 4:
        x, y, xv, yv = (np.asarray(a) for a in arrays)
        _check_arrays(x, y, settings.source)
        _check_arrays(xv, yv, settings.source + " (val)")
        train, val = ArrayDataset(x, y), ArrayDataset(xv, yv)
    else:
        raise RunError(
            f"data source {settings.source} returned {len(arrays)} arrays; "
            "expected (x, y) or (x_train, y_train, x_val, y_val)"
        )
    num_classes = int(max(train.y.max(), val.y.max())) + 1
    info = DataInfo(input_shape=tuple(train.x.shape[1:]), num_classes=num_classes, x_train=train.x)
    return DataSplits(train=train, val=val, info=info)


def stratified_split(
    x: np.ndarray, y: np.ndarray, val_fraction: float, seed: int
) -> tuple[ArrayDataset, ArrayDataset]:
    """Seeded split that keeps each class's share equal in train and val."""
    from sklearn.model_selection import train_test_split

    try:
        x_train, x_val, y_train, y_val = train_test_split(
            x, y, test_size=val_fraction, random_state=seed, stratify=y
        )
    except ValueError as err:
        raise RunError(f"cannot split the data into train and val: {err}") from None
    return ArrayDataset(x_train, y_train), ArrayDataset(x_val, y_val)


def _resolve(source: str) -> Callable[..., tuple[np.ndarray, ...]]:
    module_name, _, attr = source.partition(":")
    if not attr:
        raise RunError(f"data.source must look like 'package.module:function'; got {source!r}")
    module = importlib.import_module(module_name)
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise RunError(f"data.source {source!r}: module {module_name} has no function {attr!r}")
    return fn


def _check_arrays(x: np.ndarray, y: np.ndarray, source: str) -> None:
    if x.ndim < 2 or y.ndim != 1 or len(x) != len(y) or len(x) == 0:
        raise RunError(
            f"data source {source} returned x of shape {x.shape} and y of shape {y.shape}; "
            "expected x as (samples, features...) and y as (samples,) with the same length"
        )
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
        raise RunError(
            f"data source {source} returned labels of dtype {y.dtype} with minimum {y.min()}; "
            "expected class indices 0..num_classes-1 as integers"
        )
    if not np.issubdtype(x.dtype, np.floating) or not np.isfinite(x).all():
        raise RunError(
            f"data source {source} returned features of dtype {x.dtype} with NaN, Inf or "
            "non-float values; expected finite float features"
        )
