"""The logger interface: every logger receives plain Python numbers, never framework tensors."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dualtrain.settings import LoggerSettings


class Logger:
    """Receives a run's metrics. All methods but `create` are optional; the default does nothing.

    A new logger (MLflow, W&B) is one module in `dualtrain/logging/` registered in `LOGGERS`
    (`dualtrain/logging/__init__.py`) and one config in `configs/logger/`.
    """

    @classmethod
    def create(cls, run_dir: Path, backend: str, settings: LoggerSettings) -> Logger:
        """Makes the logger of a run.

        Args:
            run_dir: the run directory, where a logger writes its files.
            backend: the run's backend, `torch` or `tf`.
            settings: the `logger` section of the config.

        Returns:
            The logger.
        """
        raise NotImplementedError(f"{cls.__name__} does not implement create()")

    def log_hparams(
        self, hparams: Mapping[str, bool | int | float | str], config_yaml: str
    ) -> None:
        """Receives the run's config, once, before training.

        Args:
            hparams: the composed config flattened to dotted keys (`backend.name` included).
            config_yaml: the composed config as YAML.
        """

    def start_epoch(self, epoch: int, max_epochs: int, total_steps: int) -> None:
        """A train epoch begins.

        Args:
            epoch: the epoch, 0-based.
            max_epochs: the run's number of epochs.
            total_steps: the steps this epoch will take.
        """

    def advance(self, steps: int) -> None:
        """More train steps ran (for a progress display: no values are read).

        Args:
            steps: how many.
        """

    def log_metrics(self, split: str, metrics: Mapping[str, float], step: int, epoch: int) -> None:
        """Receives one set of values.

        Args:
            split: `train` or `val`.
            metrics: the values by name (`loss`, `lr`, `samples_per_sec` for train; `loss` and
                the recipe's metrics for val), as Python floats.
            step: the global optimizer step.
            epoch: the epoch, 0-based.
        """

    def log_histograms(self, arrays: Mapping[str, np.ndarray], step: int) -> None:
        """Receives the weights and gradients, every `logger.histograms_every` steps.

        Args:
            arrays: NumPy arrays by tag (`weights/<path>`, `gradients/<path>`).
            step: the global optimizer step.
        """

    def end_epoch(self) -> None:
        """The train epoch ended."""

    def finalize(self, summary: Mapping[str, Any]) -> None:
        """The run ended: completed, interrupted or failed. The logger closes its files.

        Args:
            summary: what summary.json holds.
        """


class LoggerGroup(Logger):
    """Several loggers used as one: each call goes to each logger, in order.

    Args:
        loggers: the loggers.
    """

    def __init__(self, loggers: Sequence[Logger]) -> None:
        self.loggers = list(loggers)

    def log_hparams(
        self, hparams: Mapping[str, bool | int | float | str], config_yaml: str
    ) -> None:
        for logger in self.loggers:
            logger.log_hparams(hparams, config_yaml)

    def log_histograms(self, arrays: Mapping[str, np.ndarray], step: int) -> None:
        for logger in self.loggers:
            logger.log_histograms(arrays, step)

    def start_epoch(self, epoch: int, max_epochs: int, total_steps: int) -> None:
        for logger in self.loggers:
            logger.start_epoch(epoch, max_epochs, total_steps)

    def advance(self, steps: int) -> None:
        for logger in self.loggers:
            logger.advance(steps)

    def log_metrics(self, split: str, metrics: Mapping[str, float], step: int, epoch: int) -> None:
        for logger in self.loggers:
            logger.log_metrics(split, metrics, step, epoch)

    def end_epoch(self) -> None:
        for logger in self.loggers:
            logger.end_epoch()

    def finalize(self, summary: Mapping[str, Any]) -> None:
        for logger in self.loggers:
            logger.finalize(summary)
