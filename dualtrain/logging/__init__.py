"""Loggers: one interface (plain numbers in), several sinks chosen from the `logger` group."""

from __future__ import annotations

import importlib
from pathlib import Path

from dualtrain.callbacks import create_target
from dualtrain.logging.base import Logger, LoggerGroup
from dualtrain.logging.console import format_summary
from dualtrain.settings import LoggerSettings

LOGGERS = {
    "jsonl": "dualtrain.logging.jsonl:JsonlLogger",
    "csv": "dualtrain.logging.csv:CsvLogger",
    "console": "dualtrain.logging.console:ConsoleLogger",
    "tensorboard": "dualtrain.logging.tensorboard:TensorBoardLogger",
    "mlflow": "dualtrain.logging.mlflow:MlflowLogger",
}
"""Logger name (an option of `configs/logger/`) -> `"module:class"`; a module is imported only
when its logger is chosen."""


def create_loggers(settings: LoggerSettings, run_dir: Path, backend: str) -> LoggerGroup:
    """Makes the loggers a run's config chose, then the user's own (`_target_` entries).

    Args:
        settings: the `logger` section of the config; `settings.loggers` names the loggers.
        run_dir: the run directory, where they write.
        backend: the run's backend, `torch` or `tf`.

    Returns:
        The loggers, as one.
    """
    loggers = []
    for name in settings.loggers:
        module, _, cls = LOGGERS[name].partition(":")
        logger_class: type[Logger] = getattr(importlib.import_module(module), cls)
        loggers.append(logger_class.create(run_dir, backend, settings))
    for name, spec in settings.targets.items():
        loggers.append(create_target(spec, f"logger.{name}", Logger, "my_loggers.PrintLogger"))
    return LoggerGroup(loggers)


__all__ = ["LOGGERS", "Logger", "LoggerGroup", "create_loggers", "format_summary"]
