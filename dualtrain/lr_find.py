"""The learning-rate finder: `mode=lr_find`, and `optimizer.lr=auto` before training.

A range test (Smith, "Cyclical learning rates for training neural networks", 2015; as in
Lightning's `Tuner.lr_find` and fastai's `lr_find`): from fresh weights, one optimizer step per
learning rate, the rates rising from `lr_find.min_lr` to `lr_find.max_lr` in equal ratios, on the
train batches in their usual seeded order. Each step's loss is read and smoothed by an
exponential moving average (bias-corrected, as Adam's moments are); the sweep stops once the
smoothed loss exceeds `lr_find.stop_factor` times its lowest value, or turns NaN. The suggestion
is the rate where the smoothed loss falls fastest per ratio of rates (the steepest descent
against log lr), past the first tenth of the sweep (where the loss barely moves and its noise
could pass for a descent) and before its lowest point. It reads the same average run forwards
and then backwards, which has no lag: the forward one trails the losses by about
beta / (1 - beta) steps, which moved its steepest point up by several times (docs/training.md,
"Finding a learning rate").

The sweep runs on an engine of its own, built with a constant rate (Keras keeps it in a
variable, which the tf graph and the torch captured step read at every call: setting it changes
no graph). Training then builds its engine with the suggestion, as a run with that
`optimizer.lr` would: fresh weights, optimizer state and random streams, and a schedule
(`scheduler=`) that starts from the suggestion.
"""

from __future__ import annotations

import dataclasses
import gc
import itertools
import logging
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dualtrain import distributed
from dualtrain.errors import RunError
from dualtrain.loop import step_groups
from dualtrain.plan import batches_per_epoch
from dualtrain.settings import SchedulerSettings, Settings

if TYPE_CHECKING:
    from dualtrain.data import DataSplits
    from dualtrain.engines.base import Batch, Engine
    from dualtrain.recipe import Recipe

log = logging.getLogger("dualtrain")

# The share of the sweep's first steps the suggestion skips: the loss barely moves there, and
# the forward average, over few steps yet, is noisy (fastai skips the first tenth too; Lightning
# the first 10 of 100 steps).
SKIPPED_SHARE = 0.1


def rates(min_lr: float, max_lr: float, steps: int) -> np.ndarray:
    """The sweep's learning rates: `steps` of them from min_lr to max_lr, in equal ratios."""
    return np.geomspace(min_lr, max_lr, steps)


def smoothed(losses: list[float], beta: float) -> list[float]:
    """The losses' exponential moving average, divided by (1 - beta^n) so that its first values
    are not pulled towards 0 (as Adam's moments are)."""
    average, out = 0.0, []
    for n, loss in enumerate(losses, start=1):
        average = beta * average + (1 - beta) * loss
        out.append(average / (1 - beta**n))
    return out


def centered(losses: list[float], beta: float) -> list[float]:
    """The moving average run forwards, then backwards over the result: as smooth, without the
    forward average's lag of about beta / (1 - beta) steps (49 at 0.98). NaN stays NaN."""
    n = next((i for i, loss in enumerate(losses) if not math.isfinite(loss)), len(losses))
    both = smoothed(smoothed(losses[:n], beta)[::-1], beta)[::-1]
    return both + [math.nan] * (len(losses) - n)


def suggestion_index(lrs: list[float], smooth: list[float]) -> int | None:
    """Where `smooth` falls fastest against log lr, between the first tenth of the sweep and
    its lowest point (past it the loss is diverging, and a spike's fall would pass for a
    descent); None with fewer than 3 points there."""
    start = max(1, math.ceil(len(lrs) * SKIPPED_SHARE))
    values = np.array(smooth, dtype="float64")
    if not np.isfinite(values).any():
        return None
    end = int(np.nanargmin(values)) + 1
    if end - start < 3:
        return None
    slope = np.gradient(values[start:end], np.log(lrs[start:end]))
    return start + int(np.argmin(slope))


def sweep(engine: Engine, settings: Settings) -> dict[str, Any]:
    """Runs the range test on `engine` (built with a constant rate) and returns what
    lr_find.json holds."""
    find = settings.lr_find
    planned = rates(find.min_lr, find.max_lr, find.steps)
    lrs: list[float] = []
    losses: list[float] = []
    smooth: list[float] = []
    stopped = None
    skipped = engine.state.nonfinite_steps()[0]
    for lr, group in zip(planned, _step_batches(engine, settings), strict=False):
        engine.state.set_learning_rate(float(lr))
        engine.train_step(group)
        values = engine.train_metrics()  # this step's loss: the mean since the last read
        assert engine.nonfinite_at_read is not None
        # A step with a NaN or Inf loss changes nothing and is left out of the mean: count it.
        finite = engine.nonfinite_at_read[0] == skipped
        lrs.append(values["lr"])  # read back from the optimizer: the rate the step used
        losses.append(values["loss"] if finite else math.nan)
        smooth = smoothed(losses, find.smoothing) if finite else [*smooth, math.nan]
        if not finite:
            stopped = f"the loss was NaN or Inf at step {len(losses)} (lr {lr:.3g})"
            break
        if find.stop_factor is not None and smooth[-1] > find.stop_factor * min(smooth):
            stopped = (
                f"the smoothed loss passed {find.stop_factor:g}x its lowest at step "
                f"{len(losses)} (lr {lr:.3g})"
            )
            break
    # The forward average stops the sweep as it goes; the suggestion, made once the sweep is
    # over, reads the centered one (docs/training.md: the forward one's lag of ~49 steps put its
    # steepest point 5-7x above the recipes' tuned rates in 100-step sweeps).
    center = centered(losses, find.smoothing)
    index = suggestion_index(lrs, center)
    return {
        "backend": settings.backend.name,
        "recipe": settings.recipe.name,
        "suggestion": lrs[index] if index is not None else None,
        "suggestion_step": index,
        "stopped_early": stopped,
        "settings": {
            **dataclasses.asdict(find),
            "optimizer": settings.optimizer.name,
            "batch_size": settings.data.batch_size,
            "grad_accum_steps": settings.trainer.grad_accum_steps,
            "seed": settings.seed,
        },
        "lrs": lrs,
        "losses": losses,
        "smoothed_losses": smooth,
        "centered_losses": center,
    }


def _step_batches(engine: Engine, settings: Settings) -> Iterator[list[Batch]]:
    """The batches of each optimizer step, epoch after epoch, in the training run's order (one
    step per call: the rate changes between steps)."""
    trainer = settings.trainer
    per_epoch = batches_per_epoch(trainer, engine.data.train.num_batches(settings.data.batch_size))
    for epoch in itertools.count():
        order = 0 if trainer.overfit_batches else epoch
        batches = itertools.islice(engine.train_batches(order), per_epoch)
        empty = True
        for group in step_groups(batches, trainer.grad_accum_steps):
            empty = False
            yield group
        if empty:
            return


def find(
    settings: Settings,
    recipe: Recipe,
    data: DataSplits,
    prepare: Callable[[Engine], None] = lambda engine: None,
) -> dict[str, Any]:
    """The range test on an engine of its own (discarded after it); `prepare` readies the engine
    first (init_from's weights)."""
    from dualtrain.engines import engine_class

    if distributed.under_torchrun():
        raise RunError(
            "the learning-rate finder runs in one process; find the rate with mode=lr_find "
            "without torchrun and set optimizer.lr=<suggestion>"
        )
    constant = dataclasses.replace(
        settings,
        optimizer=dataclasses.replace(settings.optimizer, lr=settings.lr_find.min_lr),
        scheduler=SchedulerSettings(),
    )
    engine = engine_class(settings.backend.name)(constant, recipe, data)
    if len(engine.state.optimizers) != 1:
        raise RunError(
            f"the learning-rate finder sweeps one optimizer's rate; recipe {recipe.name} has "
            f"{len(engine.state.optimizers)} phases, each with its own: set optimizer.lr"
        )
    prepare(engine)
    log.info(
        "lr_find: %d steps from lr %g to %g on %s",
        settings.lr_find.steps,
        settings.lr_find.min_lr,
        settings.lr_find.max_lr,
        settings.backend.name,
    )
    result = sweep(engine, settings)
    del engine
    gc.collect()  # the sweep's model and graphs, before training builds its own
    return result


def write(run_dir: Path, result: dict[str, Any]) -> None:
    """lr_find.json and lr_find.png in `run_dir`."""
    from dualtrain.run import write_json

    run_dir.mkdir(parents=True, exist_ok=True)
    plot(result, run_dir / "lr_find.png")

    def json_number(value: Any) -> Any:  # NaN, which JSON has no word for, as null
        return None if isinstance(value, float) and not math.isfinite(value) else value

    lists = ("lrs", "losses", "smoothed_losses", "centered_losses")
    write_json(
        run_dir / "lr_find.json",
        {k: [json_number(v) for v in result[k]] if k in lists else result[k] for k in result},
    )


def plot(result: dict[str, Any], path: Path) -> None:
    """Loss against learning rate on a log axis: each step's loss and the smoothed one, the
    suggestion marked."""
    from dualtrain.plots import pyplot

    plt = pyplot()
    lrs, smooth = np.array(result["lrs"]), np.array(result["centered_losses"])
    figure, axis = plt.subplots(figsize=(7, 4.2))
    axis.plot(lrs, result["losses"], color="0.8", linewidth=0.8, label="loss of the step")
    forward = result["smoothed_losses"]
    axis.plot(lrs, forward, color="C1", linewidth=1, label="moving average (stops the sweep)")
    axis.plot(lrs, smooth, color="C0", linewidth=1.8, label="centered average (suggests)")
    axis.set_xscale("log")
    finite = smooth[np.isfinite(smooth)]
    if finite.size:
        # From below the lowest loss to above the first plateau: a diverging end would flatten
        # everything else.
        low = float(np.nanmin([finite.min(), *forward]))
        high = float(finite[: int(finite.argmin()) + 1].max())
        axis.set_ylim(low - 0.1 * (high - low), high + 0.3 * (high - low) + 1e-12)
    title = f"lr_find: {result['recipe']} on {result['backend']}"
    if result["suggestion"] is not None:
        at = result["suggestion_step"]
        axis.axvline(result["suggestion"], color="C3", linestyle="--", linewidth=1)
        axis.plot([lrs[at]], [smooth[at]], "o", color="C3", label="suggestion")
        title += f", suggestion {result['suggestion']:.2g}"
    axis.set_title(title)
    axis.set_xlabel("learning rate")
    axis.set_ylabel("train loss")
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(loc="best", fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def suggested(result: dict[str, Any]) -> float:
    """The suggestion; RunError when the sweep gave none."""
    if result["suggestion"] is None:
        raise RunError(
            f"the learning-rate finder found no rate: {result['stopped_early'] or 'too few steps'}"
            f" after {len(result['losses'])} steps; lower lr_find.min_lr, or see lr_find.png"
        )
    return float(result["suggestion"])


def run(settings: Settings) -> dict[str, Any]:
    """mode=lr_find: the range test alone; writes lr_find.json and lr_find.png, trains nothing
    else and saves no checkpoint."""
    from dualtrain.data import load_data
    from dualtrain.engines import select_backend
    from dualtrain.recipe import load_recipe
    from dualtrain.run import init_weights

    select_backend(settings.backend.name, import_framework=False)
    data = load_data(settings.data, settings.seed, task=settings.recipe.task)
    select_backend(settings.backend.name)
    result = find(settings, load_recipe(settings.recipe), data, init_weights(settings))
    write(settings.run_dir, result)
    lr = suggested(result)
    print(
        f"dualtrain lr_find of {settings.recipe.name} on {settings.backend.name}: suggested "
        f"optimizer.lr={lr:.3g} ({settings.run_dir / 'lr_find.png'})"
    )
    return result
