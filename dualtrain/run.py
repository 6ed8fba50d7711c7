"""One training run, from settings to summary.json: the plain function the CLI and tests call."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dualtrain import __version__, distributed, model_summary, rundir, threads
from dualtrain.callbacks import Callback, create_callbacks
from dualtrain.checkpoint import (
    Checkpoint,
    Checkpointer,
    find_checkpoint,
    newest_checkpoints,
    read_checkpoint,
    restore_python_rng,
)
from dualtrain.data import DataSplits, load_data
from dualtrain.engines import engine_class, select_backend
from dualtrain.errors import ConfigError, Interrupted, RunError
from dualtrain.loading import load_model, model_spec
from dualtrain.logging import LoggerGroup, create_loggers
from dualtrain.loop import LoopState, StopRequest, fit
from dualtrain.recipe import Recipe, load_recipe
from dualtrain.settings import Settings

if TYPE_CHECKING:
    from dualtrain.engines.base import Engine

log = logging.getLogger("dualtrain")

__all__ = ["evaluate", "load_model", "load_trained", "train"]


def train(settings: Settings) -> dict[str, Any]:
    """Trains the recipe on the chosen backend: what `python -m dualtrain` runs for `mode=train`.

    The summary is written whatever happens: `completed`, `interrupted` (Ctrl-C) or `failed`;
    the exception, if any, is re-raised after it is written. Called from Python, it claims the
    run directory as the command line does.

    Args:
        settings: the validated config (`Settings.from_config`), its run directory included.

    Returns:
        The summary, as written to summary.json.

    Raises:
        ConfigError: a config mistake, e.g. a `checkpoint.path` that holds no checkpoint.
        RunError: a failure while running (bad data, a recipe that does not fit).
        Interrupted: Ctrl-C or SIGTERM stopped the run, after a step and a checkpoint.
    """
    # wall_seconds counts from here on both backends: the framework's import included.
    started = time.time()
    sources = _checkpoint_sources(settings)  # file checks first: config errors before any framework
    run_dir = settings.run_dir
    # Only rank 0 (torchrun) or the chief (tf multi_worker) writes; a single process does.
    # debug=fast_dev_run writes nothing either, and shows its lines on the console only.
    rank0 = distributed.is_writer(settings.backend.strategy)
    writes = rank0 and not settings.trainer.fast_dev_run
    # The CLI has claimed the directory already; a call from Python claims it here.
    claimed_here = rundir.claims(settings) and not rundir.holds(run_dir)
    if claimed_here:
        rundir.claim(settings)
    run_dir.mkdir(parents=True, exist_ok=True)
    if settings.checkpoint.resume and not sources:
        log.info("checkpoint.resume=auto: no checkpoint in %s yet; starting fresh", run_dir)
    try:
        with _stop_on_signals() as stop:
            return _train(settings, sources, run_dir, rank0, writes, started, stop)
    finally:
        if claimed_here:
            rundir.release(run_dir)


def _train(
    settings: Settings,
    sources: list[Path],
    run_dir: Path,
    rank0: bool,
    writes: bool,
    started: float,
    stop: _SignalStop,
) -> dict[str, Any]:
    logger_settings = settings.logger
    if rank0 and settings.trainer.fast_dev_run:
        logger_settings = dataclasses.replace(logger_settings, loggers=("console",), targets={})
    logger = LoggerGroup([])
    state = LoopState()
    stop.step = lambda: state.step
    status = "failed"
    engine = None
    found = None  # optimizer.lr=auto: what the finder found
    model = None  # the model summary (model_summary.py)
    try:
        # In the try: a signal while they start (TensorBoard's import) still ends in a summary.
        if rank0:
            logger = create_loggers(logger_settings, run_dir, settings.backend.name)
        # Keras's backend before a user's data source can import Keras; the framework itself
        # after the data, whose mistakes are then found before it is imported.
        select_backend(settings.backend.name, import_framework=False)
        data = load_data(settings.data, settings.seed, task=settings.recipe.task)
        select_backend(settings.backend.name)
        recipe = load_recipe(settings.recipe)
        if settings.optimizer.lr == "auto":
            settings, found = _find_lr(settings, recipe, data, sources, run_dir if writes else None)
        engine = engine_class(settings.backend.name, _strategy(settings))(settings, recipe, data)
        log.info(
            "training %s on %s (jit_compile=%s): %s, run dir %s",
            settings.recipe.name,
            settings.backend.name,
            engine.jit_compile,
            data.describe(),
            run_dir,
        )
        model = engine.model_summary()
        say = log.info if model["flops_per_sample"] is not None else log.warning
        for line in model_summary.lines(model):
            say("%s", line)
        _load_checkpoint(
            engine, state, sources, weights_only=settings.checkpoint.init_from is not None
        )
        # The config's callbacks run before the checkpointer, so a checkpoint records the values
        # they add to the val metrics and the stop they ask for.
        callbacks: list[Callback] = create_callbacks(settings.callbacks)
        # torch's thread count follows the load of other processes (docs/shared-machines.md).
        follower = threads.load_follower(settings.backend.name, settings.trainer.deterministic)
        callbacks += [follower] if follower is not None else []
        # Export starts from the final checkpoint, so a run that exports always saves one.
        saves = settings.checkpoint.every_n_epochs or settings.checkpoint.every_n_steps
        if writes and (saves or settings.export.formats):
            callbacks.append(
                Checkpointer(
                    run_dir / "checkpoints",
                    settings.checkpoint,
                    record={
                        "backend": settings.backend.name,
                        "recipe": settings.recipe.name,
                        "seed": settings.seed,
                        "config": settings.config_yaml,
                        "versions": _versions(settings.backend.name),
                        # eval and export read the data with the transform training fitted
                        "data_transform": data.transform,
                        # load_model rebuilds the model from this alone: no data, no config
                        "model_spec": model_spec(settings.recipe, data.info),
                    },
                )
            )
        logger.log_hparams(hparams(settings), settings.config_yaml)
        stop.armed = True  # from here a first signal stops after the step under way
        fit(
            engine, settings.trainer, logger, state, settings.logger.histograms_every,
            callbacks, stop, run_dir if writes else None,
        )  # fmt: skip
        status = "completed"
    except (KeyboardInterrupt, Interrupted):
        status = "interrupted"
        raise
    finally:
        summary = {
            "status": status,
            "backend": settings.backend.name,
            "recipe": settings.recipe.name,
            "steps": state.step,
            "epochs": state.epochs,
            "wall_seconds": time.time() - started,
            "train_samples_per_sec": state.train_samples_per_sec,
            # Start-up cost: from the process's start to the end of its first optimizer step.
            "first_step_seconds": (
                state.first_step_at - process_start_time()
                if state.first_step_at is not None
                else None
            ),
            "train_seconds": state.train_seconds,
            "logging_seconds": state.logging_seconds,
            "checkpoint_seconds": state.checkpoint_seconds,
            "skipped_steps": state.skipped_steps,
            "stop_reason": state.stop_reason,
            "final": {"train": state.final_train, "val": state.final_val},
            "model": model,
            "jit_compile": engine.jit_compile if engine is not None else None,
            # How the steps ran (graphs, or op by op and why), for users and the benchmarks.
            "step_capture": engine.step_capture() if engine is not None else None,
            "distributed": engine.distributed_info() if engine is not None else None,
            "seed": settings.seed,
            "versions": _versions(settings.backend.name),
            "lr_find": found,
        }
        try:
            if writes:
                write_json(run_dir / "summary.json", summary)
            logger.finalize(summary)
        except OSError as err:  # a full disk: the run's own error, if any, is the one to report
            log.warning("could not write summary.json: %s", err)
            if status == "completed":
                raise
    return summary


def _find_lr(
    settings: Settings, recipe: Recipe, data: DataSplits, sources: list[Path], run_dir: Path | None
) -> tuple[Settings, dict[str, Any]]:
    """optimizer.lr=auto: the settings with the finder's suggestion as optimizer.lr, and what
    summary.json records of it; lr_find.json and lr_find.png go to `run_dir` (None: nowhere)."""
    from dualtrain import lr_find

    result = lr_find.find(settings, recipe, data, _weights_from(sources))
    if run_dir is not None:
        lr_find.write(run_dir, result)
    lr = lr_find.suggested(result)
    log.info("optimizer.lr=auto: training with the finder's suggested learning rate %.3g", lr)
    found = {k: result[k] for k in ("suggestion", "suggestion_step", "stopped_early", "settings")}
    return dataclasses.replace(
        settings, optimizer=dataclasses.replace(settings.optimizer, lr=lr)
    ), found


def init_weights(settings: Settings) -> Callable[[Engine], None]:
    """What readies a fresh engine for a run that trains from scratch: init_from's weights."""
    return _weights_from(_checkpoint_sources(settings))


def _weights_from(sources: list[Path]) -> Callable[[Engine], None]:
    return lambda engine: _load_checkpoint(engine, LoopState(), sources, weights_only=True)


def build_engine(settings: Settings) -> Engine:
    """The data, the recipe and the engine of the run's backend, ready to train."""
    # Keras's backend before a user's data source can import Keras; the framework itself after
    # the data, whose mistakes are then found before it is imported.
    select_backend(settings.backend.name, import_framework=False)
    data = load_data(settings.data, settings.seed, task=settings.recipe.task)
    select_backend(settings.backend.name)
    recipe = load_recipe(settings.recipe)
    return engine_class(settings.backend.name, _strategy(settings))(settings, recipe, data)


def summarize(settings: Settings) -> dict[str, Any]:
    """mode=summary: the model summary (parameters, layers, FLOPs), printed; nothing trained.
    Writes it to summary.json in the run directory, the file scripts read a run by."""
    engine = build_engine(settings)
    model = engine.model_summary()
    summary: dict[str, Any] = {
        "status": "completed",
        "mode": "summary",
        "backend": settings.backend.name,
        "recipe": settings.recipe.name,
        "model": model,
        "versions": _versions(settings.backend.name),
    }
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    write_json(settings.run_dir / "summary.json", summary)
    print(f"dualtrain summary of {settings.recipe.name} on {settings.backend.name}:")
    print("\n".join(model_summary.lines(model)))
    return summary


def evaluate(settings: Settings) -> dict[str, Any]:
    """`mode=eval`: the val metrics of a checkpoint's weights, written to eval.json.

    With `trainer.ema_eval` (the default), the run's moving average of the weights where it
    kept one (trainer.ema).

    Runs on this process's backend, whichever backend wrote the checkpoint.

    Args:
        settings: the validated config; `checkpoint.path` names the checkpoint or run directory.

    Returns:
        What eval.json holds: the backends, the checkpoint and its step, the val sample count, and
        `metrics` (the val loss and the recipe's metrics by name).

    Raises:
        ConfigError: the checkpoint was written by another recipe.
    """
    engine, checkpoint, source = load_trained(settings, averaged=settings.trainer.ema_eval)
    result = {
        "backend": settings.backend.name,
        "recipe": settings.recipe.name,
        "checkpoint": str(source.resolve()),
        "checkpoint_backend": checkpoint.trainer["backend"],
        "checkpoint_step": checkpoint.step,
        "weights": weights_words(checkpoint, settings.trainer.ema_eval),
        "split": "val",
        "samples": engine.data.val.num_samples,
        "metrics": engine.evaluate(),
    }
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    write_json(settings.run_dir / "eval.json", result)
    shown = ", ".join(f"{name}={value:.4f}" for name, value in result["metrics"].items())
    print(
        f"dualtrain eval of {source} (step {checkpoint.step}) on {settings.backend.name}: {shown}"
    )
    return result


def load_trained(settings: Settings, averaged: bool = True) -> tuple[Engine, Checkpoint, Path]:
    """An engine with a checkpoint's weights, for eval and export.

    Args:
        settings: the validated config; `checkpoint.path` names the checkpoint (written by either
            backend) or its run directory.
        averaged: the run's moving average of the weights where it kept one (trainer.ema),
            rather than its weights.

    Returns:
        The engine on this process's backend, its data loaded; the checkpoint; its directory.

    Raises:
        ConfigError: the checkpoint was written by another recipe.
    """
    source = find_checkpoint(Path(str(settings.checkpoint.path)))
    select_backend(settings.backend.name)
    checkpoint = read_checkpoint(source)
    record = checkpoint.trainer
    if record.get("recipe") != settings.recipe.name:
        raise ConfigError(
            f"{source} was written by recipe={record.get('recipe')}; use it with "
            f"recipe={record.get('recipe')} (and the data it was trained on)"
        )
    data = load_data(
        settings.data, settings.seed, record.get("data_transform"), task=settings.recipe.task
    )
    engine = engine_class(settings.backend.name)(settings, load_recipe(settings.recipe), data)
    engine.state.restore(checkpoint.weights(averaged), None)
    return engine, checkpoint, source


def weights_words(checkpoint: Checkpoint, averaged: bool) -> str:
    """Which weights eval and export use, for their reports."""
    ema = checkpoint.trainer.get("ema")
    if ema is None:
        return "raw (the run had no trainer.ema)"
    said = f"trainer.ema={ema['momentum']}"
    return f"averaged ({said})" if averaged else f"raw (the average, {said}, not used)"


class _SignalStop(StopRequest):
    """The loop's stop request, and what the signal handler needs to know: whether the loop runs
    (`armed`: a first signal then waits for the step under way) and the step it is at."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = False
        self.step: Callable[[], int] = lambda: 0


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[_SignalStop]:
    """SIGINT and SIGTERM ask the loop to stop after the current step (and save a checkpoint).

    A signal during start-up (before the loop runs) or a second one stops at once, by raising
    `Interrupted` where the process is: the run still ends through `train`'s `finally`, so
    summary.json records the stop and the CLI prints one line.
    """
    stop = _SignalStop()
    if threading.current_thread() is not threading.main_thread():
        yield stop  # signal handlers can only be set from the main thread
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def request(signum: int, frame: Any) -> None:
        if stop.armed and stop.signum is None:
            stop.signum = signum
            return
        stop.armed = False  # one raise: a third signal while unwinding is ignored
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        raise Interrupted(signum, stop.step(), saved=False)

    for sig in previous:
        signal.signal(sig, request)
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _strategy(settings: Settings) -> str:
    """The engine's distribution: torchrun's environment for torch, backend.strategy for tf."""
    if settings.backend.name == "torch" and distributed.under_torchrun():
        return "torchrun"
    return settings.backend.strategy


def _checkpoint_sources(settings: Settings) -> list[Path]:
    """The checkpoints to try, best first: the one given, or the run directory's newest ones.

    Workers that torchrun's elastic agent restarted (`--max-restarts`) resume as with
    checkpoint.resume=auto: the run directory's newest checkpoint first, since it is newer than
    any given one; a given checkpoint.path comes after, as a fallback.
    """
    given = settings.checkpoint.path or settings.checkpoint.init_from
    restarted = distributed.restart_count() > 0 and not settings.checkpoint.init_from
    own = newest_checkpoints(settings.run_dir / "checkpoints")
    if restarted and own:
        log.info("restarted by torchrun: resuming from the run directory's newest checkpoint")
        return own + ([find_checkpoint(Path(given))] if given else [])
    if given:
        return [find_checkpoint(Path(given))]
    if settings.checkpoint.resume:
        return own
    return []


def _load_checkpoint(
    engine: Engine, state: LoopState, sources: list[Path], weights_only: bool
) -> None:
    """Restores the first checkpoint of `sources` that reads; later ones are fallbacks."""
    for number, source in enumerate(sources):
        try:
            checkpoint = read_checkpoint(source)
        except RunError as err:
            if number + 1 == len(sources):  # only resume=auto finds several, and may fall back
                raise
            log.warning("%s; falling back to the previous checkpoint", err)
            continue
        if weights_only:
            engine.state.restore(checkpoint.model, None)
            log.info("initialized the weights from %s", source)
            return
        engine.state.restore(checkpoint.model, checkpoint.optimizer, checkpoint.average)
        record = checkpoint.trainer
        if engine.state.averages and checkpoint.average is None:
            log.info("%s has no weight average: trainer.ema starts it from its weights", source)
        elif checkpoint.average is not None and not engine.state.averages:
            log.info("%s has a weight average; trainer.ema=null leaves it out", source)
        engine.restore_train_loss_state(record["train_loss_state"])
        restore_python_rng(record["python_rng"])
        if record["backend"] == engine.name and record.get("framework_rng") is not None:
            engine.restore_framework_rng_state(record["framework_rng"])
        state.step = int(record["step"])
        state.epochs = int(record["epochs"])
        state.step_in_epoch = int(record["step_in_epoch"])
        state.final_train = dict(record["final_train"])
        state.final_val = dict(record["final_val"])
        state.skipped_steps = int(record.get("skipped_steps", 0))
        log.info(
            "resumed from %s (written by %s): step %d, epoch %d",
            source,
            record["backend"],
            state.step,
            state.epochs,
        )
        return


def hparams(settings: Settings) -> dict[str, bool | int | float | str]:
    """The composed config flattened to dotted keys, for TensorBoard's HParams dashboard."""
    import yaml

    flat: dict[str, bool | int | float | str] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        elif isinstance(node, (bool, int, float, str)):
            flat[prefix[:-1]] = node
        else:  # lists and nulls, as JSON
            flat[prefix[:-1]] = json.dumps(node)

    walk(yaml.safe_load(settings.config_yaml) or {}, "")
    flat["backend.name"] = settings.backend.name
    return flat


def write_json(path: Path, content: dict[str, Any]) -> None:
    """Writes a JSON file atomically: readers see the old file or the new one, never half of one."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _versions(backend: str) -> dict[str, str]:

    versions = {"dualtrain": __version__, "python": sys.version.split()[0]}
    for name in ("keras", "torch" if backend == "torch" else "tensorflow", "numpy"):
        module = sys.modules.get(name)
        if module is not None:
            versions[name] = getattr(module, "__version__", "unknown")
    return versions


_IMPORTED_AT = time.time()


def process_start_time() -> float:
    """Unix time at which this process started (Linux: from /proc; elsewhere: when this module
    was imported, which leaves out the interpreter's own start)."""
    try:
        with open("/proc/self/stat", encoding="ascii") as stat:
            ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat", encoding="ascii") as stat:
            boot = next(int(line.split()[1]) for line in stat if line.startswith("btime"))
    except (OSError, ValueError, IndexError, StopIteration):
        return _IMPORTED_AT
    return boot + ticks / os.sysconf("SC_CLK_TCK")
