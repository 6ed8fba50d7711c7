"""The training loop, written once for both backends: epochs, steps, logging cadence, throughput.

The loop never touches a framework. It asks the engine for batches and steps, and for numbers only
every `trainer.log_every_n_steps` steps, so values leave the device rarely.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import logging
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dualtrain.callbacks import Callback, TrainingRun
from dualtrain.errors import Interrupted, RunError
from dualtrain.logging import Logger
from dualtrain.plan import batches_per_epoch
from dualtrain.profiling import StepProfiler
from dualtrain.settings import TrainerSettings

if TYPE_CHECKING:
    from dualtrain.engines.base import Batch, Engine

log = logging.getLogger("dualtrain")


@dataclass
class LoopState:
    """Where a run stands: counters, last values, and the steady-state throughput figures."""

    step: int = 0  # optimizer steps so far
    epochs: int = 0  # epochs completed
    step_in_epoch: int = 0  # steps done of the epoch under way (non-zero when resumed mid-epoch)
    final_train: dict[str, float] = field(default_factory=dict)
    final_val: dict[str, float] = field(default_factory=dict)
    steady_samples: int = 0  # samples trained after the first epoch...
    steady_seconds: float = 0.0  # ...and the train time they took (eval excluded)
    first_epoch_samples: int = 0  # fallback for one-epoch runs: samples after the first step...
    first_epoch_seconds: float = 0.0  # ...and their time
    stop_reason: str | None = None  # set by a callback that ended training early
    skipped_steps: int = 0  # steps skipped for a NaN or Inf loss (trainer.on_nonfinite=skip)
    nonfinite_seen: int = 0  # of them, those this process's engine counted and the loop reported
    train_seconds: float = 0.0  # time in train epochs, validation excluded
    logging_seconds: float = 0.0  # the part of it spent reading values and writing logs
    checkpoint_seconds: float = 0.0  # time spent saving checkpoints
    first_step_at: float | None = None  # unix time when this process's first step ended

    @property
    def train_samples_per_sec(self) -> float | None:
        """Steady state: after the first epoch, so tracing and compilation are not in it."""
        if self.steady_seconds > 0:
            return self.steady_samples / self.steady_seconds
        if self.first_epoch_seconds > 0:
            return self.first_epoch_samples / self.first_epoch_seconds
        return None


class StopRequest:
    """Set by a signal handler; the loop stops after the step under way, saving a checkpoint."""

    def __init__(self) -> None:
        self.signum: int | None = None


def fit(
    engine: Engine,
    trainer: TrainerSettings,
    logger: Logger,
    state: LoopState,
    histograms_every: int = 0,
    callbacks: Sequence[Callback] = (),
    stop: StopRequest | None = None,
    run_dir: Path | None = None,
) -> None:
    """Trains for `trainer.max_epochs` epochs or `trainer.max_steps` steps; validates each epoch.

    `callbacks` (the checkpointer among them) run at the loop's fixed points; one may end training
    after an epoch (`TrainingRun.stop`). `run_dir`: where callbacks and the profiler
    (`profile.steps`) may write (None: nowhere).
    """
    profiler = StepProfiler(engine, run_dir, state.step)
    try:
        with frozen_heap():
            _fit(
                engine, trainer, logger, state, histograms_every, callbacks, stop, run_dir, profiler
            )
    except BaseException:
        with contextlib.suppress(Exception):  # the run's own error is the one to report
            profiler.close(state.step, failed=True)
        raise
    profiler.close(state.step)


@contextlib.contextmanager
def frozen_heap() -> Iterator[None]:
    """Inside: Python's garbage collector leaves the objects that existed before alone
    (`gc.freeze`), and looks only at those made since.

    A run's process holds half a million objects or more before its first step (the frameworks,
    Hydra, the model, the data layer). Python collects its oldest generation when the objects
    that survived younger collections grow by a quarter of it, and that collection visits every
    one: 0.25-0.3 s on this CPU, the time of a whole epoch of a small model, at points no run
    chooses (a GRU's epochs went from 3.3 ms a step to 7.5-10 ms in the epoch where one fell:
    docs/performance.md, "Measured choices"). Frozen, those objects are not visited; garbage among
    them waits for the end of training, when they are unfrozen. Where something else froze
    objects before (`gc.get_freeze_count()`), the heap is left as it is."""
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _fit(
    engine: Engine,
    trainer: TrainerSettings,
    logger: Logger,
    state: LoopState,
    histograms_every: int,
    callbacks: Sequence[Callback],
    stop: StopRequest | None,
    run_dir: Path | None,
    profiler: StepProfiler,
) -> None:
    batch_size = engine.settings.data.batch_size
    num_batches = batches_per_epoch(trainer, engine.data.train.num_batches(batch_size))
    steps_per_epoch = math.ceil(num_batches / trainer.grad_accum_steps)
    first_epoch = state.epochs  # of this process: its time includes tracing and compiling
    engine.state.start_at(state.step)
    run = TrainingRun(
        engine,
        state,
        trainer,
        logger,
        check_finite=lambda: _check_finite(engine, trainer, state),
        run_dir=run_dir,
    )
    for callback in callbacks:
        callback.on_train_begin(run)
    for epoch in range(state.epochs, trainer.max_epochs):
        if _done(state, trainer) or state.stop_reason:
            break
        # A run resumed mid-epoch skips the batches it already trained on (same seeded order).
        skip = state.step_in_epoch
        total = steps_per_epoch - skip
        if trainer.max_steps > 0:
            total = min(total, trainer.max_steps - state.step)
        logger.start_epoch(epoch, trainer.max_epochs, total)
        for callback in callbacks:
            callback.on_epoch_begin(run, epoch)
        epoch_start = last_log = time.perf_counter()
        after_first_step = 0.0
        first_batch = 0
        epoch_samples = samples_since_log = 0
        # Lines are logged at multiples of log_every_n_steps and at epoch ends.
        unlogged = min(state.step % trainer.log_every_n_steps, skip)
        # debug=overfit: the same batches (epoch 0's first ones) every epoch.
        order = 0 if trainer.overfit_batches else epoch
        batches = itertools.islice(engine.train_batches(order), num_batches)
        groups = itertools.islice(step_groups(batches, trainer.grad_accum_steps), skip, None)
        # backend.steps_per_execution: several steps per engine call, ending at its multiples, so
        # logging and saving (at multiples of it too) see the state after the step they name.
        per_call = engine.settings.backend.steps_per_execution
        while True:
            # profile.steps: getting the batches, then the rest of the steps, marked apart.
            count = _chunk_size(state, trainer, per_call)
            with profiler.input(state.step, count):
                chunk = list(itertools.islice(groups, count))
            if not chunk:
                break
            with profiler.steps(state.step, len(chunk)):
                engine.train_steps(chunk)
                for group in chunk:
                    size = sum(engine.batch_size(batch) for batch in group)
                    state.step += 1
                    state.step_in_epoch += 1
                    epoch_samples += size
                    samples_since_log += size
                    unlogged += 1
                    if not after_first_step:
                        after_first_step = time.perf_counter()
                        first_batch = size
                        if state.first_step_at is None:
                            state.first_step_at = time.time()
                    logger.advance(1)
                    if state.step % trainer.log_every_n_steps == 0:
                        last_log = _log_train(
                            engine, trainer, logger, state, epoch, samples_since_log, last_log
                        )
                        samples_since_log = unlogged = 0
                    if histograms_every and state.step % histograms_every == 0:
                        started = time.perf_counter()
                        logger.log_histograms(engine.histograms(), state.step)
                        state.logging_seconds += time.perf_counter() - started
                    for callback in callbacks:
                        callback.on_step_end(run, state.step_in_epoch == steps_per_epoch)
            if stop is not None and stop.signum is not None:
                if unlogged:
                    _log_train(engine, trainer, logger, state, epoch, samples_since_log, last_log)
                for callback in callbacks:
                    callback.on_train_end(run)
                saved = any(callback.saves_checkpoints for callback in callbacks)
                raise Interrupted(stop.signum, state.step, saved=saved)
        if unlogged:
            last_log = _log_train(
                engine, trainer, logger, state, epoch, samples_since_log, last_log
            )
        epoch_end = time.perf_counter()
        state.train_seconds += epoch_end - epoch_start
        if epoch == first_epoch:
            state.first_epoch_samples = epoch_samples - first_batch
            state.first_epoch_seconds = epoch_end - after_first_step
        else:
            state.steady_samples += epoch_samples
            state.steady_seconds += epoch_end - epoch_start
        state.final_val = engine.evaluate(
            batches_per_epoch(trainer, engine.data.val.num_batches(batch_size), "val")
        )
        # Callbacks first: the values they add (a GAN's sample quality) are logged with the rest;
        # the line is logged even if one of them fails.
        try:
            for callback in callbacks:
                callback.on_validation_end(run, state.final_val)
        finally:
            logger.log_metrics("val", state.final_val, state.step, epoch)
            logger.end_epoch()
        if state.step_in_epoch < steps_per_epoch:
            break  # stopped by max_steps inside the epoch: it is not complete
        state.epochs = epoch + 1
        state.step_in_epoch = 0
        for callback in callbacks:
            callback.on_epoch_end(run, epoch)
    if state.stop_reason:
        log.info("%s", state.stop_reason)
    _check_finite(engine, trainer, state)
    for callback in callbacks:
        callback.on_train_end(run)


def _chunk_size(state: LoopState, trainer: TrainerSettings, per_call: int) -> int:
    """Steps for the next engine call: up to the next multiple of `per_call`, within max_steps."""
    size = per_call - state.step % per_call
    if trainer.max_steps > 0:
        size = min(size, trainer.max_steps - state.step)
    return max(size, 0)


def step_groups(batches: Iterable[Batch], size: int) -> Iterator[list[Batch]]:
    """Consecutive batches in lists of `size` (the last may be shorter): one optimizer step each."""
    iterator = iter(batches)
    while group := list(itertools.islice(iterator, size)):
        yield group


def _check_finite(
    engine: Engine,
    trainer: TrainerSettings,
    state: LoopState,
    record: tuple[int, int | None] | None = None,
) -> None:
    """Reports steps the engine skipped for a NaN or Inf loss; with on_nonfinite=stop, stops.
    `record`: the engine's non-finite record as just read with the logged values (else read).

    Raises:
        RunError: naming the first such step, before anything is saved after it.
    """
    count, first = record or engine.state.nonfinite_steps()
    if count <= state.nonfinite_seen:
        return
    new = count - state.nonfinite_seen
    state.nonfinite_seen = count
    state.skipped_steps += new
    broken = _nonfinite_weight(engine)
    if broken is not None:
        # Weights that are NaN or Inf make every later loss so too: skipping steps would skip
        # the rest of the run (and save the broken weights), so this stops with either setting.
        raise RunError(
            f"the weights became NaN or Inf during training ({broken}; the loss was NaN or Inf "
            f"from step {first}): an update with NaN or Inf gradients made them so, and "
            "skipping steps cannot mend them; the run stops and no checkpoint holds them; lower "
            "optimizer.lr or clip gradients with trainer.grad_clip_norm, and train again"
        )
    if trainer.on_nonfinite == "stop":
        raise RunError(
            f"the loss was NaN or Inf at step {first} (trainer.on_nonfinite=stop); the run stops "
            "and no checkpoint holds that step; lower optimizer.lr, clip gradients with "
            "trainer.grad_clip_norm, or skip such steps with trainer.on_nonfinite=skip"
        )
    log.warning(
        "skipped %d step(s) with a NaN or Inf loss (first at step %d; trainer.on_nonfinite=skip)",
        new,
        first,
    )


def _nonfinite_weight(engine: Engine) -> str | None:
    """The first model variable holding NaN or Inf, by path; None if all are finite.

    Read only after a step with a NaN or Inf loss: it copies every weight off the device.
    """
    weights, _ = engine.state.checkpoint_arrays()
    for path, value in weights.items():
        if np.issubdtype(value.dtype, np.inexact) and not np.isfinite(value).all():
            return path
    return None


def _done(state: LoopState, trainer: TrainerSettings) -> bool:
    return trainer.max_steps > 0 and state.step >= trainer.max_steps


def _log_train(
    engine: Engine,
    trainer: TrainerSettings,
    logger: Logger,
    state: LoopState,
    epoch: int,
    samples: int,
    since: float,
) -> float:
    started = time.perf_counter()
    values = engine.train_metrics()  # the device sync happens here, before the clock is read
    _check_finite(engine, trainer, state, engine.nonfinite_at_read)
    now = time.perf_counter()
    values["samples_per_sec"] = samples / max(now - since, 1e-9)
    state.final_train = values
    logger.log_metrics("train", values, state.step, epoch)
    # Reading the values and writing them. On an accelerator the read also waits for queued steps,
    # so there this is an upper bound of what logging costs.
    state.logging_seconds += time.perf_counter() - started
    return now
