"""The logger interface: every logger receives plain Python numbers, never framework tensors."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


class Logger:
    """Receives a run's metrics. All methods are optional; the default does nothing."""

    def start_epoch(self, epoch: int, max_epochs: int, total_steps: int) -> None:
        """Train epoch `epoch` (0-based) of `max_epochs`, `total_steps` steps long, begins."""

    def advance(self, steps: int) -> None:
        """`steps` more train steps ran (for progress display; no values are read)."""

    def log_metrics(self, split: str, metrics: Mapping[str, float], step: int, epoch: int) -> None:
        """One set of values of `split` (`train` or `val`) at global optimizer step `step`."""

    def end_epoch(self) -> None:
        """The train epoch ended."""

    def finalize(self, summary: Mapping[str, Any]) -> None:
        """The run ended (completed, interrupted or failed); `summary` is summary.json's content."""


class LoggerGroup(Logger):
    """Several loggers used as one."""

    def __init__(self, loggers: Sequence[Logger]) -> None:
        self.loggers = list(loggers)

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
