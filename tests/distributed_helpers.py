"""Callbacks that the distributed tests put into their runs (`+callbacks.<name>._target_=...`):
each rank dumps its final weights, and one rank dies or hangs at a chosen step."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from dualtrain.callbacks import Callback, TrainingRun


def this_rank() -> int:
    """torchrun's RANK, or the index of a tf.distribute worker in TF_CONFIG; 0 alone."""
    if "RANK" in os.environ:
        return int(os.environ["RANK"])
    if "TF_CONFIG" in os.environ:
        return int(json.loads(os.environ["TF_CONFIG"])["task"]["index"])
    return 0


class DumpWeights(Callback):
    """At the end of training, every rank writes its model weights to <directory>/rank-<r>.npz."""

    def __init__(self, directory: str) -> None:
        self.directory = Path(directory)

    def on_train_end(self, run: TrainingRun) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        model, _ = run.engine.state.checkpoint_arrays()
        np.savez(self.directory / f"rank-{this_rank()}.npz", **model)


class Fault(Callback):
    """On `rank`, after optimizer step `step` of torchrun attempt `attempt`: `exit` ends the
    process at once (as a crash would), `hang` stops it answering (as a stuck host would)."""

    def __init__(self, rank: int, step: int, action: str, attempt: int = 0) -> None:
        self.rank, self.step, self.action, self.attempt = rank, step, action, attempt

    def on_step_end(self, run: TrainingRun, epoch_ends: bool) -> None:
        restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
        if this_rank() != self.rank or run.state.step != self.step or restart != self.attempt:
            return
        if self.action == "exit":
            os._exit(17)
        time.sleep(3600)  # hang: the test kills the process
