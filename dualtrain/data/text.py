"""Text from the Python standard library's own source files, as windows of character ids.

Nothing is downloaded: the files are read from the installation of the interpreter that runs
(`Path(os.__file__).parent`). `MODULES` is a fixed list of well-known modules that every CPython
3.10-3.13 installation has as plain `.py` files; their text differs a little between versions,
so figures measured on one version move slightly on another. No framework is imported here.
"""

from __future__ import annotations

import os
import string
from pathlib import Path
from typing import Any

import numpy as np

from dualtrain.errors import RunError
from dualtrain.settings import Check, integer

# Paths under the standard library's folder, sorted. Each is a plain module in 3.10 to 3.13 (not
# one that became a package, as re, pathlib and zipfile did, nor one removed since).
MODULES = (
    "abc.py",
    "argparse.py",
    "base64.py",
    "bisect.py",
    "calendar.py",
    "collections/__init__.py",
    "contextlib.py",
    "copy.py",
    "csv.py",
    "dataclasses.py",
    "difflib.py",
    "fnmatch.py",
    "fractions.py",
    "functools.py",
    "getopt.py",
    "glob.py",
    "gzip.py",
    "heapq.py",
    "hmac.py",
    "json/__init__.py",
    "json/decoder.py",
    "json/encoder.py",
    "keyword.py",
    "linecache.py",
    "operator.py",
    "os.py",
    "pprint.py",
    "queue.py",
    "random.py",
    "shlex.py",
    "shutil.py",
    "string.py",
    "tempfile.py",
    "textwrap.py",
    "threading.py",
    "timeit.py",
    "tokenize.py",
    "traceback.py",
    "types.py",
    "uuid.py",
    "warnings.py",
    "weakref.py",
)

# The vocabulary: 0 for any other character (a tab, a non-ASCII letter), 1 for a newline, then
# the 95 printable ASCII characters from the space to the tilde.
UNKNOWN = "\ufffd"
VOCAB = (UNKNOWN, "\n", *(chr(c) for c in range(32, 127)))
_IDS = {ch: i for i, ch in enumerate(VOCAB)}
assert len(VOCAB) == 97 and set(string.printable) - {"\t", "\r", "\x0b", "\x0c"} <= set(VOCAB)


def encode(text: str) -> np.ndarray:
    """Character ids (int32) of `text`; characters outside the vocabulary are 0."""
    return np.fromiter((_IDS.get(ch, 0) for ch in text), dtype="int32", count=len(text))


def decode(ids: Any) -> str:
    """The text of character ids (unknown ones as U+FFFD)."""
    return "".join(VOCAB[int(i)] if 0 <= int(i) < len(VOCAB) else UNKNOWN for i in ids)


def stdlib_root() -> Path:
    """The folder of the running interpreter's standard library."""
    return Path(os.__file__).parent


def split_files(seed: int, val_files: int) -> tuple[list[str], list[str]]:
    """`MODULES` split by file, seeded: (train files, val files), each sorted."""
    order = np.random.default_rng(seed).permutation(len(MODULES))
    val = sorted(MODULES[i] for i in order[:val_files])
    train = sorted(MODULES[i] for i in order[val_files:])
    return train, val


def read_ids(files: list[str]) -> np.ndarray:
    """The ids of the files' text, one after the other, each followed by a blank line."""
    root = stdlib_root()
    missing = [name for name in files if not (root / name).is_file()]
    if missing:
        raise RunError(
            f"data source stdlib_text: {root} has no {', '.join(missing)}; it reads the standard "
            "library's source files of the Python that runs, which this installation lacks"
        )
    texts = [(root / name).read_text(encoding="utf-8", errors="replace") for name in files]
    return encode("\n\n".join(texts) + "\n\n")


def windows(ids: np.ndarray, length: int, count: int, rng: np.random.Generator | None) -> Any:
    """Up to `count` windows of `length + 1` ids: x = the first `length`, y = the last `length`
    (x shifted by one). The windows do not overlap; with `rng`, a seeded choice of them,
    otherwise evenly spaced ones."""
    total = (len(ids) - 1) // length
    if total < 1:
        raise RunError(f"data source stdlib_text: too little text for windows of {length}")
    starts = np.arange(total) * length
    if count < total:
        if rng is not None:
            starts = np.sort(rng.choice(starts, size=count, replace=False))
        else:
            starts = starts[np.linspace(0, total - 1, count).round().astype(int)]
    rows = starts[:, None] + np.arange(length + 1)[None, :]
    chunks = ids[rows]
    return chunks[:, :-1].copy(), chunks[:, 1:].copy()


def stdlib_text(
    seed: int,
    seq_len: int = 64,
    train_windows: int = 6400,
    val_windows: int = 400,
    val_files: int = 8,
) -> Any:
    """Windows of `seq_len` characters of the standard library's source, split by file.

    `val_files` of `MODULES`, drawn with the seed, are the val split, the rest the train split;
    `train_windows` windows are drawn (seeded) from the train files, `val_windows` evenly spaced
    ones taken from the val files. x holds the character ids (int32, `VOCAB`), y the ids of the
    next character at each position: the targets are classes of the whole vocabulary.
    """
    from dualtrain.data.dataset import SourceData

    if not 1 <= val_files < len(MODULES):
        raise RunError(
            f"data.val_files must be between 1 and {len(MODULES) - 1} (of {len(MODULES)} files); "
            f"got {val_files}"
        )
    train_files, val_files_ = split_files(seed, val_files)
    rng = np.random.default_rng([seed, 1])
    x, y = windows(read_ids(train_files), seq_len, train_windows, rng)
    x_val, y_val = windows(read_ids(val_files_), seq_len, val_windows, None)
    return SourceData(
        x=x,
        y=y,
        x_val=x_val,
        y_val=y_val,
        said="data source stdlib_text gave",
        classes=VOCAB,
    )


CONFIG_KEYS: dict[str, dict[str, Check]] = {
    "stdlib_text": {
        "seq_len": integer(2),
        "train_windows": integer(1),
        "val_windows": integer(1),
        "val_files": integer(1),
    }
}
