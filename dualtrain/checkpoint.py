"""Backend-neutral checkpoints: NumPy arrays by variable path, and JSON. Loading runs no code.

A checkpoint is a directory:

    model.npz       every model variable (weights, and state such as dropout seeds) by Keras path
    optimizer.npz   every optimizer variable (iteration, lr, moments) by Keras path
    trainer.json    format, counters, position in the data order, RNG states, metrics so far,
                    backend, recipe, composed config, versions
    average.npz     with trainer.ema only: the moving average of each trainable weight, by the
                    weight's path (trainer.json's `ema`: its momentum)

It is written into a temporary sibling directory and renamed into place, so a reader sees either
the whole checkpoint or none. Arrays are read with `allow_pickle=False`: a file that needs pickle
is refused, never unpickled.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dualtrain.callbacks import Callback, TrainingRun
from dualtrain.errors import ConfigError, RunError
from dualtrain.settings import CheckpointSettings

if TYPE_CHECKING:
    from dualtrain.engines.base import Engine
    from dualtrain.loop import LoopState

FORMAT = "dualtrain-checkpoint/1"
FILES = ("model.npz", "optimizer.npz", "trainer.json")
AVERAGE = "average.npz"  # only where the run kept a weight average


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint in memory: arrays by variable path, and the trainer's JSON record."""

    model: dict[str, np.ndarray]
    optimizer: dict[str, np.ndarray]
    trainer: dict[str, Any]
    average: dict[str, np.ndarray] | None = None  # trainer.ema's averaged weights

    @property
    def step(self) -> int:
        return int(self.trainer["step"])

    def weights(self, averaged: bool = True) -> dict[str, np.ndarray]:
        """The model's arrays; `averaged`: the trainable weights replaced by their moving
        average where the run kept one (trainer.ema)."""
        return {**self.model, **(self.average or {})} if averaged else self.model


def write_checkpoint(directory: Path, checkpoint: Checkpoint) -> Path:
    """Writes `checkpoint` to `directory` atomically (temp dir, fsync, rename); returns it."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.parent / f".{directory.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    _write_arrays(tmp / "model.npz", checkpoint.model)
    _write_arrays(tmp / "optimizer.npz", checkpoint.optimizer)
    if checkpoint.average is not None:
        _write_arrays(tmp / AVERAGE, checkpoint.average)
    (tmp / "trainer.json").write_text(
        json.dumps({"format": FORMAT, **checkpoint.trainer}, indent=2) + "\n", encoding="utf-8"
    )
    for name in [*FILES, *([AVERAGE] if checkpoint.average is not None else [])]:
        with (tmp / name).open("rb") as f:
            os.fsync(f.fileno())
    # Rename over the old one: move it aside first (a directory cannot be replaced in one step),
    # then drop it once the new one is in place.
    old = directory.parent / f".{directory.name}.old-{os.getpid()}"
    if directory.exists():
        os.replace(directory, old)
    os.replace(tmp, directory)
    shutil.rmtree(old, ignore_errors=True)
    return directory


def read_checkpoint(directory: Path) -> Checkpoint:
    """Reads a checkpoint directory.

    Raises:
        RunError: naming the file that is missing, truncated or not a dualtrain checkpoint file.
    """
    for name in FILES:
        if not (directory / name).is_file():
            raise RunError(f"{directory} is not a dualtrain checkpoint: {name} is missing")
    trainer = read_record(directory)
    average = None
    if trainer.get("ema") is not None:
        if not (directory / AVERAGE).is_file():
            raise RunError(f"{directory} is not a whole checkpoint: its {AVERAGE} is missing")
        average = _read_arrays(directory / AVERAGE)
    return Checkpoint(
        model=_read_arrays(directory / "model.npz"),
        optimizer=_read_arrays(directory / "optimizer.npz"),
        trainer=trainer,
        average=average,
    )


def read_record(directory: Path) -> dict[str, Any]:
    """A checkpoint's trainer.json, without its arrays.

    Raises:
        RunError: the file is missing, corrupt, or not a dualtrain checkpoint record.
    """
    try:
        trainer = json.loads((directory / "trainer.json").read_text(encoding="utf-8"))
    except OSError as err:
        raise RunError(f"{directory / 'trainer.json'} cannot be read: {err}") from err
    except (ValueError, UnicodeDecodeError) as err:
        raise RunError(f"{directory / 'trainer.json'} is corrupt: {err}") from err
    if not isinstance(trainer, dict) or trainer.get("format") != FORMAT:
        raise RunError(f"{directory / 'trainer.json'} is not a {FORMAT} record")
    return trainer


def _write_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    # allow_pickle=False: plain numeric arrays only, so reading never needs pickle.
    np.savez(path, allow_pickle=False, **arrays)


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    try:
        _check_headers(path)
        with np.load(path, allow_pickle=False) as arrays:
            return {name: arrays[name] for name in arrays.files}
    except ValueError as err:  # object arrays need pickle: refused
        raise RunError(
            f"{path} holds data that would need pickle to load; refused ({err})"
        ) from err
    except (OSError, zipfile.BadZipFile, EOFError) as err:
        raise RunError(f"{path} is truncated or corrupt: {err}") from err


_NPY_HEADER_READERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}


def _check_headers(path: Path) -> None:
    """Reads each array's header, and refuses the file before any array is read unless every
    array is a plain numeric one stored uncompressed, of the size its header declares.

    NumPy allocates the array a header declares before reading its data, so a 1 MB file could
    claim gigabytes: here no array may declare more bytes than the file holds for it.
    """
    size = path.stat().st_size
    with zipfile.ZipFile(path) as archive:
        for member in archive.infolist():
            if not member.filename.endswith(".npy"):
                raise RunError(f"{path} holds {member.filename!r}, which is not a NumPy array")
            if member.compress_type != zipfile.ZIP_STORED or member.file_size > size:
                raise RunError(
                    f"{path}: {member.filename} is compressed or larger than the file; "
                    "dualtrain writes arrays uncompressed (np.savez), so this is not its file"
                )
            with archive.open(member) as stream:
                version = np.lib.format.read_magic(stream)
                read_header = _NPY_HEADER_READERS.get(version)
                if read_header is None:  # 3.0 is for non-Latin-1 field names: not ours
                    raise RunError(f"{path}: {member.filename} has .npy version {version}")
                shape, _, dtype = read_header(stream)
                declared = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
                if dtype.hasobject:
                    raise RunError(
                        f"{path}: {member.filename} holds Python objects, which would need "
                        "pickle to load; refused"
                    )
                if declared > member.file_size - stream.tell():
                    raise RunError(
                        f"{path}: {member.filename} declares a {dtype} array of shape {shape} "
                        f"({declared:,} bytes) in {member.file_size:,} bytes; the file is "
                        "corrupt or crafted"
                    )


def find_checkpoint(path: Path) -> Path:
    """A checkpoint directory from `checkpoint.path`: a checkpoint itself, or a run directory
    (then its newest checkpoint)."""
    if (path / "trainer.json").is_file():
        return path
    found = newest_checkpoints(path / "checkpoints")
    if found:
        return found[0]
    raise ConfigError(
        f"checkpoint.path={path} is neither a checkpoint directory nor a run directory with "
        "checkpoints/; give a run directory or one of its checkpoints/<name> directories"
    )


def newest_checkpoints(checkpoints_dir: Path) -> list[Path]:
    """The complete checkpoints under `checkpoints_dir`, newest first.

    `step-<zero-padded step>` names sort by step; `last` only links to the newest of them, and
    hidden temporary directories of unfinished saves do not match.
    """
    steps = sorted(checkpoints_dir.glob("step-*"), reverse=True)
    return [d for d in steps if _STEP_NAME.fullmatch(d.name) and (d / "trainer.json").is_file()]


_STEP_NAME = re.compile(r"step-\d{9,}")  # what the checkpointer names its saves


def python_rng_state() -> list[Any]:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def restore_python_rng(state: list[Any]) -> None:
    random.setstate((state[0], tuple(state[1]), state[2]))


class Checkpointer(Callback):
    """Saves checkpoints as the loop asks, under `<run_dir>/checkpoints/`, and prunes them.

    Each save is a new directory `step-<step>`, never overwritten. With `save_last`, `last` is a
    symlink to the newest, swapped atomically, and the newest two are kept, so a crash at any
    moment, even while saving, leaves a whole checkpoint to resume from. Besides those, the
    `save_top_k` best by `monitor` are kept (-1: all), and `best` links the best of them; the rest
    are removed once the new one is in place.
    """

    saves_checkpoints = True

    def __init__(self, checkpoints_dir: Path, settings: CheckpointSettings, record: dict[str, Any]):
        self.dir = checkpoints_dir
        self.settings = settings
        self.record = record  # what every checkpoint's trainer.json carries (backend, config, ...)
        self._due_at_epoch_end = False
        # Leftovers of a save that a kill interrupted: this run is the directory's only writer.
        for leftover in self.dir.glob(".step-*"):
            shutil.rmtree(leftover, ignore_errors=True)

    # -- as a callback: a NaN or Inf step is looked for before each save, so none is saved --

    def on_step_end(self, run: TrainingRun, epoch_ends: bool) -> None:
        if self.saves_after_step(run.state, epoch_ends):
            run.check_finite()
        self.after_step(run.engine, run.state, epoch_ends)

    def on_epoch_end(self, run: TrainingRun, epoch: int) -> None:
        run.check_finite()
        self.after_epoch(run.engine, run.state)

    def on_train_end(self, run: TrainingRun) -> None:
        run.check_finite()
        self.finish(run.engine, run.state)

    def saves_after_step(self, state: LoopState, epoch_ends: bool) -> bool:
        """Whether `after_step` will save now (not at an epoch end: `after_epoch` does)."""
        every = self.settings.every_n_steps
        return bool(every) and state.step % every == 0 and not epoch_ends

    def after_step(self, engine: Engine, state: LoopState, epoch_ends: bool) -> None:
        if self.settings.every_n_steps and state.step % self.settings.every_n_steps == 0:
            if epoch_ends:  # saved once, after the epoch's validation, by after_epoch
                self._due_at_epoch_end = True
            else:
                self.save(engine, state)

    def after_epoch(self, engine: Engine, state: LoopState) -> None:
        every = self.settings.every_n_epochs
        if self._due_at_epoch_end or (every and state.epochs % every == 0):
            self.save(engine, state)
        self._due_at_epoch_end = False

    def finish(self, engine: Engine, state: LoopState) -> None:
        """At the end of training or at a stop: saves unless this step is saved already."""
        if not (self.dir / f"step-{state.step:09d}" / "trainer.json").is_file():
            self.save(engine, state)

    def save(self, engine: Engine, state: LoopState) -> Path:
        started = time.perf_counter()
        try:
            return self._save(engine, state)
        finally:
            state.checkpoint_seconds += time.perf_counter() - started

    def _save(self, engine: Engine, state: LoopState) -> Path:
        model, optimizer = engine.state.checkpoint_arrays()
        average = engine.state.average_arrays()
        trainer = {
            **self.record,
            "step": state.step,
            "epochs": state.epochs,  # completed
            "step_in_epoch": state.step_in_epoch,  # steps done of the epoch under way
            "final_train": state.final_train,
            "final_val": state.final_val,
            "skipped_steps": state.skipped_steps,
            "monitor": self.settings.monitor,
            "monitor_value": self._monitored(state),
            "train_loss_state": engine.train_loss_state(),
            "python_rng": python_rng_state(),
            "framework_rng": engine.framework_rng_state(),
            "ema": None if average is None else {"momentum": engine.state.ema_momentum},
        }
        directory = write_checkpoint(
            self.dir / f"step-{state.step:09d}", Checkpoint(model, optimizer, trainer, average)
        )
        if self.settings.save_last:
            self._link("last", directory)
        self._prune()
        return directory

    def _link(self, name: str, directory: Path | None) -> None:
        """Points the symlink `name` at `directory` (None: removes it), swapped atomically."""
        if directory is None:
            (self.dir / name).unlink(missing_ok=True)
            return
        link = self.dir / f".{name}.tmp"
        link.unlink(missing_ok=True)
        link.symlink_to(directory.name)
        os.replace(link, self.dir / name)

    def _monitored(self, state: LoopState) -> float | None:
        split, _, name = self.settings.monitor.partition("/")
        values = state.final_val if split == "val" else state.final_train
        if not values:
            return None  # no val pass yet (a mid-epoch save in the first epoch)
        if name not in values:
            raise RunError(
                f"checkpoint.monitor={self.settings.monitor} is not a logged value; choose one of "
                + ", ".join(f"{split}/{n}" for n in values)
            )
        return float(values[name])

    def _prune(self) -> None:
        saved: list[tuple[int, float | None, Path]] = []
        for directory in self.dir.glob("step-*"):
            try:
                record = read_record(directory)
            except RunError:
                continue  # not ours to judge; left alone
            step = record.get("step")
            if not isinstance(step, int) or isinstance(step, bool):
                continue  # someone else's step-* directory: neither counted nor removed
            value = record.get("monitor_value")
            monitored = float(value) if isinstance(value, (int, float)) else None
            saved.append((step, monitored, directory))
        saved.sort(key=lambda item: item[0])
        keep = {item[2] for item in saved[-2:]} if self.settings.save_last else set()
        ranked = [(value, directory) for _, value, directory in saved if value is not None]
        ranked.sort(key=lambda item: item[0], reverse=self.settings.mode == "max")
        top_k = self.settings.save_top_k
        keep |= {directory for _, directory in (ranked if top_k < 0 else ranked[:top_k])}
        # `best`: the best by monitor among those kept for it (none with save_top_k=0).
        self._link("best", ranked[0][1] if ranked and top_k != 0 else None)
        for _, _, directory in saved:
            if directory not in keep:
                _remove(directory)


def _remove(directory: Path) -> None:
    """Removes a checkpoint so that no kill leaves half of it under its name: renamed to a hidden
    name first (one atomic step), then deleted; a leftover is removed when a run saves next."""
    hidden = directory.parent / f".{directory.name}.del-{os.getpid()}"
    try:
        os.replace(directory, hidden)
    except OSError:
        return  # gone already, or not ours to move
    shutil.rmtree(hidden, ignore_errors=True)
