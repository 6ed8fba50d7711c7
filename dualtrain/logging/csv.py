"""metrics.csv: metrics.jsonl's values in long form, one value per row, flushed as written.

Long form (`step,epoch,split,name,value`) keeps one header for the whole run, whatever metrics come.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dualtrain.logging.base import Logger
from dualtrain.settings import LoggerSettings

HEADER = ("step", "epoch", "split", "name", "value")


class CsvLogger(Logger):
    """Appends `step,epoch,split,name,value` rows to a CSV file, flushed as written.

    Args:
        path: the file (`metrics.csv` in the run directory); its header is written when new.
    """

    @classmethod
    def create(cls, run_dir: Path, backend: str, settings: LoggerSettings) -> CsvLogger:
        return cls(run_dir / "metrics.csv")

    def __init__(self, path: Path) -> None:
        new = not path.exists() or path.stat().st_size == 0
        self._file = path.open("a", encoding="utf-8", newline="")
        self._writer = csv.writer(self._file)
        if new:
            self._writer.writerow(HEADER)

    def log_metrics(self, split: str, metrics: Mapping[str, float], step: int, epoch: int) -> None:
        self._writer.writerows(
            (step, epoch, split, name, repr(float(v))) for name, v in metrics.items()
        )
        self._file.flush()

    def finalize(self, summary: Mapping[str, Any]) -> None:
        self._file.close()
