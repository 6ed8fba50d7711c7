"""The two kinds of error a user sees, and the exit code each one ends the run with."""

from __future__ import annotations


class DualtrainError(Exception):
    """An error for a person: one line that says what is wrong and what would be right."""

    exit_code = 1


class ConfigError(DualtrainError):
    """A bad config value or usage, found before any framework is imported (exit code 2)."""

    exit_code = 2


class Interrupted(DualtrainError):
    """SIGINT (Ctrl-C) or SIGTERM (preemption) stopped the run after a step and a checkpoint."""

    def __init__(self, signum: int, step: int, saved: bool) -> None:
        import signal

        name = signal.Signals(signum).name
        saved_text = "a checkpoint is saved; " if saved else ""
        super().__init__(
            f"interrupted by {name} after step {step}; {saved_text}summary.json records where "
            "the run stopped; continue with checkpoint.resume=auto and the same hydra.run.dir"
        )
        self.exit_code = 128 + signum


class RunError(DualtrainError):
    """A failure while running: missing or bad data, a recipe that does not fit (exit code 1)."""

    exit_code = 1


def first_line(err: BaseException, limit: int | None = None) -> str:
    """The first non-blank line of an exception's message (its type's name where it has none),
    at most `limit` characters: another library's error inside dualtrain's one-line message."""
    line = next((x.strip() for x in str(err).splitlines() if x.strip()), type(err).__name__)
    return line[:limit]
