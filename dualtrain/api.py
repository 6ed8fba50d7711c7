"""dualtrain from Python (a notebook, a script): `fit` trains a recipe as the command line does,
`evaluate` scores a checkpoint.

    import dualtrain
    run = dualtrain.fit("cnn", backend="torch", overrides=["trainer.max_epochs=3"])
    run.summary["final"]["val"]        # {'loss': ..., 'accuracy': ...}
    model = run.load_model()           # the Keras model with the run's final weights

`fit("cnn", backend="tf", overrides=[...])` runs what `python -m dualtrain recipe=cnn backend=tf
...` runs: the same config (composed by Hydra's compose API, through `cli.compose_job`), the same
checks and one-line errors (`ConfigError`, `RunError`), the same run directory
(`outputs/<recipe>/<backend>/<time>` under the current directory, or `run_dir`) and files.

Keras fixes its backend once per process. A run on the backend this process's Keras runs, or in
a process that has not imported Keras yet, trains here; a run on the other backend trains in a
new process (`python -m dualtrain ...`), whose output is shown as it comes.

Importing this module imports neither a framework nor Hydra; a run imports them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dualtrain.errors import ConfigError, RunError
from dualtrain.loading import load_model

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from dualtrain.settings import Settings

__all__ = ["Run", "evaluate", "fit"]


@dataclass(frozen=True)
class Run:
    """A training run that has ended: its summary (summary.json's content) and its directory."""

    summary: dict[str, Any]
    run_dir: Path
    # The recipe's module, from the config the caller composed: load_model may import it (a
    # module a checkpoint names is imported only when the caller names it, docs/checkpoints.md).
    recipe_module: str

    def load_model(self, backend: str | None = None) -> Any:
        """The Keras model with the weights of the run's newest checkpoint (its final weights),
        on `backend` (default: this process's Keras backend, else the run's); see
        `dualtrain.load_model`."""
        return load_model(self.run_dir, backend=backend, recipe=self.recipe_module)


def fit(
    recipe: str | None = None,
    backend: str | None = None,
    overrides: Sequence[str] = (),
    *,
    run_dir: str | Path | None = None,
    config_dir: str | Path | None = None,
    in_process: bool | None = None,
) -> Run:
    """Trains `recipe` on `backend` (`torch` or `tf`) as `python -m dualtrain recipe=RECIPE
    backend=BACKEND OVERRIDES...` does, and returns the run.

    Args:
        recipe: as `recipe=` on the command line (None: `cnn`, unless `overrides` name one).
        backend: `torch` or `tf`, as `backend=` (None: the one this process's Keras runs, or
            KERAS_BACKEND names; else `torch`, unless `overrides` name one).
        overrides: Hydra overrides, as typed on the command line: `["trainer.max_epochs=3",
            "data=synthetic"]`.
        run_dir: `hydra.run.dir`; default `outputs/<recipe>/<backend>/<time>` under the current
            directory (with `_2`, `_3`, ... when a run of the same second holds it).
        config_dir: a directory of your own recipes, as `--config-dir`.
        in_process: None: here when this process can run the backend, else in a new process;
            False: always in a new process; True: here, or RunError.

    Raises:
        ConfigError: a config mistake (the command line's exit code 2), before anything runs.
        RunError: a failure while running (exit code 1), with the command line's one line.
    """
    settings, summary = _run_job(
        _choices(recipe, backend, overrides), "train", run_dir, config_dir, in_process
    )
    return Run(summary, settings.run_dir, settings.recipe.module)


def evaluate(
    checkpoint: str | Path,
    backend: str | None = None,
    overrides: Sequence[str] = (),
    *,
    run_dir: str | Path | None = None,
    config_dir: str | Path | None = None,
    in_process: bool | None = None,
) -> dict[str, Any]:
    """The val metrics of a checkpoint (a run directory or one of its checkpoints, written by
    either backend) on `backend`: `python -m dualtrain mode=eval checkpoint.path=CHECKPOINT`.
    Returns eval.json's content (`metrics`, `checkpoint_step`, ...); other arguments as `fit`'s.
    """
    from dualtrain.cli import quoted

    given = [f"checkpoint.path={quoted(str(checkpoint))}", *overrides]
    _, result = _run_job(
        ["mode=eval", *_choices(None, backend, given)], "eval", run_dir, config_dir, in_process
    )
    return result


def _choices(recipe: str | None, backend: str | None, overrides: Sequence[str]) -> list[str]:
    """`recipe=` and `backend=` from the arguments, then the caller's overrides. No backend named
    anywhere: this process's Keras backend (see `process_backend`), else the config's."""
    from dualtrain.engines import process_backend

    if isinstance(overrides, str):
        raise ConfigError(f"overrides must be a list of strings, e.g. [{overrides!r}]")
    keys = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
    for name, value in (("recipe", recipe), ("backend", backend)):
        if value is not None and name in keys:
            raise ConfigError(f"{name} is given twice; give {name}={value} or the override")
    if backend is None and "backend" not in keys:
        backend = process_backend()
    chosen = [f"recipe={recipe}"] if recipe is not None else []
    chosen += [f"backend={backend}"] if backend is not None else []
    return chosen + list(overrides)


def _run_job(
    overrides: list[str],
    mode: str,
    run_dir: str | Path | None,
    config_dir: str | Path | None,
    in_process: bool | None,
) -> tuple[Settings, dict[str, Any]]:
    """Composes the job, runs it here or in a new process, and returns its settings and result
    (the summary of a training run, eval.json's content for mode=eval)."""
    from dualtrain import cli, rundir
    from dualtrain.engines import running_backend

    cfg, hydra_cfg = cli.compose_job(overrides, config_dir)
    _set_run_dir(hydra_cfg, _fresh_run_dir(hydra_cfg) if run_dir is None else Path(run_dir))
    settings = cli.prepare_job(cfg, hydra_cfg, claim=False)  # its mistakes before anything runs
    if settings.mode != mode:
        raise ConfigError(f"mode={settings.mode} is not this function's; it runs mode={mode}")
    backend, running = settings.backend.name, running_backend()
    here = running is None or running == backend
    if in_process and not here:
        raise RunError(
            f"this process already runs Keras on {running}; backend={backend} needs a new "
            "process (in_process=None or False)"
        )
    if in_process is False or not here:
        _run_in_new_process(cli.job_command(hydra_cfg))
        written = settings.run_dir / ("summary.json" if mode == "train" else "eval.json")
        # debug=fast_dev_run writes nothing, summary.json included
        return settings, json.loads(written.read_text("utf-8")) if written.is_file() else {}
    try:
        settings = cli.prepare_job(cfg, hydra_cfg)  # again, now claiming the run directory
        with _run_logging(settings, hydra_cfg):
            return settings, cli.run(settings, command_for=cli.commands_for(hydra_cfg))
    finally:  # the command line's process ends, and its lock with it; a notebook goes on
        rundir.release(settings.run_dir)


def _fresh_run_dir(hydra_cfg: DictConfig) -> Path:
    """The command line's run directory; one named by the time (the default) gets `_2`, `_3`,
    ... when a run of the same second holds it: runs in a notebook's loop can be that short."""
    from omegaconf import OmegaConf

    from dualtrain import rundir

    given = Path(hydra_cfg.runtime.output_dir)
    unresolved: Any = OmegaConf.to_container(hydra_cfg.run)
    if "${shared_now:" not in str(unresolved["dir"]):
        return given  # the caller's: a run there is refused, or resumed, as on the command line
    candidate, number = given, 1
    while rundir.earlier_run(candidate):
        number += 1
        candidate = given.with_name(f"{given.name}_{number}")
    return candidate


def _set_run_dir(hydra_cfg: DictConfig, path: Path) -> None:
    hydra_cfg.run.dir = hydra_cfg.runtime.output_dir = str(path.absolute())


@contextlib.contextmanager
def _run_logging(settings: Settings, hydra_cfg: DictConfig) -> Iterator[None]:
    """The run's log lines where the command line has them (Hydra's job_logging): on stdout
    (a notebook's cell output) and in `<run_dir>/<job name>.log`, `dualtrain.log`. The logging
    of the caller's process is as it was afterwards."""
    import logging

    from omegaconf import OmegaConf

    from dualtrain import rundir

    log = logging.getLogger("dualtrain")
    pattern = OmegaConf.select(hydra_cfg, "job_logging.formatters.simple.format")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if rundir.claims(settings):  # debug=fast_dev_run writes no file
        name = OmegaConf.select(hydra_cfg, "job.name", default="dualtrain")
        handlers.append(logging.FileHandler(settings.run_dir / f"{name}.log", encoding="utf-8"))
    saved = log.level, log.propagate
    for handler in handlers:
        handler.setFormatter(logging.Formatter(pattern))
        log.addHandler(handler)
    # As on the command line (Hydra's root level, INFO), and once: not again by the caller's own
    # handlers, if any.
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        yield
    finally:
        log.setLevel(saved[0])
        log.propagate = saved[1]
        for handler in handlers:
            log.removeHandler(handler)
            handler.close()


_ERROR = "dualtrain: error: "


def _run_in_new_process(command: list[str]) -> None:
    """Runs `python -m dualtrain ...`, its output (stdout and stderr, in order) shown on this
    process's stdout as it comes; its `dualtrain: error:` line becomes the exception's message
    (ConfigError for exit code 2, RunError otherwise: an interrupted run's included)."""
    child = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        env={**os.environ, "PYTHONUNBUFFERED": "1"},  # lines as they are written
        # A session of its own: an interrupt (Ctrl-C, a notebook's stop button) reaches this
        # process only, which passes one SIGINT on: the run stops after its step and saves.
        start_new_session=True,
    )
    error, interrupted = None, False
    try:
        try:
            error = _show_output(child)
        except KeyboardInterrupt:
            interrupted = True
            child.send_signal(signal.SIGINT)
            error = _show_output(child)
    finally:
        if child.poll() is None:  # a second interrupt, or an error here
            child.kill()
        child.wait()
        if child.stdout is not None:
            child.stdout.close()
    if child.returncode != 0:
        message = error or f"{shlex.join(command)} exited with code {child.returncode}"
        raise (ConfigError if child.returncode == 2 else RunError)(message)
    if interrupted:  # the run had ended before the signal
        raise KeyboardInterrupt


def _show_output(child: subprocess.Popen[str]) -> str | None:
    """Writes the child's lines to stdout until it closes them; returns its error line's text."""
    error = None
    assert child.stdout is not None
    for line in child.stdout:
        if line.startswith(_ERROR):
            error = line[len(_ERROR) :].strip()  # the exception says it
            continue
        sys.stdout.write(line)
        sys.stdout.flush()
    return error
