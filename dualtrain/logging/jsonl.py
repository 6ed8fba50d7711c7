"""metrics.jsonl: one JSON object per line, flushed as it is written.

The keys are README's ("What a run gives you"), the same on both backends.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dualtrain.logging.base import Logger
from dualtrain.settings import LoggerSettings


class JsonlLogger(Logger):
    """Appends one JSON object per `log_metrics` call to a file, flushed as written.

    Args:
        path: the file (`metrics.jsonl` in the run directory); a resumed run appends to it.
        backend: the run's backend, written into every line.
    """

    @classmethod
    def create(cls, run_dir: Path, backend: str, settings: LoggerSettings) -> JsonlLogger:
        return cls(run_dir / "metrics.jsonl", backend)

    def __init__(self, path: Path, backend: str) -> None:
        self.path = path
        self.backend = backend
        # Appended, not truncated: a resumed run continues the same file.
        self._file = path.open("a", encoding="utf-8")

    def log_metrics(self, split: str, metrics: Mapping[str, float], step: int, epoch: int) -> None:
        line = {
            "step": step,
            "epoch": epoch,
            "split": split,
            "backend": self.backend,
            "time": time.time(),
        }
        line.update({name: float(value) for name, value in metrics.items()})
        # One write per line, then flush: a crash leaves whole lines only.
        try:
            self._file.write(json.dumps(line) + "\n")
            self._file.flush()
        except OSError as err:  # a full disk: the error names the file (a flush's does not)
            raise OSError(err.errno, err.strerror, str(self.path)) from err

    def finalize(self, summary: Mapping[str, Any]) -> None:
        self._file.close()
