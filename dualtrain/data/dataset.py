"""Backend-neutral data: arrays in memory, a seeded split, and a seeded batch order.

The engines adapt these to tf.data and to a torch DataLoader; both read the batch order from
`ArrayDataset.batches`, so one seed gives the same batches in the same order on both backends.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from dualtrain.data import structure
from dualtrain.data.batches import BatchSplit, is_batch_source
from dualtrain.data.rows import Rows
from dualtrain.errors import RunError
from dualtrain.settings import DataSettings

log = logging.getLogger("dualtrain")


@dataclass(frozen=True)
class ArrayDataset:
    """Features and targets of one split, with the order they are batched in.

    `x` is one array, a dict or tuple of arrays (data/structure.py), or `Rows` that stay on disk
    and are read batch by batch (`x[indices]` works on both); `y` likewise, in memory, or None
    where there are no targets.
    """

    x: Any  # np.ndarray | Rows | dict[str, np.ndarray] | tuple[np.ndarray, ...]
    y: Any  # np.ndarray | dict[str, np.ndarray] | tuple[np.ndarray, ...] | None

    def __len__(self) -> int:
        return len(structure.first(self.x))

    @property
    def in_memory(self) -> bool:
        return not isinstance(self.x, Rows)

    @property
    def nbytes(self) -> int:
        """The memory the split's arrays take (features on disk count as none)."""
        leaves = [] if isinstance(self.x, Rows) else structure.leaves(self.x)
        if self.y is not None:
            leaves += structure.leaves(self.y)
        return sum(int(np.asarray(a).nbytes) for a in leaves)

    def num_batches(self, batch_size: int) -> int:
        return math.ceil(len(self) / batch_size)

    @property
    def num_samples(self) -> int | None:
        return len(self)

    def head(self, count: int) -> ArrayDataset:
        """The first `count` samples (all, if fewer), e.g. for checking an export."""
        return self.subset(np.arange(min(count, len(self))))

    def sample(self, count: int = 2) -> tuple[Any, Any]:
        """The first `count` samples as arrays (y: () where there are no targets)."""
        return self.rows(np.arange(min(count, len(self))))

    def rows(self, indices: np.ndarray) -> tuple[Any, Any]:
        """The batch `indices` as arrays: (x, y), y as () where there are no targets."""
        x = self.x[indices] if isinstance(self.x, Rows) else _take(self.x, indices)
        return x, () if self.y is None else _take(self.y, indices)

    def subset(self, indices: np.ndarray) -> ArrayDataset:
        x = self.x.subset(indices) if isinstance(self.x, Rows) else _take(self.x, indices)
        return ArrayDataset(x, _take(self.y, indices))

    def batches(self, batch_size: int, seed: int | None = None, epoch: int = 0) -> list[np.ndarray]:
        """Returns the index arrays of each batch; shuffled by (seed, epoch) unless seed is None.

        The last batch may be smaller: every sample is seen once per epoch.
        """
        order = np.arange(len(self))
        if seed is not None:
            order = np.random.default_rng([seed, epoch]).permutation(len(self))
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def _take(value: Any, indices: np.ndarray) -> Any:
    return structure.map_leaves(lambda a: a[indices], value)


@dataclass(frozen=True)
class ArraySpec:
    """One input or target of the data.

    Attributes:
        name: a key of x or y where it is a dict, a position (`"0"`, `"1"`) in a tuple, else
            `x` or `y`.
        shape: the shape of one sample, without the batch dimension.
        dtype: the NumPy dtype's name (`float32`, `int32`, ...).
        task: for a target, `classification`, `multilabel` or `regression`; None for an input.
        num_classes: classification: labels 0..n-1; multilabel: n flags; None otherwise.
        classes: the class names, where the data names them (an image folder's sub-folders).
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    task: str | None = None
    num_classes: int | None = None
    classes: tuple[str, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "shape": list(self.shape)}


@dataclass(frozen=True)
class DataInfo:
    """What a recipe's model builder knows about the data: every input and target.

    One input and one target (the common case) read as `data.input_shape`, `data.num_classes`
    and `data.classes`; several as `data.input("name")` and `data.target("name")`.

    Attributes:
        inputs: every input of the model.
        targets: every target; none for a recipe whose data has no y.
        x_train: for layers that fit statistics on the train split (e.g. Normalization): the
            train split's x (an array, Rows on disk, or a dict or tuple of arrays); None when a
            model is rebuilt from a checkpoint. `dualtrain.data.moments(x_train)` reads an array
            or Rows.
        input_kind: how x is structured: `array`, `dict` or `tuple`.
        target_kind: how y is structured: `array`, `dict`, `tuple` or `none`.
    """

    inputs: tuple[ArraySpec, ...]
    targets: tuple[ArraySpec, ...] = ()
    x_train: Any = None
    input_kind: str = structure.ARRAY
    target_kind: str = structure.ARRAY

    @classmethod
    def classifier(
        cls, input_shape: tuple[int, ...], num_classes: int, x_train: Any = None
    ) -> DataInfo:
        """One float input and one class label per sample: what a classifier is built for
        (a benchmark's or a notebook's model, without a data source)."""
        return cls(
            inputs=(ArraySpec("x", tuple(input_shape), "float32"),),
            targets=(ArraySpec("y", (), "int32", "classification", int(num_classes)),),
            x_train=x_train,
        )

    def input(self, name: str) -> ArraySpec:
        """The input named `name` (see `ArraySpec.name`)."""
        return _by_name(self.inputs, name, "input")

    def target(self, name: str) -> ArraySpec:
        """The target named `name` (see `ArraySpec.name`)."""
        return _by_name(self.targets, name, "target")

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of a sample, where the data has one input."""
        return self._only(self.inputs, "input", "data.input('<name>').shape").shape

    @property
    def num_classes(self) -> int:
        """The number of classes, where the data has one target with classes."""
        target = self._only(self.targets, "target", "data.target('<name>').num_classes")
        if target.num_classes is None:
            raise RunError(
                f"data.num_classes: the target is a {target.task} target ({target.dtype}), which "
                "has no classes; give class labels as integers (or set recipe.task="
                "classification), or build the model from data.target_shape"
            )
        return target.num_classes

    @property
    def target_shape(self) -> tuple[int, ...]:
        """The shape of a sample's target, where the data has one target."""
        return self._only(self.targets, "target", "data.target('<name>').shape").shape

    @property
    def classes(self) -> tuple[str, ...] | None:
        """Class names, where the data has one target and names for its classes."""
        return self.targets[0].classes if len(self.targets) == 1 else None

    @property
    def task(self) -> str:
        """The task of the one target ("none" without targets)."""
        if not self.targets:
            return "none"
        return str(self._only(self.targets, "target", "data.target('<name>').task").task)

    @staticmethod
    def _only(specs: tuple[ArraySpec, ...], what: str, instead: str) -> ArraySpec:
        if len(specs) != 1:
            names = [s.name for s in specs]
            raise RunError(
                f"the data has {len(specs)} {what}s {names}, not one; use {instead} for each"
            )
        return specs[0]

    def to_json(self) -> dict[str, Any]:
        return {
            "inputs": [s.to_json() for s in self.inputs],
            "targets": [s.to_json() for s in self.targets],
            "input_kind": self.input_kind,
            "target_kind": self.target_kind,
        }


def _by_name(specs: tuple[ArraySpec, ...], name: str, what: str) -> ArraySpec:
    for spec in specs:
        if spec.name == name:
            return spec
    raise RunError(f"the data has no {what} {name!r}; its {what}s: {[s.name for s in specs]}")


@dataclass(frozen=True)
class DataSplits:
    train: ArrayDataset | BatchSplit
    val: ArrayDataset | BatchSplit
    info: DataInfo
    # What the source fitted on the train split (a CSV's encoding, a folder's class names), as
    # JSON; checkpoints keep it, so eval and export read data the way training did.
    transform: dict[str, Any] | None = None

    def describe(self) -> str:
        """How big the splits are, for the log: in samples, or in batches for a batch source."""
        if isinstance(self.train, BatchSplit) or isinstance(self.val, BatchSplit):
            return f"{self.train.num_batches(0)} train / {self.val.num_batches(0)} val batches"
        return f"{len(self.train)} train / {len(self.val)} val samples"


@dataclass(frozen=True)
class SourceData:
    """What a file source returns: the arrays, and what describes them.

    Args:
        x, y: all samples, or the train split when `x_val` is given; `x` may be `Rows`, and
            either may be a dict or tuple of arrays; `y` may be None (no targets).
        x_val, y_val: the val split; None: a seeded `data.val_fraction` of x, y (stratified
            for class labels).
        said: how errors name the data, e.g. "data.path=train.npz has".
        transform: what the source fitted on the train split (JSON), kept with checkpoints.
        classes: class names; their number is the number of classes.
        notes: lines for the run's log (e.g. files skipped).
    """

    x: Any
    y: Any
    said: str
    x_val: Any = None
    y_val: Any = None
    transform: dict[str, Any] | None = None
    classes: tuple[str, ...] | None = None
    notes: tuple[str, ...] = ()


def load_data(
    settings: DataSettings,
    seed: int,
    transform: dict[str, Any] | None = None,
    task: str | Mapping[str, str] | None = None,
) -> DataSplits:
    """Calls the configured source, checks its arrays and splits them into train and val.

    A source returns `(x, y)`, split here into a seeded val fraction (stratified for class
    labels), or `(x_train, y_train, x_val, y_val)` when the data comes with its own val split, or
    a `SourceData`. x and y may each be an array, a dict or a tuple of arrays; y may be None. A
    source that takes `seed`, `val_fraction` or `transform` (the one a checkpoint recorded, to be
    applied instead of fitting a new one) receives them.

    Args:
        task: `recipe.task`: every target's task, or one per target name; None: inferred from
            each target's dtype (integers: classification, booleans: multilabel, floats:
            regression), and logged.
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
    if _batch_sources(result, settings.source):
        return _from_batch_sources(
            result, f"data source {settings.source} returned", task, num_classes
        )
    if not isinstance(result, SourceData):
        result = _from_arrays(result, settings.source)
    for note in result.notes:
        log.warning(note)
    said = result.said
    x, y = _inputs(result.x, said), _targets(result.y, said)
    _check_lengths(x, y, said, "")
    tasks = _tasks(y, task, said)
    y = _by_task(y, tasks, said)
    if num_classes is None and result.classes is not None:
        num_classes = len(result.classes)
    stratify = _stratify(y, tasks)
    if num_classes is not None and stratify is not None:  # before the split: a stray label
        _check_label_range(stratify, num_classes, said)  # could break it
    if result.x_val is None:
        if stratify is not None:
            train_idx, val_idx = stratified_indices(
                stratify, settings.val_fraction, seed, said, result.classes
            )
        else:
            train_idx, val_idx = random_indices(
                len(structure.first(x)), settings.val_fraction, seed
            )
        whole = ArrayDataset(x, y)
        train, val = whole.subset(train_idx), whole.subset(val_idx)
    else:
        said_val = said + " (val)"
        train = ArrayDataset(x, y)
        x_val, y_val = _inputs(result.x_val, said_val), _targets(result.y_val, said_val)
        _check_lengths(x_val, y_val, said, "val ")
        _check_same_structure(x, x_val, y, y_val, said)
        val = ArrayDataset(x_val, _by_task(y_val, tasks, said_val))
    specs = _target_specs(train.y, val.y, tasks, num_classes, result.classes, said)
    info = DataInfo(
        inputs=tuple(
            ArraySpec(name, tuple(a.shape[1:]), str(a.dtype))
            for name, a in structure.named(train.x, "x").items()
        ),
        targets=specs,
        x_train=train.x,
        input_kind=structure.kind(x),
        target_kind=structure.kind(y),
    )
    return DataSplits(train=train, val=val, info=info, transform=result.transform)


def _batch_sources(result: Any, source: str) -> bool:
    """Whether the source returned (train, val) batch sources (data/batches.py)."""
    if not isinstance(result, (tuple, list)) or not any(is_batch_source(r) for r in result):
        return False
    if len(result) != 2 or not all(is_batch_source(r) for r in result):
        raise RunError(
            f"data source {source} returned a batch source (a keras.utils.PyDataset or a "
            "function of batches) among other values; return (train, val), both batch sources"
        )
    return True


def _from_batch_sources(
    sources: Any, said: str, task: str | Mapping[str, str] | None, num_classes: int | None
) -> DataSplits:
    """Splits of batches that the source makes itself, described by the first train batch and
    checked batch by batch as the engines read them."""
    train = BatchSplit(sources[0], said, train=True)
    val = BatchSplit(sources[1], said + " (val)", train=False)
    first = said + " (batch 0)"
    x0, y0 = train.first_batch()
    x, y = _inputs(x0, first), _targets(y0, first)
    _check_lengths(x, y, first, "")
    tasks = _tasks(y, task, said)
    counts = _batch_class_counts(sources[0], y, tasks, num_classes, said)

    def check(x: Any, y: Any, where: str) -> tuple[Any, Any]:
        x, y = _inputs(x, where), _targets(y, where)
        _check_lengths(x, y, where, "")
        y = _by_task(y, tasks, where)
        for name, target in structure.named(y, "y").items():
            if name in counts:
                _check_label_range(target, counts[name], where)
        return x, y

    train.check = val.check = check
    x, y = check(x0, y0, first)
    specs = tuple(
        ArraySpec(
            name,
            tuple(target.shape[1:]),
            str(target.dtype),
            tasks[name],
            counts.get(name, int(target.shape[-1]) if tasks[name] == "multilabel" else None),
        )
        for name, target in structure.named(y, "y").items()
    )
    info = DataInfo(
        inputs=tuple(
            ArraySpec(name, tuple(a.shape[1:]), str(a.dtype))
            for name, a in structure.named(x, "x").items()
        ),
        targets=specs,
        x_train=None,  # not read whole: statistics come from the recipe's own pass, if any
        input_kind=structure.kind(x),
        target_kind=structure.kind(y),
    )
    return DataSplits(train=train, val=val, info=info)


def _batch_class_counts(
    source: Any, y: Any, tasks: dict[str, str], num_classes: int | None, said: str
) -> dict[str, int]:
    """The class count of each classification target of a batch source: `data.num_classes`
    (one target), or the source's `num_classes` attribute (a number, or one per target). A
    batch source is not read whole before training, so the labels cannot tell."""
    stated = getattr(source, "num_classes", None)
    counts = {}
    for name in structure.named(y, "y"):
        if tasks[name] != "classification":
            continue
        count = stated.get(name) if isinstance(stated, Mapping) else stated
        count = num_classes if count is None and len(tasks) == 1 else count
        if not isinstance(count, int) or count < 2:
            raise RunError(
                f"{said} batches with class labels ({name}) but not how many classes: a batch "
                "source is not read whole before training; set +data.num_classes=N, or give "
                "the source a num_classes attribute (a number, or a dict by target)"
            )
        counts[name] = count
    return counts


def random_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train and val indices of `n` samples (val: `val_fraction` of them, rounded up as
    scikit-learn's split rounds, at least one sample in each split where n allows)."""
    val = min(max(1, math.ceil(val_fraction * n)), max(n - 1, 1))
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[val:]), np.sort(order[:val])


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
        return SourceData(x=arrays[0], y=arrays[1], said=said)
    if len(arrays) == 4:
        x, y, x_val, y_val = arrays
        return SourceData(x=x, y=y, x_val=x_val, y_val=y_val, said=said)
    raise RunError(
        f"data source {source} returned {len(arrays)} arrays; "
        "expected (x, y) or (x_train, y_train, x_val, y_val)"
    )


def _names(value: Any, single: str, said: str, what: str) -> dict[str, Any]:
    named = structure.named(value, single)
    if structure.kind(value) == structure.DICT and not all(isinstance(k, str) and k for k in value):
        raise RunError(f"{said} {what} as a dict with keys {list(value)}; expected text keys")
    if not named:
        raise RunError(f"{said} {what} as an empty {type(value).__name__}; expected arrays")
    return named


def _inputs(x: Any, said: str) -> Any:
    """Checks every array of the features (one array, or a dict or tuple of them)."""
    if isinstance(x, Rows):
        return _features(x, said)
    named = _names(x, "x", said, "features")
    several = structure.kind(x) != structure.ARRAY
    checked = {
        name: _features(a, f"{said} (input {name!r})" if several else said)
        for name, a in named.items()
    }
    return structure.rebuild(structure.kind(x), checked)


def _features(x: Any, said: str) -> Any:
    """Checks features: (samples, ...) numbers; floats all finite; says where a NaN or Inf is.
    Integers (token ids, category ids) stay integers: int32 where they fit."""
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
    if isinstance(x, np.ndarray) and x.dtype == np.bool_:
        return x.astype("float32")
    if isinstance(x, np.ndarray) and np.issubdtype(x.dtype, np.integer):
        info = np.iinfo(np.int32)
        if x.dtype != np.int32 and x.min() >= info.min and x.max() <= info.max:
            x = x.astype("int32")  # the same integer dtype on both backends
        return x
    if not np.issubdtype(x.dtype, np.floating):
        raise RunError(
            f"{said} features of dtype {x.dtype}; expected numbers: finite floats, or integers "
            "such as token ids"
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


def _targets(y: Any, said: str) -> Any:
    """The targets as arrays of the same structure (None: no targets)."""
    if y is None:
        return None
    named = _names(y, "y", said, "targets")
    return structure.rebuild(structure.kind(y), {k: np.asarray(v) for k, v in named.items()})


def _tasks(y: Any, hint: str | Mapping[str, str] | None, said: str) -> dict[str, str]:
    """Each target's task: as `recipe.task` states it, else from the target's dtype."""
    named = structure.named(y, "y")
    if isinstance(hint, Mapping):
        unknown = sorted(set(hint) - set(named))
        if unknown:
            raise RunError(
                f"recipe.task names targets {unknown} that the data does not have; its targets: "
                f"{sorted(named) or 'none'}"
            )
    if not named and hint not in (None, "none") and not isinstance(hint, Mapping):
        raise RunError(
            f"recipe.task={hint} needs targets, but {said} none (y is None); return (x, y), or "
            "set recipe.task=none"
        )
    tasks = {}
    for name, target in named.items():
        stated = hint.get(name) if isinstance(hint, Mapping) else hint
        if stated is not None:
            tasks[name] = stated
            continue
        if target.dtype == np.bool_:
            tasks[name] = "multilabel"
        elif np.issubdtype(target.dtype, np.integer):
            tasks[name] = "classification"
        elif np.issubdtype(target.dtype, np.floating):
            tasks[name] = "regression"
        else:
            what = f"the target {name!r}" if len(named) > 1 else "the targets"
            raise RunError(
                f"{said} {what} of dtype {target.dtype}, shape {target.shape}: cannot infer the "
                "task; expected numbers (integer class indices, 0/1 flags or float values), or "
                "set recipe.task=classification|multilabel|regression"
            )
        log.info(
            "task of target %s: %s (inferred from its dtype %s; recipe.task sets it)",
            name,
            tasks[name],
            target.dtype,
        )
    return tasks


def _by_task(y: Any, tasks: dict[str, str], said: str) -> Any:
    """The targets checked and typed for their tasks: class indices as int32, multi-hot flags
    and regression values as float32; targets of task "none" are dropped."""
    named = structure.named(y, "y")
    several = len(named) > 1
    kept = {}
    for name, target in named.items():
        where = f"{said} (target {name!r})" if several else said
        task = tasks[name]
        if task == "classification":
            kept[name] = _labels(target, where)
        elif task == "multilabel":
            kept[name] = _flags(target, where)
        elif task == "regression":
            kept[name] = _values(target, where)
    if not kept:
        return None
    return structure.rebuild(structure.kind(y), kept) if len(kept) == len(named) else kept


def _stratify(y: Any, tasks: dict[str, str]) -> np.ndarray | None:
    """The labels to stratify the split by: one class label per sample, where that is the data's
    only target."""
    named = structure.named(y, "y")
    if len(named) != 1:
        return None
    ((name, target),) = named.items()
    return target if tasks[name] == "classification" and target.ndim == 1 else None


def _target_specs(
    train: Any,
    val: Any,
    tasks: dict[str, str],
    num_classes: int | None,
    classes: tuple[str, ...] | None,
    said: str,
) -> tuple[ArraySpec, ...]:
    val_named = structure.named(val, "y")
    train_named = structure.named(train, "y")
    one = len(train_named) == 1
    specs = []
    for name, target in train_named.items():
        task, count, names = tasks[name], None, None
        if task == "classification":
            count = num_classes if one and num_classes is not None else None
            if count is None:
                count = int(max(target.max(), val_named[name].max())) + 1
            _check_label_range(val_named[name], count, said + " (val)")
            names = classes if one else None
        elif task == "multilabel":
            count = int(target.shape[-1]) if target.ndim > 1 else 1
        specs.append(
            ArraySpec(name, tuple(target.shape[1:]), str(target.dtype), task, count, names)
        )
    return tuple(specs)


def _labels(y: np.ndarray, said: str) -> np.ndarray:
    """Class indices as int32 (one per sample, or one per position or pixel); float labels are
    accepted where they are whole numbers."""
    whole = np.issubdtype(y.dtype, np.integer) or (
        np.issubdtype(y.dtype, np.floating) and np.isfinite(y).all() and (y == np.round(y)).all()
    )
    if y.ndim < 1 or len(y) == 0 or not whole or y.min() < 0:
        low = y.min() if y.size and np.issubdtype(y.dtype, np.number) else None
        raise RunError(
            f"{said} labels of shape {y.shape}, dtype {y.dtype} with minimum {low}; "
            "expected class indices 0..num_classes-1 as integers, one per sample"
        )
    return y.astype("int32")


def _flags(y: np.ndarray, said: str) -> np.ndarray:
    """Multi-hot targets as float32 0/1 flags."""
    if not np.issubdtype(y.dtype, np.number) and y.dtype != np.bool_:
        raise RunError(f"{said} multilabel targets of dtype {y.dtype}; expected 0/1 flags")
    bad = np.argwhere((y != 0) & (y != 1))
    if y.ndim < 1 or len(y) == 0 or len(bad):
        first = tuple(int(i) for i in bad[0]) if len(bad) else None
        raise RunError(
            f"{said} multilabel targets of shape {y.shape} with values other than 0 and 1 (the "
            f"first at index {first}); expected multi-hot flags, one row per sample"
        )
    return y.astype("float32")


def _values(y: np.ndarray, said: str) -> np.ndarray:
    """Regression targets as finite float32."""
    if not np.issubdtype(y.dtype, np.number) or y.dtype == np.bool_:
        raise RunError(f"{said} regression targets of dtype {y.dtype}; expected numbers")
    finite = np.isfinite(y)
    if y.ndim < 1 or len(y) == 0 or not finite.all():
        first = tuple(int(i) for i in np.argwhere(~finite)[0]) if y.size else None
        raise RunError(
            f"{said} regression targets of shape {y.shape} with NaN or Inf values (the first at "
            f"index {first}); expected finite numbers, one row per sample"
        )
    return y.astype("float32")


def _lengths(value: Any, single: str) -> dict[str, int]:
    if isinstance(value, Rows):
        return {single: len(value)}
    return {name: len(a) for name, a in structure.named(value, single).items()}


def _check_lengths(x: Any, y: Any, said: str, split: str) -> None:
    # Zipping features with fewer labels would train on the shorter of the two, silently.
    xs, ys = _lengths(x, "x"), _lengths(y, "y")
    if len(set(xs.values()) | set(ys.values())) <= 1:
        return
    if len(xs) == 1 and len(ys) == 1:
        raise RunError(
            f"{said} {next(iter(xs.values()))} {split}samples of features and "
            f"{next(iter(ys.values()))} {split}labels; expected one label per sample, the same "
            "number of each"
        )
    shown = ", ".join(f"{k}: {v}" for k, v in {**xs, **ys}.items())
    raise RunError(
        f"{said} {split}arrays of different lengths ({shown}); expected one row per sample in "
        "every input and target"
    )


def _check_same_structure(x: Any, x_val: Any, y: Any, y_val: Any, said: str) -> None:
    """The val split must have the train split's inputs and targets, with the same shapes."""
    for what, train, val, single in (("samples", x, x_val, "x"), ("targets", y, y_val, "y")):
        a, b = structure.named(train, single), structure.named(val, single)
        if isinstance(train, Rows):
            a = {single: train}
        if isinstance(val, Rows):
            b = {single: val}
        if set(a) != set(b):
            raise RunError(
                f"{said} train {what} named {sorted(a)} and val {what} named {sorted(b)}; both "
                "splits need the same inputs and targets"
            )
        for name in a:
            if a[name].shape[1:] != b[name].shape[1:]:
                label = f"train {what}" if len(a) == 1 else f"train {what} {name!r}"
                raise RunError(
                    f"{said} {label} of shape {a[name].shape[1:]} and val {what} of shape "
                    f"{b[name].shape[1:]}; both splits need the same sample shape"
                )


def _check_label_range(y: np.ndarray, num_classes: int, said: str) -> None:
    outside = np.flatnonzero((y < 0) | (y >= num_classes))
    if len(outside):
        i = int(np.unravel_index(outside[0], y.shape)[0])  # the sample, for per-pixel labels too
        raise RunError(
            f"{said} {len(outside)} labels outside the class range 0..{num_classes - 1}, the "
            f"first at sample {i} (label {int(y.flat[outside[0]])}); expected class indices "
            "0..num_classes-1 (data.num_classes, or the number of class names)"
        )
