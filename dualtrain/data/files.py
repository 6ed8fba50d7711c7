"""Arrays from files: `data=npz` (a `.npz` archive, or a folder of `.npy` files that streams)."""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from dualtrain.data.dataset import SourceData
from dualtrain.data.rows import NpyRows
from dualtrain.data.sources import DATA_PATH, NUM_CLASSES, VAL_PATH
from dualtrain.errors import ConfigError, RunError
from dualtrain.settings import Check


def npz(
    path: str,
    x_key: str | list[str] = "x",
    y_key: str | list[str] = "y",
    x_val_key: str | list[str] | None = "x_val",
    y_val_key: str | list[str] | None = "y_val",
    val_path: str | None = None,
) -> SourceData:
    """Features and labels from `path`: a `.npz` archive (read into memory), or a folder of
    `<key>.npy` files (features streamed from disk, for data larger than memory).

    The val split is `x_val_key`/`y_val_key` where present, else the same keys of `val_path`,
    else a seeded `data.val_fraction`. A list of keys (`data.x_key=[numbers,category]`) gives
    several named arrays (a dict by key, the model's input or output names); their val arrays
    are `<key>_val` unless the val keys are lists too.
    """
    named = not isinstance(x_key, str) or not isinstance(y_key, str)
    keys = _roles("x", x_key) | _roles("y", y_key)
    val_keys = _roles("x", _val_keys(x_key, x_val_key)) | _roles("y", _val_keys(y_key, y_val_key))
    if named and Path(path).is_dir():
        raise ConfigError(
            f"data.path={path} is a folder of .npy files; several named arrays (a list of keys) "
            "are read from a .npz archive"
        )
    arrays = _read(Path(path), keys, required=True)
    val = _read(Path(path), val_keys, required=False)
    if val_path is not None:
        if val:
            raise ConfigError(
                f"data.path={path} has its own val arrays ({', '.join(val_keys.values())}) and "
                f"data.val_path={val_path} gives others; keep one of them"
            )
        val = _read(Path(val_path), keys, required=True, label="data.val_path")
    said = f"data.path={path} has"
    x, y = _gather(arrays, x_key, "x"), _gather(arrays, y_key, "y")
    if not val:
        return SourceData(x=x, y=y, said=said)
    return SourceData(
        x=x, y=y, x_val=_gather(val, x_key, "x"), y_val=_gather(val, y_key, "y"), said=said
    )


def _roles(role: str, key: str | list[str]) -> dict[str, str]:
    """What `_read` reads: role -> key in the file ("x", or "x:numbers" for named arrays)."""
    if isinstance(key, str):
        return {role: key}
    return {f"{role}:{k}": str(k) for k in key}


def _val_keys(key: str | list[str], val_key: str | list[str] | None) -> str | list[str]:
    if isinstance(key, str):
        return val_key if isinstance(val_key, str) else f"{key}_val"
    return list(val_key) if isinstance(val_key, list) else [f"{k}_val" for k in key]


def _gather(arrays: dict[str, Any], key: str | list[str], role: str) -> Any:
    """The arrays of one role: one array, or a dict by key for a list of keys."""
    if isinstance(key, str):
        return arrays[role]
    return {str(k): arrays[f"{role}:{k}"] for k in key}


# Checked when the config is read (settings.py), before any framework starts.
CONFIG_KEYS: dict[str, dict[str, Check]] = {
    "npz": {"path": DATA_PATH, "val_path": VAL_PATH, "num_classes": NUM_CLASSES}
}


def _read(
    path: Path, keys: dict[str, str], required: bool, label: str = "data.path"
) -> dict[str, Any]:
    """The arrays named by `keys`, or {} where none is there and none is required; `label` is
    the config key that gave `path`."""
    if path.is_dir():
        files = {role: path / f"{key}.npy" for role, key in keys.items()}
        present = {role: file for role, file in files.items() if file.is_file()}
        if not present and not required:
            return {}
        missing = [str(files[role]) for role in keys if role not in present]
        if missing:
            raise ConfigError(
                f"{', '.join(missing)} does not exist; a data folder holds "
                f"{' and '.join(f'{k}.npy' for k in keys.values())} (names set by data.x_key, "
                "data.y_key, data.x_val_key, data.y_val_key)"
            )
        # Labels are small: in memory. Features stay on disk.
        return {"x": NpyRows(present["x"]), "y": _load_npy(present["y"])}
    _check_npz_file(path, label)
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise RunError(_damaged(path, label, err)) from err
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise RunError(
            f"{label}={path} holds one array; expected a .npz archive with arrays "
            f"{', '.join(keys.values())} (np.savez), or a folder of .npy files"
        )
    with archive:
        found = {role: key for role, key in keys.items() if key in archive.files}
        if not found and not required:
            return {}
        missing = [key for role, key in keys.items() if role not in found]
        if missing:
            raise ConfigError(
                f"{label}={path} has no array {' or '.join(missing)}; it has "
                f"{', '.join(archive.files) or 'none'}: name them with data.x_key=..., "
                "data.y_key=..."
            )
        arrays = {role: _member(archive, key, path, label) for role, key in keys.items()}
    if "x" in arrays and np.issubdtype(arrays["x"].dtype, np.integer):
        arrays["x"] = arrays["x"].astype("float32")  # e.g. uint8 images: as they are, unscaled
    # Named arrays keep their dtype: integer inputs are token or category ids.
    return arrays


# How a .npz (a zip archive) starts: a file entry, or the end record of an archive with none.
_ZIP_STARTS = (b"PK\x03\x04", b"PK\x05\x06")


def _check_npz_file(path: Path, label: str) -> None:
    """Refuses what np.load would misreport: an empty file (EOFError) and a file that is neither
    a zip archive nor a .npy array (it would be taken for a pickle)."""
    try:
        with open(path, "rb") as f:
            start = f.read(len(np.lib.format.MAGIC_PREFIX))
    except OSError as err:
        raise RunError(f"{label}={path} cannot be read: {err}") from err
    if not start:
        raise RunError(
            f"{label}={path} is empty (0 bytes); expected a .npz archive written by np.savez, "
            "or a folder of .npy files"
        )
    if not start.startswith(_ZIP_STARTS) and start != np.lib.format.MAGIC_PREFIX:
        raise RunError(
            f"{label}={path} is not a .npz file (its first bytes are {start[:4]!r}, not a zip "
            "archive's); expected a .npz archive written by np.savez, or a folder of .npy files"
        )


def _damaged(path: Path, label: str, err: BaseException) -> str:
    return (
        f"{label}={path} is a truncated or damaged .npz file ({type(err).__name__}: {err}); "
        "write it again with np.savez"
    )


def _member(archive: Any, key: str, path: Path, label: str) -> np.ndarray:
    """One array of the archive, with what can go wrong in reading it said in one line."""
    try:
        return np.asarray(archive[key])
    except ValueError as err:
        if "allow_pickle" in str(err):
            raise RunError(
                f"{label}={path}: array {key} holds Python objects (dtype object); expected "
                "numeric arrays (e.g. np.asarray(values, dtype='float32') before np.savez)"
            ) from err
        raise RunError(_damaged(path, label, err)) from err
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise RunError(_damaged(path, label, err)) from err


def _load_npy(path: Path) -> np.ndarray:
    """A folder's labels file, read into memory."""
    try:
        return np.asarray(np.load(path, allow_pickle=False))
    except (OSError, ValueError, EOFError) as err:
        what = "is empty (0 bytes)" if path.stat().st_size == 0 else f"does not read ({err})"
        raise RunError(
            f"{path} {what}; expected a numeric array written by np.save (class indices, one "
            "per sample)"
        ) from err
