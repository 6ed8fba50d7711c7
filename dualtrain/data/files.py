"""Arrays from files: `data=npz` (a `.npz` archive, or a folder of `.npy` files that streams)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dualtrain.data.dataset import SourceData
from dualtrain.data.rows import NpyRows
from dualtrain.errors import ConfigError, RunError


def npz(
    path: str,
    x_key: str = "x",
    y_key: str = "y",
    x_val_key: str = "x_val",
    y_val_key: str = "y_val",
    val_path: str | None = None,
) -> SourceData:
    """Features and labels from `path`: a `.npz` archive (read into memory), or a folder of
    `<key>.npy` files (features streamed from disk, for data larger than memory).

    The val split is `x_val_key`/`y_val_key` where present, else the same keys of `val_path`,
    else a seeded stratified `data.val_fraction`.
    """
    keys = {"x": x_key, "y": y_key}
    arrays = _read(Path(path), keys, required=True)
    val_keys = {"x": x_val_key, "y": y_val_key}
    val = _read(Path(path), val_keys, required=False)
    if val_path is not None:
        if val:
            raise ConfigError(
                f"data.path={path} has its own val arrays ({x_val_key}, {y_val_key}) and "
                f"data.val_path={val_path} gives others; keep one of them"
            )
        val = _read(Path(val_path), keys, required=True)
    said = f"data.path={path} has"
    if not val:
        return SourceData(x=arrays["x"], y=arrays["y"], said=said)
    return SourceData(x=arrays["x"], y=arrays["y"], x_val=val["x"], y_val=val["y"], said=said)


def _read(path: Path, keys: dict[str, str], required: bool) -> dict[str, Any]:
    """The arrays named by `keys`, or {} where none is there and none is required."""
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
        return {"x": NpyRows(present["x"]), "y": np.load(present["y"], allow_pickle=False)}
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise RunError(f"data.path={path} is not a readable .npz file or folder: {err}") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise RunError(
            f"data.path={path} holds one array; expected a .npz archive with arrays "
            f"{', '.join(keys.values())} (np.savez), or a folder of .npy files"
        )
    with archive:
        found = {role: key for role, key in keys.items() if key in archive.files}
        if not found and not required:
            return {}
        missing = [key for role, key in keys.items() if role not in found]
        if missing:
            raise ConfigError(
                f"data.path={path} has no array {' or '.join(missing)}; it has "
                f"{', '.join(archive.files)}: name them with data.x_key=..., data.y_key=..."
            )
        arrays = {role: archive[key] for role, key in keys.items()}
    if np.issubdtype(arrays["x"].dtype, np.integer):  # e.g. uint8 images: as they are, unscaled
        arrays["x"] = arrays["x"].astype("float32")
    return arrays
