"""Backend-neutral data: arrays in memory, a seeded stratified split, and a seeded batch order.

The engines adapt these to tf.data and to a torch DataLoader; both read the batch order from
`ArrayDataset.batches`, so one seed gives the same batches in the same order on both backends.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from dualtrain.data.rows import Rows
from dualtrain.errors import RunError
from dualtrain.settings import DataSettings

log = logging.getLogger("dualtrain")


@dataclass(frozen=True)
class ArrayDataset:
    """Features and labels of one split, with the order they are batched in.

    `x` is a NumPy array in memory, or `Rows` that stay on disk and are read batch by batch
    (`x[indices]` works on both); labels are always in memory.
    """

    x: Any  # np.ndarray | Rows
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.x)

    @property
    def in_memory(self) -> bool:
        return isinstance(self.x, np.ndarray)

    def subset(self, indices: np.ndarray) -> ArrayDataset:
        x = self.x[indices] if self.in_memory else self.x.subset(indices)
        return ArrayDataset(x, self.y[indices])

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
    # For layers that fit statistics on the train split (e.g. Normalization); an array, or Rows
    # on disk: `dualtrain.data.moments(x_train)` reads either.
    x_train: Any
    classes: tuple[str, ...] | None = None  # class names, where the data has them


@dataclass(frozen=True)
class DataSplits:
    train: ArrayDataset
    val: ArrayDataset
    info: DataInfo
    # What the source fitted on the train split (a CSV's encoding, a folder's class names), as
    # JSON; checkpoints keep it, so eval and export read data the way training did.
    transform: dict[str, Any] | None = None


@dataclass(frozen=True)
class SourceData:
    """What a file source returns: the arrays, and what describes them.

    Args:
        x, y: all samples, or the train split when `x_val` is given; `x` may be `Rows`.
        x_val, y_val: the val split; None: a seeded stratified `data.val_fraction` of x, y.
        said: how errors name the data, e.g. "data.path=train.npz has".
        transform: what the source fitted on the train split (JSON), kept with checkpoints.
        classes: class names; their number is the number of classes.
        notes: lines for the run's log (e.g. files skipped).
    """

    x: Any
    y: np.ndarray
    said: str
    x_val: Any = None
    y_val: np.ndarray | None = None
    transform: dict[str, Any] | None = None
    classes: tuple[str, ...] | None = None
    notes: tuple[str, ...] = ()


def load_data(
    settings: DataSettings, seed: int, transform: dict[str, Any] | None = None
) -> DataSplits:
    """Calls the configured source and splits its arrays into train and val.

    A source returns `(x, y)`, split here into a seeded stratified val fraction, or
    `(x_train, y_train, x_val, y_val)` when the data comes with its own val split, or a
    `SourceData`. A source that takes `seed`, `val_fraction` or `transform` (the one a checkpoint
    recorded, to be applied instead of fitting a new one) receives them.
    """
    source = _resolve(settings.source)
    kwargs = dict(settings.params)
    accepted = inspect.signature(source).parameters
    given = {"seed": seed, "val_fraction": settings.val_fraction, "transform": transform}
    kwargs.update({key: value for key, value in given.items() if key in accepted})
    # data.num_classes: the labels are checked against it; the source gets it if it takes it.
    num_classes = kwargs.get("num_classes")
    if "num_classes" not in accepted:
        kwargs.pop("num_classes", None)
    # Bound before the call: a TypeError raised inside the source is the source's own, not a
    # config key the function does not take.
    try:
        inspect.signature(source).bind(**kwargs)
    except TypeError as err:
        raise RunError(
            f"data source {settings.source} does not take the config's data keys "
            f"{sorted(settings.params)}: {err}; it accepts: {', '.join(accepted) or 'none'}"
        ) from err
    result: SourceData | tuple[Any, ...] = source(**kwargs)
    if not isinstance(result, SourceData):
        result = _from_arrays(result, settings.source)
    for note in result.notes:
        log.warning(note)
    x, y = _features(result.x, result.said), _labels(result.y, result.said)
    _check_lengths(x, y, result.said, "")
    if num_classes is None and result.classes is not None:
        num_classes = len(result.classes)
    if num_classes is not None:  # before the split, which a stray label could break
        _check_label_range(y, num_classes, result.said)
    if result.x_val is None:
        train_idx, val_idx = stratified_indices(
            y, settings.val_fraction, seed, result.said, result.classes
        )
        whole = ArrayDataset(x, y)
        train, val = whole.subset(train_idx), whole.subset(val_idx)
    else:
        said_val = result.said + " (val)"
        train = ArrayDataset(x, y)
        x_val, y_val = _features(result.x_val, said_val), _labels(result.y_val, said_val)
        _check_lengths(x_val, y_val, result.said, "val ")
        val = ArrayDataset(x_val, y_val)
        if train.x.shape[1:] != val.x.shape[1:]:
            raise RunError(
                f"{result.said} train samples of shape {train.x.shape[1:]} and val samples of "
                f"shape {val.x.shape[1:]}; both splits need the same sample shape"
            )
    if num_classes is None:
        num_classes = int(max(train.y.max(), val.y.max())) + 1
    _check_label_range(val.y, num_classes, result.said + " (val)")
    info = DataInfo(
        input_shape=tuple(train.x.shape[1:]),
        num_classes=num_classes,
        x_train=train.x,
        classes=result.classes,
    )
    return DataSplits(train=train, val=val, info=info, transform=result.transform)


def stratified_indices(
    y: np.ndarray,
    val_fraction: float,
    seed: int,
    said: str = "the data has",
    classes: tuple[str, ...] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train and val indices that keep each class's share equal in both.

    Raises:
        RunError: where the samples are too few for such a split (`said` names the data, and
            `classes` the labels, where they have names).
    """
    from sklearn.model_selection import train_test_split

    problem = split_problem(y, val_fraction, classes)
    if problem is not None:
        raise RunError(f"{said} {problem}: add samples, or change data.val_fraction")
    try:
        train, val = train_test_split(
            np.arange(len(y)), test_size=val_fraction, random_state=seed, stratify=y
        )
    except ValueError as err:
        raise RunError(f"cannot split the data into train and val: {err}") from err
    return train, val


def split_problem(
    y: Any, val_fraction: float, classes: tuple[str, ...] | None = None
) -> str | None:
    """Why a stratified train/val split of labels `y` cannot be made, or None where it can.

    The rules are scikit-learn's: every class needs two samples (one for each split), and each
    split needs at least one sample of every class. Said in the data's terms, not sklearn's.
    """
    values, counts = np.unique(np.asarray(y), return_counts=True)
    n, num = len(y), len(values)
    if not n:
        return None
    val = math.ceil(val_fraction * n)  # how train_test_split rounds a fractional test_size
    needs = (
        f"a split into train and val with data.val_fraction={val_fraction} needs at least 2 "
        f"samples of every class and {num} samples (one per class) in each split"
    )
    if counts.min() < 2:
        rare = values[counts < 2]
        first = rare[0].item()
        name = classes[first] if classes is not None else first
        return (
            f"{n} samples of {num} classes, {len(rare)} of them with a single sample "
            f"(the first {name!r}); {needs}"
        )
    if val < num or n - val < num:
        return f"{n} samples of {num} classes: {val} for val and {n - val} for train; {needs}"
    return None


def stratified_split(
    x: np.ndarray, y: np.ndarray, val_fraction: float, seed: int
) -> tuple[ArrayDataset, ArrayDataset]:
    """Seeded split that keeps each class's share equal in train and val."""
    train, val = stratified_indices(y, val_fraction, seed)
    whole = ArrayDataset(x, y)
    return whole.subset(train), whole.subset(val)


def _resolve(source: str) -> Callable[..., Any]:
    module_name, _, attr = source.partition(":")
    if not attr:
        raise RunError(f"data.source must look like 'package.module:function'; got {source!r}")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name is None or not (module_name + ".").startswith(err.name + "."):
            raise  # a module that the source's own module imports: the user's code, as it is
        raise RunError(
            f"data.source={source}: there is no module {err.name}; give a module on the Python "
            "path (the working directory, or --config-dir's folder) as package.module:function"
        ) from err
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise RunError(f"data.source {source!r}: module {module_name} has no function {attr!r}")
    return fn


def _from_arrays(arrays: Any, source: str) -> SourceData:
    said = f"data source {source} returned"
    if not isinstance(arrays, (tuple, list)):
        raise RunError(
            f"data source {source} returned a {type(arrays).__name__}; expected a tuple (x, y) "
            "or (x_train, y_train, x_val, y_val) of arrays, or a dualtrain.data.SourceData"
        )
    if len(arrays) == 2:
        return SourceData(x=arrays[0], y=np.asarray(arrays[1]), said=said)
    if len(arrays) == 4:
        x, y, x_val, y_val = arrays
        return SourceData(x=x, y=np.asarray(y), x_val=x_val, y_val=np.asarray(y_val), said=said)
    raise RunError(
        f"data source {source} returned {len(arrays)} arrays; "
        "expected (x, y) or (x_train, y_train, x_val, y_val)"
    )


def _features(x: Any, said: str) -> Any:
    """Checks features: (samples, ...) floats, all finite; says where a NaN or Inf is."""
    if not isinstance(x, Rows):
        x = np.asarray(x)
    if x.ndim < 2 or len(x) == 0:
        raise RunError(
            f"{said} features of shape {x.shape}; expected (samples, features...) with at "
            "least one sample"
        )
    if min(x.shape[1:]) < 1:  # a model would build on samples with no values in them
        raise RunError(
            f"{said} features of shape {x.shape}, samples of shape {tuple(x.shape[1:])} with no "
            "values; expected every dimension of a sample to be at least 1"
        )
    if not np.issubdtype(x.dtype, np.floating):
        raise RunError(
            f"{said} features of dtype {x.dtype}; expected finite float features (NaN, Inf or "
            "non-float values are not accepted)"
        )
    if isinstance(x, Rows):
        first_bad = x.summary().first_nonfinite  # one pass over the file, kept for moments()
    else:
        finite = np.isfinite(x)
        first_bad = None if finite.all() else tuple(int(i) for i in np.argwhere(~finite)[0])
    if first_bad is not None:
        sample, *feature = first_bad
        raise RunError(
            f"{said} NaN or Inf features, the first at sample {sample}, feature index "
            f"{tuple(feature)}; expected finite float features: fix or drop those samples"
        )
    return x


def _labels(y: Any, said: str) -> np.ndarray:
    """Labels as int32 class indices; float labels are accepted where they are whole numbers."""
    y = np.asarray(y)
    whole = np.issubdtype(y.dtype, np.integer) or (
        np.issubdtype(y.dtype, np.floating) and np.isfinite(y).all() and (y == np.round(y)).all()
    )
    if y.ndim != 1 or len(y) == 0 or not whole or y.min() < 0:
        low = y.min() if y.size and np.issubdtype(y.dtype, np.number) else None
        raise RunError(
            f"{said} labels of shape {y.shape}, dtype {y.dtype} with minimum {low}; "
            "expected class indices 0..num_classes-1 as integers, one per sample"
        )
    return y.astype("int32")


def _check_lengths(x: Any, y: np.ndarray, said: str, split: str) -> None:
    # Zipping features with fewer labels would train on the shorter of the two, silently.
    if len(x) != len(y):
        raise RunError(
            f"{said} {len(x)} {split}samples of features and {len(y)} {split}labels; expected "
            "one label per sample, the same number of each"
        )


def _check_label_range(y: np.ndarray, num_classes: int, said: str) -> None:
    outside = np.flatnonzero((y < 0) | (y >= num_classes))
    if len(outside):
        i = int(outside[0])
        raise RunError(
            f"{said} {len(outside)} labels outside the class range 0..{num_classes - 1}, the "
            f"first at sample {i} (label {int(y[i])}); expected class indices "
            "0..num_classes-1 (data.num_classes, or the number of class names)"
        )
