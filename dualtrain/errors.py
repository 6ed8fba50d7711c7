"""The two kinds of error a user sees, and the exit code each one ends the run with."""

from __future__ import annotations


class DualtrainError(Exception):
    """An error for a person: one line that says what is wrong and what would be right."""

    exit_code = 1


class ConfigError(DualtrainError):
    """A bad config value or usage, found before any framework is imported (exit code 2)."""

    exit_code = 2


class RunError(DualtrainError):
    """A failure while running: missing or bad data, a recipe that does not fit (exit code 1)."""

    exit_code = 1
