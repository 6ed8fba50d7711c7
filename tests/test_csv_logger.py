"""logger=csv in-process, without a framework (the CLI tests that train with it are slow)."""

from __future__ import annotations

import csv
from pathlib import Path

from dualtrain.logging.csv import HEADER, CsvLogger


def test_csv_rows_are_one_value_each_and_a_resumed_run_appends_without_a_header(
    tmp_path: Path,
) -> None:
    path = tmp_path / "metrics.csv"
    first = CsvLogger(path)
    first.log_metrics("train", {"loss": 0.5, "lr": 0.001}, step=2, epoch=0)
    first.finalize({})
    resumed = CsvLogger(path)  # checkpoint.resume=auto: the same file, one header
    resumed.log_metrics("val", {"accuracy": 1}, step=4, epoch=0)
    resumed.finalize({})
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows == [
        list(HEADER),
        ["2", "0", "train", "loss", "0.5"],
        ["2", "0", "train", "lr", "0.001"],
        ["4", "0", "val", "accuracy", "1.0"],
    ]
