"""The logger interface: every logger receives plain Python numbers, never framework tensors."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dualtrain.settings import LoggerSettings


class Logger:
    """Receives a run's metrics. All methods are optional; the default does nothing.

    A new logger (MLflow, W&B) is one module in `dualtrain/logging/` registered in `LOGGERS`
    (`dualtrain/logging/__init__.py`) and one config in `configs/logger/`.
    """

    @classmethod
    def create(cls, run_dir: Path, backend: str, settings: LoggerSettings) -> Logger:
        """The logger for a run that writes into `run_dir`."""
        raise NotImplementedError(f"{cls.__name__} does not implement create()")

    def log_hparams(
        self, hparams: Mapping[str, bool | int | float | str], config_yaml: str
    ) -> None:
        """The flattened config (`backend.name` included) and the composed config as YAML."""

    def start_epoch(self, epoch: int, max_epochs: int, total_steps: int) -> None:
        """Train epoch `epoch` (0-based) of `max_epochs`, `total_steps` steps long, begins."""

    def advance(self, steps: int) -> None:
        """`steps` more train steps ran (for progress display; no values are read)."""

    def log_metrics(self, split: str, metrics: Mapping[str, float], step: int, epoch: int) -> None:
        """One set of values of `split` (`train` or `val`) at global optimizer step `step`."""

    def log_histograms(self, arrays: Mapping[str, np.ndarray], step: int) -> None:
        """Weights and gradients by tag (`weights/<path>`, `gradients/<path>`), as NumPy arrays."""

    def end_epoch(self) -> None:
        """The train epoch ended."""

    def finalize(self, summary: Mapping[str, Any]) -> None:
        """The run ended (completed, interrupted or failed); `summary` is summary.json's content."""


class LoggerGroup(Logger):
    """Several loggers used as one."""

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
