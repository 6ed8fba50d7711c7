"""`data=csv`: a CSV file with a header row; one column the class label, or several the targets.

Numeric columns are standardized, text columns encoded (one-hot, or the category's index), with
statistics and categories fitted on the train split only. The fitted transform is JSON; it is
kept with every checkpoint, and eval and export apply it instead of fitting a new one.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np

from dualtrain.data.dataset import SourceData, random_indices, stratified_indices
from dualtrain.errors import ConfigError, RunError

ENCODINGS = ("onehot", "index")


def load_csv(
    path: str,
    target: str | list[str],
    seed: int,
    val_fraction: float,
    val_path: str | None = None,
    categorical: str = "onehot",
    transform: dict[str, Any] | None = None,
) -> SourceData:
    """Features and targets of a CSV file; the val split is `val_path` or a seeded
    `val_fraction` of `path` (stratified by the class label, where there is one target).

    One target column gives class labels (class names, or whole numbers as class indices).
    Several (`data.target=[species,weight]`) give a dict by column name: text columns as class
    indices, numeric columns as float values (a classification or a regression target each; see
    `recipe.task`).
    """
    if categorical not in ENCODINGS:
        raise ConfigError(f"data.categorical must be one of onehot, index; got {categorical!r}")
    targets = [target] if isinstance(target, str) else [str(t) for t in target]
    header, rows, lines = _read(Path(path), targets, "data.path")
    if val_path is not None:
        val_header, val_rows, val_lines = _read(Path(val_path), targets, "data.val_path")
        if val_header != header:
            raise RunError(
                f"data.val_path={val_path} has the columns {val_header}; expected those of "
                f"data.path={path}: {header}"
            )
        train_rows, train_lines = rows, lines
    else:
        if len(targets) == 1:
            labels = [row[header.index(targets[0])] for row in rows]
            train_idx, val_idx = stratified_indices(
                np.asarray(labels), val_fraction, seed, f"data.path={path} has"
            )
        else:
            train_idx, val_idx = random_indices(len(rows), val_fraction, seed)
        train_rows, train_lines = [rows[i] for i in train_idx], [lines[i] for i in train_idx]
        val_rows, val_lines = [rows[i] for i in val_idx], [lines[i] for i in val_idx]
    if transform is None:
        _check_mixed_columns(header, rows, lines, targets, f"data.path={path}")
        transform = fit_transform(header, train_rows, target, categorical)
    fitted_targets = _targets(transform)
    fitted = [c["name"] for c in transform["columns"]] + fitted_targets
    if set(header) != set(fitted) or fitted_targets != targets:
        raise RunError(
            f"data.path={path} has the columns {header} with data.target={target}; the "
            f"checkpoint's transform was fitted on {fitted} with target {transform['target']}"
        )
    x, y = apply_transform(transform, header, train_rows, train_lines, f"data.path={path}")
    where = f"data.val_path={val_path}" if val_path else f"data.path={path}"
    x_val, y_val = apply_transform(transform, header, val_rows, val_lines, where)
    classes = transform["classes"] if isinstance(transform["target"], str) else None
    return SourceData(
        x=x,
        y=y,
        x_val=x_val,
        y_val=y_val,
        said=f"data.path={path} has",
        transform=transform,
        classes=tuple(classes) if classes is not None else None,
    )


def _targets(transform: dict[str, Any]) -> list[str]:
    target = transform["target"]
    return [target] if isinstance(target, str) else list(target)


def fit_transform(
    header: list[str], rows: list[list[str]], target: str | list[str], categorical: str
) -> dict[str, Any]:
    """Each feature column's encoding, fitted on `rows` (the train split), as JSON; and the
    target's class names (None: class indices), or with several targets each one's (None: a
    numeric column, read as values)."""
    targets = [target] if isinstance(target, str) else list(target)
    columns = []
    for j, name in enumerate(header):
        if name in targets:
            continue
        values = [row[j] for row in rows]
        numbers = _numbers(values)
        if numbers is not None:
            finite = numbers[np.isfinite(numbers)]
            mean = float(finite.mean()) if len(finite) else 0.0
            std = float(finite.std()) if len(finite) else 1.0
            columns.append({"name": name, "kind": "numeric", "mean": mean, "std": std or 1.0})
        else:
            columns.append(
                {
                    "name": name,
                    "kind": "categorical",
                    "encoding": categorical,
                    "categories": sorted(set(values)),
                }
            )
    if isinstance(target, str):
        labels = [row[header.index(target)] for row in rows]
        whole = _numbers(labels)
        is_index = (
            whole is not None and np.isfinite(whole).all() and (whole == np.round(whole)).all()
        )
        classes = None if is_index else sorted(set(labels))
        return {"kind": "csv", "target": target, "classes": classes, "columns": columns}
    per_target = {}
    for name in targets:
        values = [row[header.index(name)] for row in rows]
        per_target[name] = None if _numbers(values) is not None else sorted(set(values))
    return {"kind": "csv", "target": targets, "classes": per_target, "columns": columns}


def apply_transform(
    transform: dict[str, Any],
    header: list[str],
    rows: list[list[str]],
    lines: list[int],
    where: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Features (float32, standardized and encoded) and int labels of `rows`, which are on
    `lines` of the file (for error messages)."""
    parts = []
    for column in transform["columns"]:
        j = header.index(column["name"])
        values = [row[j] for row in rows]
        if column["kind"] == "numeric":
            numbers = _numeric(values, lines, where, f"column {column['name']!r}")
            bad_rows = np.flatnonzero(~np.isfinite(numbers))
            if len(bad_rows):
                raise RunError(
                    f"{where}: column {column['name']!r} has NaN, Inf or an empty value in "
                    f"{len(bad_rows)} rows, the first on line {lines[bad_rows[0]]} "
                    f"({values[bad_rows[0]]!r}); expected finite numbers: fill or drop them"
                )
            parts.append(((numbers - column["mean"]) / column["std"])[:, None])
        else:
            index = {c: i for i, c in enumerate(column["categories"])}
            codes = np.array([index.get(v, -1) for v in values])  # -1: not seen in training
            if column["encoding"] == "index":
                parts.append(codes[:, None].astype("float64"))
            else:
                onehot = np.zeros((len(values), len(index)))
                seen = codes >= 0
                onehot[np.flatnonzero(seen), codes[seen]] = 1.0
                parts.append(onehot)
    x = np.concatenate(parts, axis=1) if parts else np.zeros((len(rows), 0))
    if isinstance(transform["target"], str):
        y: Any = _labels(transform["target"], transform["classes"], header, rows, where)
    else:
        y = {
            name: _column_target(name, transform["classes"][name], header, rows, lines, where)
            for name in transform["target"]
        }
    return x.astype("float32"), y


def _labels(
    target: str, classes: list[str] | None, header: list[str], rows: list[list[str]], where: str
) -> np.ndarray:
    """One target column as class indices: whole numbers, or class names looked up."""
    labels = [row[header.index(target)] for row in rows]
    if classes is None:
        numbers = _numbers(labels)
        if numbers is None or not np.isfinite(numbers).all() or (numbers % 1).any():
            raise RunError(
                f"{where}: column {target!r} holds labels that are not whole "
                "numbers; expected class indices 0..num_classes-1 (as in training)"
            )
        return numbers.astype("int64")
    lookup = {c: i for i, c in enumerate(classes)}
    unknown = [label for label in labels if label not in lookup]
    if unknown:
        raise RunError(
            f"{where}: column {target!r} holds {len(unknown)} labels outside "
            f"the class range, the first {unknown[0]!r}; the classes are {classes}"
        )
    return np.array([lookup[label] for label in labels], "int64")


def _column_target(
    name: str,
    classes: list[str] | None,
    header: list[str],
    rows: list[list[str]],
    lines: list[int],
    where: str,
) -> np.ndarray:
    """One of several target columns: class names as indices, or numbers as float values."""
    if classes is not None:
        return _labels(name, classes, header, rows, where)
    values = [row[header.index(name)] for row in rows]
    return _numeric(values, lines, where, f"target column {name!r}").astype("float32")


def _numeric(values: list[str], lines: list[int], where: str, what: str) -> np.ndarray:
    """A numeric column's values as floats; one line naming the first row that holds text."""
    numbers = _numbers(values)
    if numbers is None:
        bad = next(i for i, v in enumerate(values) if _number(v) is None)
        raise RunError(
            f"{where}: {what} is numeric but line {lines[bad]} holds {values[bad]!r}; expected "
            "a number in every row"
        )
    return numbers


def _read(
    path: Path, targets: list[str], label: str
) -> tuple[list[str], list[list[str]], list[int]]:
    """The header, the rows below it, and each row's line number in the file."""
    rows, lines = [], []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            # Blank lines before the header are skipped, as csv.reader skips them below it.
            header = [name.strip() for name in next((row for row in reader if row), [])]
            for row in reader:
                if row:
                    rows.append(row)
                    lines.append(reader.line_num)
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise RunError(f"{label}={path} is not a readable CSV file: {err}") from err
    if not header:
        raise RunError(
            f"{label}={path} is empty ({path.stat().st_size} bytes); expected a CSV file with a "
            f"header row naming the columns, {', '.join(targets)} among them, and one row per "
            "sample below it"
        )
    for target in targets:
        if target not in header:
            raise ConfigError(
                f"data.target={target} is not a column of {label}={path}; its columns: "
                f"{', '.join(header)}"
            )
    short = next((i for i, row in enumerate(rows) if len(row) != len(header)), None)
    if short is not None:
        raise RunError(
            f"{label}={path}: line {lines[short]} has {len(rows[short])} values for "
            f"{len(header)} columns; expected one value per column in every row"
        )
    if not rows:
        raise RunError(
            f"{label}={path} has a header row and no rows below it; expected one row per sample"
        )
    return header, rows, lines


# A column whose values are nearly all numbers is a numeric column with a few bad entries ("NA",
# "?", a typo), not a text column: encoding it as categories would make each number a category.
_NUMERIC_SHARE = 0.9


def _check_mixed_columns(
    header: list[str], rows: list[list[str]], lines: list[int], targets: list[str], where: str
) -> None:
    for j, name in enumerate(header):
        if name in targets:
            continue
        parsed = [_number(row[j]) for row in rows]
        text = [i for i, n in enumerate(parsed) if n is None]
        if text and len(rows) - len(text) >= _NUMERIC_SHARE * len(rows):
            first = text[0]
            raise RunError(
                f"{where}: column {name!r} holds numbers but {len(text)} rows hold text, the "
                f"first on line {lines[first]} ({rows[first][j]!r}); expected a number in every "
                "row: fix, fill or drop those rows"
            )


def _number(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return math.nan if value.strip() == "" else None


def _numbers(values: list[str]) -> np.ndarray | None:
    """The values as floats (empty -> NaN), or None if one of them is text."""
    numbers = [_number(v) for v in values]
    if any(n is None for n in numbers):
        return None
    return np.array(numbers, "float64")


# -- data=csv's own config keys: checked when the config is read (settings.py), before any framework
# starts. (Imported here, below the code, to keep this block apart from the rest of the module.)
from dualtrain.data.sources import DATA_PATH, NUM_CLASSES, VAL_PATH  # noqa: E402
from dualtrain.settings import Check  # noqa: E402

CONFIG_KEYS: dict[str, dict[str, Check]] = {
    "load_csv": {"path": DATA_PATH, "val_path": VAL_PATH, "num_classes": NUM_CLASSES}
}
