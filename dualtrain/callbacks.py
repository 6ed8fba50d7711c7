"""Callbacks: code that runs at fixed points of the loop, on either backend.

Checkpointing and early stopping are callbacks themselves; a recipe or a user adds their own from
config, as Hydra-style `_target_` entries of the `callbacks` group:

```yaml
# my_recipes/callbacks/print_lr.yaml
print_lr:
  _target_: my_callbacks.PrintLr    # a subclass of dualtrain.callbacks.Callback
  every: 100                        # keyword arguments of its constructor
```

```bash
python -m dualtrain --config-dir my_recipes callbacks=[early_stopping,print_lr]
```

A callback sees the run through `TrainingRun`: the engine (model, optimizer), the loop's state
(step, epochs, last values) and the logger; it may ask the run to stop after the current epoch.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from dualtrain.errors import ConfigError

if TYPE_CHECKING:
    from dualtrain.engines.base import Engine
    from dualtrain.logging import Logger
    from dualtrain.loop import LoopState
    from dualtrain.settings import TrainerSettings


@dataclass
class TrainingRun:
    """What a callback sees of the run under way.

    Attributes:
        engine: the engine: the model, its optimizers and the data, on the run's backend.
        state: the loop's state: global step, epoch, the last logged values.
        trainer: the `trainer` section of the config.
        logger: the run's loggers, as one.
        check_finite: raises if a NaN or Inf loss must stop the run.
        run_dir: where a callback may write files of its own; None when the run writes nothing
            (`debug=fast_dev_run`, or a rank other than 0).
    """

    engine: Engine
    state: LoopState
    trainer: TrainerSettings
    logger: Logger
    check_finite: Callable[[], None]
    run_dir: Path | None = None

    def stop(self, reason: str) -> None:
        """Ends training after the current epoch.

        Args:
            reason: why, for the log and summary.json.
        """
        self.state.stop_reason = reason


class Callback:
    """Hooks called by the loop; a subclass overrides those it needs (the others do nothing).

    The loop calls them in this order: `on_train_begin`; then for each epoch `on_epoch_begin`,
    `on_step_end` after every optimizer step, `on_validation_end` with the val metrics, and
    `on_epoch_end` (a complete epoch only); `on_train_end` at the end, also after Ctrl-C or
    SIGTERM. Each gets the run under way as a `TrainingRun`.
    """

    saves_checkpoints = False  # True for the checkpointer: an interrupted run says it saved

    def on_train_begin(self, run: TrainingRun) -> None:
        """Training begins; a resumed run begins at its restored step (`run.state.step`).

        Args:
            run: the run under way.
        """

    def on_epoch_begin(self, run: TrainingRun, epoch: int) -> None:
        """A train epoch begins.

        Args:
            run: the run under way.
            epoch: the epoch, 0-based.
        """

    def on_step_end(self, run: TrainingRun, epoch_ends: bool) -> None:
        """An optimizer step ended; `run.state.step` counts it.

        Args:
            run: the run under way.
            epoch_ends: whether it was the epoch's last step.
        """

    def on_validation_end(self, run: TrainingRun, metrics: dict[str, float]) -> None:
        """Validation ended.

        Args:
            run: the run under way.
            metrics: the val values by name (`loss`, the recipe's metrics). Values a callback
                adds are logged with them (as `val/<name>`) and recorded in summary.json, as with
                Keras's `logs`.
        """

    def on_epoch_end(self, run: TrainingRun, epoch: int) -> None:
        """A complete train epoch ended, its validation included.

        Args:
            run: the run under way.
            epoch: the epoch, 0-based.
        """

    def on_train_end(self, run: TrainingRun) -> None:
        """Training ended: completed, stopped by a callback, or interrupted by Ctrl-C or SIGTERM.

        Args:
            run: the run under way.
        """


class EarlyStopping(Callback):
    """Stops training when a val metric has not improved for `patience` validations.

    Args:
        monitor: `val/<name>`, a value the recipe logs (val/loss, val/accuracy).
        mode: `min` or `max`: whether lower or higher is better.
        patience: validations without improvement before the run stops.
        min_delta: the least change that counts as an improvement.

    Raises:
        ConfigError: a `monitor` that is not a val value, or a bad `mode` or `patience`.
    """

    def __init__(
        self,
        monitor: str = "val/loss",
        mode: str = "min",
        patience: int = 3,
        min_delta: float = 0.0,
    ) -> None:
        split, _, name = monitor.partition("/")
        if split != "val" or not name:
            raise ConfigError(
                "callbacks.early_stopping.monitor must be a val value such as val/loss; "
                f"got {monitor!r}"
            )
        if mode not in ("min", "max"):
            raise ConfigError(f"callbacks.early_stopping.mode must be min or max; got {mode!r}")
        if not isinstance(patience, int) or patience < 1:
            raise ConfigError(
                f"callbacks.early_stopping.patience must be a positive integer; got {patience!r}"
            )
        self.monitor, self.name, self.mode = monitor, name, mode
        self.patience, self.min_delta = patience, abs(float(min_delta))
        self.best = math.inf if mode == "min" else -math.inf
        self.wait = 0

    def on_validation_end(self, run: TrainingRun, metrics: dict[str, float]) -> None:
        if self.name not in metrics:
            raise ConfigError(
                f"callbacks.early_stopping.monitor={self.monitor} is not logged; choose one of "
                + ", ".join(f"val/{n}" for n in metrics)
            )
        value = metrics[self.name]
        better = (
            value < self.best - self.min_delta
            if self.mode == "min"
            else value > self.best + self.min_delta
        )
        if better:
            self.best, self.wait = value, 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            run.stop(
                f"early stopping: {self.monitor} did not improve by more than {self.min_delta:g} "
                f"for {self.patience} validations (best {self.best:.6g})"
            )


def create_callbacks(specs: dict[str, dict[str, Any]]) -> list[Callback]:
    """Builds the callbacks of the `callbacks` config.

    Args:
        specs: callback name -> `{"_target_": "package.module.Class", **keyword_arguments}`.

    Returns:
        The callbacks, in the order of `specs`.

    Raises:
        ConfigError: a target that cannot be imported or is not a `Callback`, or keyword
            arguments its constructor does not take.
    """
    return [
        create_target(spec, f"callbacks.{name}", Callback, "dualtrain.callbacks.EarlyStopping")
        for name, spec in specs.items()
    ]


_T = TypeVar("_T")


def create_target(spec: dict[str, Any], label: str, base: type[_T], example: str) -> _T:
    """`spec["_target_"](**the other keys of spec)`, a subclass of `base`, as Hydra's `_target_`
    entries make it; `label` names the config entry in errors (e.g. callbacks.print_lr).

    Raises:
        ConfigError: for a target that cannot be imported, is not a `base` class, or does not
            take those keyword arguments.
    """
    target = spec.get("_target_")
    module_name, _, attribute = str(target).rpartition(".")
    what = f"{base.__module__}.{base.__name__}"
    try:
        cls = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError, ValueError) as err:
        raise ConfigError(
            f"{label}._target_={target} cannot be imported; give a dotted path to a "
            f"{base.__name__} class, e.g. {example}"
        ) from err
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ConfigError(f"{label}._target_={target} is not a {what} class")
    kwargs = {k: v for k, v in spec.items() if k != "_target_"}
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ConfigError(f"{label}: {err}") from err
