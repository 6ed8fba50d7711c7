"""Backend-neutral checkpoints: NumPy arrays by variable path, and JSON. Loading runs no code.

A checkpoint is a directory:

    model.npz       every model variable (weights, and state such as dropout seeds) by Keras path
    optimizer.npz   every optimizer variable (iteration, lr, moments) by Keras path
    trainer.json    format, counters, position in the data order, RNG states, metrics so far,
                    backend, recipe, composed config, versions

It is written into a temporary sibling directory and renamed into place, so a reader sees either
the whole checkpoint or none. Arrays are read with `allow_pickle=False`: a file that needs pickle
is refused, never unpickled.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dualtrain.errors import ConfigError, RunError

FORMAT = "dualtrain-checkpoint/1"
FILES = ("model.npz", "optimizer.npz", "trainer.json")


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint in memory: arrays by variable path, and the trainer's JSON record."""

    model: dict[str, np.ndarray]
    optimizer: dict[str, np.ndarray]
    trainer: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.trainer["step"])


def write_checkpoint(directory: Path, checkpoint: Checkpoint) -> Path:
    """Writes `checkpoint` to `directory` atomically (temp dir, fsync, rename); returns it."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.parent / f".{directory.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    _write_arrays(tmp / "model.npz", checkpoint.model)
    _write_arrays(tmp / "optimizer.npz", checkpoint.optimizer)
    (tmp / "trainer.json").write_text(
        json.dumps({"format": FORMAT, **checkpoint.trainer}, indent=2) + "\n", encoding="utf-8"
    )
    for name in FILES:
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
    try:
        trainer = json.loads((directory / "trainer.json").read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise RunError(f"{directory / 'trainer.json'} is corrupt: {err}") from None
    if not isinstance(trainer, dict) or trainer.get("format") != FORMAT:
        raise RunError(f"{directory / 'trainer.json'} is not a {FORMAT} record")
    return Checkpoint(
        model=_read_arrays(directory / "model.npz"),
        optimizer=_read_arrays(directory / "optimizer.npz"),
        trainer=trainer,
    )


def _write_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    # allow_pickle=False: plain numeric arrays only, so reading never needs pickle.
    np.savez(path, allow_pickle=False, **arrays)


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as arrays:
            return {name: arrays[name] for name in arrays.files}
    except ValueError as err:  # object arrays need pickle: refused
        raise RunError(
            f"{path} holds data that would need pickle to load; refused ({err})"
        ) from None
    except (OSError, zipfile.BadZipFile, EOFError) as err:
        raise RunError(f"{path} is truncated or corrupt: {err}") from None


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
    """The complete checkpoints under `checkpoints_dir`, newest (highest step) first."""
    if not checkpoints_dir.is_dir():
        return []
    found = []
    for directory in checkpoints_dir.iterdir():
        if directory.name.startswith(".") or not (directory / "trainer.json").is_file():
            continue  # temporary or incomplete
        try:
            step = int(json.loads((directory / "trainer.json").read_text())["step"])
        except (ValueError, KeyError, TypeError):
            step = -1  # corrupt: tried last, and reported when loaded
        found.append((step, directory.name == "last", directory))
    return [d for _, _, d in sorted(found, key=lambda t: (t[0], t[1]), reverse=True)]


def python_rng_state() -> list[Any]:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def restore_python_rng(state: list[Any]) -> None:
    random.setstate((state[0], tuple(state[1]), state[2]))


class Checkpointer:
    """Saves checkpoints as the loop asks, under `<run_dir>/checkpoints/`.

    Each save is a new directory `step-<step>`, never overwritten; `last` is a symlink to the
    newest, swapped atomically; older step directories beyond `keep` are removed once the new one
    is in place. So a crash at any moment leaves the previous checkpoint whole.
    """

    def __init__(
        self,
        checkpoints_dir: Path,
        every_n_epochs: int,
        every_n_steps: int,
        record: dict[str, Any],
        keep: int = 2,
    ) -> None:
        self.dir = checkpoints_dir
        self.every_n_epochs = every_n_epochs
        self.every_n_steps = every_n_steps
        self.record = record  # what every checkpoint's trainer.json carries (backend, config, ...)
        self.keep = keep

    def after_step(self, engine: Any, state: Any) -> None:
        if self.every_n_steps and state.step % self.every_n_steps == 0:
            self.save(engine, state)

    def after_epoch(self, engine: Any, state: Any) -> None:
        if self.every_n_epochs and state.epochs % self.every_n_epochs == 0:
            self.save(engine, state)

    def finish(self, engine: Any, state: Any) -> None:
        """At the end of training (or a stop at max_steps): saves unless this step is saved."""
        last = self.dir / "last" / "trainer.json"
        if not last.is_file() or json.loads(last.read_text())["step"] != state.step:
            self.save(engine, state)

    def save(self, engine: Any, state: Any) -> Path:
        started = time.perf_counter()
        try:
            return self._save(engine, state)
        finally:
            state.checkpoint_seconds += time.perf_counter() - started

    def _save(self, engine: Any, state: Any) -> Path:
        model, optimizer = engine.checkpoint_arrays()
        trainer = {
            **self.record,
            "step": state.step,
            "epochs": state.epochs,  # completed
            "step_in_epoch": state.step_in_epoch,  # steps done of the epoch under way
            "final_train": state.final_train,
            "final_val": state.final_val,
            "train_loss_state": engine.train_loss_state(),
            "python_rng": python_rng_state(),
            "framework_rng": engine.framework_rng_state(),
        }
        directory = write_checkpoint(
            self.dir / f"step-{state.step:09d}", Checkpoint(model, optimizer, trainer)
        )
        link = self.dir / ".last.tmp"
        link.unlink(missing_ok=True)
        link.symlink_to(directory.name)
        os.replace(link, self.dir / "last")
        steps = sorted(p for p in self.dir.glob("step-*") if p.is_dir())
        for old in steps[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return directory
