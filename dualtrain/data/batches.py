"""Splits whose batches the data source makes itself: a `keras.utils.PyDataset`, or a function
that returns the batches of an epoch.

For data made on the fly, or read from a store of the user's own, a source returns
`(train, val)`, each one of:

- a `keras.utils.PyDataset` (Keras's backend-neutral batch source): batch `i` is `dataset[i]`,
  read by `dataset.workers` threads (processes with `use_multiprocessing`), at most
  `max_queue_size` ahead, in order; `on_epoch_begin` and `on_epoch_end` are called around each
  train epoch, as Keras's `fit` calls them. A run resumed at epoch `e` calls `on_epoch_end` `e`
  times first, so a dataset that reshuffles there from its own seed serves the same batches;
- a function `batches(epoch)` (or `batches()`) returning an iterable of `(x, y)` batches: called
  anew for every epoch (the val split's with epoch 0), so the same epoch gives the same batches.

Batches are (x, y) of arrays, or of dicts or tuples of arrays, as arrays from a source are
(data/structure.py); each is checked and typed as the data layer checks arrays (dataset.py). The
engines read the batches in the order they come, on both backends; a resumed run skips the
batches of the epoch it already trained on.
"""

from __future__ import annotations

import concurrent.futures
import inspect
import itertools
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from dualtrain.data import structure
from dualtrain.errors import RunError

Checker = Callable[[Any, Any, str], tuple[Any, Any]]  # (x, y, said) -> checked (x, y)


def is_batch_source(value: Any) -> bool:
    """A `keras.utils.PyDataset` (only if the source imported Keras), or a function."""
    keras = sys.modules.get("keras")
    if keras is not None and isinstance(value, keras.utils.PyDataset):
        return True
    return callable(value) and not hasattr(value, "shape") and not isinstance(value, type)


class BatchSplit:
    """One split of batches from a batch source, checked batch by batch as they are read."""

    in_memory = False

    def __init__(self, source: Any, said: str, train: bool) -> None:
        self.source = source
        self.said = said
        self.train = train
        self.check: Checker = lambda x, y, said: (x, y)  # set by the data layer
        self._epochs_ended = 0
        self._num_batches = self._count()

    @property
    def is_dataset(self) -> bool:
        return not callable(self.source) or hasattr(self.source, "on_epoch_end")

    def num_batches(self, batch_size: int) -> int:
        """Batches per epoch (the source's own batch size; `data.batch_size` does not apply)."""
        return self._num_batches

    num_samples = None  # not known before the batches are read

    def sample(self, count: int = 2) -> tuple[Any, Any]:
        """The first `count` samples of the first batch, checked (y: () without targets)."""
        x, y = next(self.epoch_batches_unchanged())
        take = lambda a: a[:count]  # noqa: E731
        return structure.map_leaves(take, x), () if y is None else structure.map_leaves(take, y)

    def epoch_batches_unchanged(self) -> Iterator[tuple[Any, Any]]:
        """Epoch 0's batches, checked, without the dataset's epoch callbacks."""
        for i, batch in enumerate(self._raw(0)):
            x, y = self._pair(batch, i)
            yield self.check(x, y, f"{self.said} (batch {i})")

    def head(self, count: int) -> Any:
        """The first `count` samples of epoch 0 as an `ArrayDataset` in memory (all, if fewer),
        e.g. for checking an export."""
        from dualtrain.data.dataset import ArrayDataset

        xs, ys, have = [], [], 0
        for x, y in self.epoch_batches_unchanged():
            xs.append(x)
            ys.append(y)
            have += len(structure.first(x))
            if have >= count:
                break

        def joined(parts: list[Any]) -> Any:
            if parts[0] is None:
                return None
            names = [structure.named(p, "x") for p in parts]
            leaves = {k: np.concatenate([n[k] for n in names])[:count] for k in names[0]}
            return structure.rebuild(structure.kind(parts[0]), leaves)

        return ArrayDataset(joined(xs), joined(ys))

    def first_batch(self) -> tuple[Any, Any]:
        """The first batch of epoch 0, unchecked (the data layer describes the data by it)."""
        batch = next(iter(self._raw(0)), None)
        if batch is None:
            raise RunError(f"{self.said} no batches; expected at least one (x, y) batch")
        return self._pair(batch, 0)

    def epoch(self, epoch: int) -> Iterator[tuple[Any, Any]]:
        """The checked batches of `epoch` (the val split: the same every time)."""
        if self.is_dataset and self.train:
            while self._epochs_ended < epoch:  # a resumed run: the dataset's own reshuffles
                self.source.on_epoch_end()
                self._epochs_ended += 1
            self.source.on_epoch_begin()
        for i, batch in enumerate(self._raw(epoch if self.train else 0)):
            x, y = self._pair(batch, i)
            yield self.check(x, y, f"{self.said} (batch {i})")
        if self.is_dataset and self.train and self._epochs_ended == epoch:
            self.source.on_epoch_end()
            self._epochs_ended += 1

    def _count(self) -> int:
        if self.is_dataset:
            count = self.source.num_batches
            if count is None:
                raise RunError(
                    f"{self.said} a PyDataset of unknown length; give it a __len__ (batches "
                    "per epoch)"
                )
            if count < 1:
                raise RunError(f"{self.said} a PyDataset of {count} batches; expected at least 1")
            return int(count)
        batches = self._call(0)
        try:
            return len(batches)  # type: ignore[arg-type]
        except TypeError:
            return sum(1 for _ in batches)  # one pass, where the iterable has no length

    def _raw(self, epoch: int) -> Iterable[Any]:
        if not self.is_dataset:
            return self._call(epoch)
        return _read_in_order(self.source, self._num_batches)

    def _call(self, epoch: int) -> Iterable[Any]:
        takes_epoch = bool(inspect.signature(self.source).parameters)
        batches = self.source(epoch) if takes_epoch else self.source()
        if not isinstance(batches, Iterable):
            raise RunError(
                f"{self.said} a function that returned a {type(batches).__name__}; expected an "
                "iterable of (x, y) batches"
            )
        return batches

    def _pair(self, batch: Any, i: int) -> tuple[Any, Any]:
        if not isinstance(batch, (tuple, list)) or len(batch) not in (1, 2):
            raise RunError(
                f"{self.said} batch {i} as a {type(batch).__name__}; expected a tuple (x, y) "
                "(or (x,) without targets)"
            )
        return batch[0], batch[1] if len(batch) == 2 else None


def _read_in_order(dataset: Any, count: int) -> Iterator[Any]:
    """`dataset[0]`, `dataset[1]`, ... read by its workers, at most `max_queue_size` ahead."""
    workers = max(1, int(getattr(dataset, "workers", 1) or 1))
    if workers == 1:
        yield from (dataset[i] for i in range(count))
        return
    ahead = max(workers, int(getattr(dataset, "max_queue_size", 10) or 10))
    pool_class = (
        concurrent.futures.ProcessPoolExecutor
        if getattr(dataset, "use_multiprocessing", False)
        else concurrent.futures.ThreadPoolExecutor
    )
    with pool_class(max_workers=workers) as pool:
        indices = iter(range(count))
        pending = [pool.submit(dataset.__getitem__, i) for i in itertools.islice(indices, ahead)]
        while pending:
            batch = pending.pop(0).result()
            pending.extend(
                pool.submit(dataset.__getitem__, i) for i in itertools.islice(indices, 1)
            )
            yield batch
