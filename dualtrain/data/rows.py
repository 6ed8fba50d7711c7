"""Features that stay on disk and are read a batch of rows at a time.

`Rows` looks enough like a NumPy array (`shape`, `dtype`, `len`, indexing by an index array or a
slice) for the engines to gather batches from it as they do from arrays in memory. Subclasses read
rows from a `.npy` file (`NpyRows`) or decode image files (`dualtrain.data.images.ImageFiles`).
"""

from __future__ import annotations

import copy
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dualtrain.errors import RunError

# Rows read at a time by the passes over a whole split (checks, statistics).
_CHUNK_BYTES = 32 * 2**20


@dataclass(frozen=True)
class RowsSummary:
    """What one pass over a split finds: per-feature mean and variance, the first NaN or Inf."""

    mean: np.ndarray
    variance: np.ndarray
    first_nonfinite: tuple[int, ...] | None  # (sample, *feature index)


class Rows(ABC):
    """A split's features, read on demand. `rows` maps this split's sample i to a source row."""

    def __init__(self, num_rows: int, row_shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.rows = np.arange(num_rows)
        self.row_shape = row_shape
        self.dtype = np.dtype(dtype)
        self._summary: RowsSummary | None = None

    # Decoded images are finite by construction; files of floats are checked.
    finite_by_construction = False

    @abstractmethod
    def _read(self, rows: np.ndarray) -> np.ndarray:
        """The source rows `rows`, in that order, as an array of shape (len(rows), *row_shape)."""

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.rows), *self.row_shape)

    @property
    def ndim(self) -> int:
        return 1 + len(self.row_shape)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: Any) -> np.ndarray:
        indices = np.arange(len(self))[key] if isinstance(key, slice) else np.asarray(key)
        return self._read(self.rows[indices])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        # The whole split at once: for small val splits (export's checks), never for training.
        whole = self[:]
        return whole if dtype is None else whole.astype(dtype)

    def subset(self, indices: np.ndarray) -> Rows:
        """The rows at `indices` of this split, still on disk."""
        part = copy.copy(self)
        part.rows = self.rows[np.asarray(indices)]
        part._summary = None
        return part

    def chunks(self) -> Iterator[tuple[int, np.ndarray]]:
        """The split in order, a few MB at a time: (index of the first sample, its rows)."""
        row_bytes = max(1, int(np.prod(self.row_shape)) * self.dtype.itemsize)
        step = max(1, _CHUNK_BYTES // row_bytes)
        for start in range(0, len(self), step):
            yield start, self[start : start + step]

    def summary(self) -> RowsSummary:
        """One pass over the split, chunk by chunk (cached): the data checks and the statistics
        a model fits (`moments`) cost one read of the file, not two."""
        if self._summary is not None:
            return self._summary
        total = np.zeros(self.row_shape, np.float64)
        total_sq = np.zeros(self.row_shape, np.float64)
        first_bad = None
        for start, chunk in self.chunks():
            finite = self.finite_by_construction or np.isfinite(chunk).all()
            if first_bad is None and not finite:
                sample, *feature = (int(i) for i in np.argwhere(~np.isfinite(chunk))[0])
                first_bad = (start + sample, *feature)
            total += chunk.sum(axis=0, dtype=np.float64)
            total_sq += (chunk * chunk).sum(axis=0, dtype=np.float64)
        with np.errstate(invalid="ignore"):  # NaN in the data: reported, not warned about
            mean = total / len(self)
            variance = np.maximum(total_sq / len(self) - mean**2, 0.0)
        self._summary = RowsSummary(mean.reshape(-1), variance.reshape(-1), first_bad)
        return self._summary


class NpyRows(Rows):
    """Rows of a `.npy` file, read with `os.preadv` into the batch's own buffer.

    Not `np.load(mmap_mode="r")`: pages of a memory map that a pass over the data touches count as
    the process's resident memory until the kernel reclaims them, so a run over a file larger than
    RAM would show (and, under a memory limit, be charged) the whole file. Reads into a fresh
    buffer keep only the batches in flight resident; the kernel's page cache is not the process's.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if os.path.getsize(self.path) == 0:
            raise RunError(f"{self.path} is empty (0 bytes); expected an array written by np.save")
        with open(self.path, "rb") as f:
            try:
                version = np.lib.format.read_magic(f)
                read_header = (
                    np.lib.format.read_array_header_1_0
                    if version == (1, 0)
                    else np.lib.format.read_array_header_2_0
                )
                shape, fortran, dtype = read_header(f)
            except ValueError as err:
                raise RunError(f"{self.path} is not a .npy file: {err}") from err
            self.offset = f.tell()
        if fortran or dtype.hasobject or len(shape) < 1:
            raise RunError(
                f"{self.path} holds a {'Fortran-ordered' if fortran else dtype} array of shape "
                f"{shape}; expected a C-ordered numeric array of shape (samples, ...), as "
                "np.save writes by default"
            )
        super().__init__(shape[0], tuple(shape[1:]), dtype)
        self.row_bytes = int(np.prod(self.row_shape)) * self.dtype.itemsize
        expected = self.offset + shape[0] * self.row_bytes
        if os.path.getsize(self.path) < expected:
            raise RunError(
                f"{self.path} is truncated: {os.path.getsize(self.path)} bytes, its header "
                f"promises {expected}"
            )
        self._fd: int | None = None
        self._fd_pid = -1

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fd": None, "_fd_pid": -1}  # each process opens its own

    def _file(self) -> int:
        # DataLoader workers are forked: each process opens the file once for itself.
        if self._fd is None or self._fd_pid != os.getpid():
            self._fd = os.open(self.path, os.O_RDONLY)
            self._fd_pid = os.getpid()
        return self._fd

    def _read(self, rows: np.ndarray) -> np.ndarray:
        order = np.argsort(rows, kind="stable")
        wanted = rows[order]
        buffer = np.empty((len(rows), *self.row_shape), self.dtype)
        flat = memoryview(buffer.reshape(len(rows), -1).view(np.uint8)) if len(rows) else None  # type: ignore[arg-type]
        fd = self._file()
        # Consecutive rows are one read: a pass in order reads whole chunks.
        breaks = np.flatnonzero(np.diff(wanted) != 1) + 1
        for run in np.split(np.arange(len(wanted)), breaks):
            if not len(run):
                continue
            assert flat is not None
            target = flat[run[0] : run[-1] + 1].cast("B")
            position = self.offset + int(wanted[run[0]]) * self.row_bytes
            done = 0
            while done < len(target):  # preadv may return less than asked
                got = os.preadv(fd, [target[done:]], position + done)
                if got <= 0:
                    raise RunError(f"{self.path}: could not read row {int(wanted[run[0]])}")
                done += got
        result = np.empty_like(buffer)
        result[order] = buffer
        return result


def moments(x: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and variance over a split's samples, in memory or read chunk by chunk.

    A model builder's statistics (a standardization's mean and variance) from `data.x_train`.

    Args:
        x: an array (samples first) or Rows on disk (read chunk by chunk).

    Returns:
        The mean and the variance of each feature, each flattened to one dimension (float64
        for Rows, the array's dtype for an array).
    """
    if isinstance(x, np.ndarray):
        flat = x.reshape(len(x), -1)
        return flat.mean(axis=0), flat.var(axis=0)
    summary = x.summary()
    return summary.mean, summary.variance
