"""A run directory belongs to one run: claimed with a lock, and never reused by a fresh run.

- A lock (`.dualtrain.lock`, an `fcntl` lock on an open file) is held for the whole life of the
  process that runs in the directory. The kernel drops it when the process ends, however it ends,
  so a run killed with SIGKILL never blocks its resume; a second process on a live run is refused,
  naming the process that holds it.
- A fresh run (no `checkpoint.resume=auto`, no `checkpoint.path` into its own directory) into a
  directory that holds an earlier run's files is refused before anything is written, so the
  earlier run's checkpoints, metrics and summary stay as they were.

dualtrain writes `.hydra/` itself, after the claim (Hydra is told `hydra.output_subdir=null`),
so a refused or misconfigured run leaves an earlier run's `.hydra/` untouched.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from dualtrain.errors import ConfigError

if TYPE_CHECKING:
    from dualtrain.settings import Settings

LOCK = ".dualtrain.lock"
# What a run leaves behind: any of these makes the directory an earlier run's.
RUN_FILES = (
    ".hydra",
    "metrics.jsonl",
    "summary.json",
    "checkpoints",
    "eval.json",
    "export",
    "parity.json",
    "tensorboard",
)

_held: dict[Path, IO[str]] = {}  # run dir -> its open lock file, kept open for the process's life


def claims(settings: Settings) -> bool:
    """Whether this process claims its run directory: not when another process of the same job
    holds it (an export worker in its parent's directory, a rank other than 0, a torchrun
    worker), nor when it writes nothing (debug=fast_dev_run)."""
    from dualtrain import distributed

    return (
        not settings.export.worker
        and not settings.trainer.fast_dev_run
        and distributed.is_writer(settings.backend.strategy)
    )


def _continues(settings: Settings) -> bool:
    """Whether the run continues the one in its directory: `checkpoint.resume=auto`, a
    `checkpoint.path` inside it, or a worker that torchrun restarted."""
    from dualtrain import distributed

    if settings.mode != "train":
        return False
    if settings.checkpoint.resume or distributed.restart_count() > 0:
        return True
    given = settings.checkpoint.path
    return given is not None and settings.run_dir.resolve() in Path(str(given)).resolve().parents


def claim(settings: Settings) -> None:
    """Locks the run directory for this process and, unless the run continues the one there
    (`checkpoint.resume=auto`, a `checkpoint.path` inside it, a restarted torchrun worker),
    checks that no earlier run is there.

    Raises:
        ConfigError: another live process holds the directory, or an earlier run is in it.
        ConfigError: also when the directory cannot be created or written.
    """
    run_dir = settings.run_dir.resolve()
    if run_dir in _held:
        return  # claimed already by this process (a job that runs a second job in-process)
    earlier = earlier_run(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        handle = open(run_dir / LOCK, "a+", encoding="utf-8")  # noqa: SIM115 (held for life)
    except OSError as err:  # a usage error, as when Hydra cannot create it: exit 2
        raise ConfigError(
            f"cannot create the run directory {run_dir}: {err.strerror}; choose a writable "
            "hydra.run.dir"
        ) from err
    if not _try_lock(handle):
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise ConfigError(
            f"hydra.run.dir={run_dir} is in use by {holder}; wait for it to end (then continue "
            "it with checkpoint.resume=auto), or choose another hydra.run.dir"
        )
    if earlier and not _continues(settings):
        _unlock(handle)
        raise ConfigError(
            f"hydra.run.dir={run_dir} holds an earlier run ({', '.join(earlier)}); continue it "
            "with checkpoint.resume=auto, or choose another hydra.run.dir"
        )
    handle.seek(0)
    handle.truncate()
    handle.write(f"process {os.getpid()}\n")
    handle.flush()
    _held[run_dir] = handle


def earlier_run(run_dir: Path) -> list[str]:
    """What of an earlier run `run_dir` holds (of RUN_FILES); empty for a fresh directory."""
    return [name for name in RUN_FILES if _present(run_dir / name)]


def holds(run_dir: Path) -> bool:
    """Whether this process holds `run_dir`'s lock."""
    return run_dir.resolve() in _held


def release(run_dir: Path) -> None:
    """Drops this process's lock on `run_dir` (it also goes when the process ends)."""
    handle = _held.pop(run_dir.resolve(), None)
    if handle is not None:
        _unlock(handle)


def write_hydra_files(run_dir: Path, config: Any, hydra_config: Any, overrides: list[str]) -> None:
    """`.hydra/config.yaml`, `hydra.yaml` and `overrides.yaml`, as Hydra writes them (OmegaConf
    YAML, unresolved), but only once the directory is this run's."""
    from omegaconf import OmegaConf

    folder = run_dir / ".hydra"
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in (
        ("config.yaml", config),
        ("hydra.yaml", hydra_config),
        ("overrides.yaml", OmegaConf.create(list(overrides))),
    ):
        tmp = folder / f".{name}.tmp"
        tmp.write_text(OmegaConf.to_yaml(content), encoding="utf-8")
        os.replace(tmp, folder / name)


def _present(path: Path) -> bool:
    """A file, or a directory with something in it (an empty folder is no earlier run)."""
    if path.is_dir():
        return any(path.iterdir())
    return path.exists()


def _try_lock(handle: IO[str]) -> bool:
    import fcntl

    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def _unlock(handle: IO[str]) -> None:
    import fcntl

    fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    handle.close()
