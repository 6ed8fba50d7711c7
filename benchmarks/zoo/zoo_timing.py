"""A callback of benchmarks/zoo.py's own: the CPU time of each epoch's train steps.

The zoo compares systems by steady-state samples per second of wall time, which other processes
on the machine can take a share of; the process's CPU time over the same steps is less sensitive
to them. Added to every dualtrain run of the zoo (`callbacks=[zoo_timing]`); it writes
`zoo_timing.json` into the run directory at the end.
"""

from __future__ import annotations

import json
import time
from typing import Any

from dualtrain.callbacks import Callback, TrainingRun


class EpochCPUTime(Callback):
    """Per epoch: CPU and wall seconds from the epoch's start to the end of its last step
    (validation excluded, as in summary.json's train_samples_per_sec)."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, Any]] = []
        self._start: tuple[int, float, float] | None = None

    def on_epoch_begin(self, run: TrainingRun, epoch: int) -> None:
        self._start = (epoch, time.process_time(), time.perf_counter())

    def on_step_end(self, run: TrainingRun, epoch_ends: bool) -> None:
        if epoch_ends and self._start is not None:
            epoch, cpu, wall = self._start
            self.epochs.append(
                {
                    "epoch": epoch,
                    "cpu_seconds": time.process_time() - cpu,
                    "wall_seconds": time.perf_counter() - wall,
                }
            )
            self._start = None

    def on_train_end(self, run: TrainingRun) -> None:
        if run.run_dir is not None:
            record = {"epochs": self.epochs, "steady_samples": run.state.steady_samples}
            (run.run_dir / "zoo_timing.json").write_text(json.dumps(record, indent=2))
