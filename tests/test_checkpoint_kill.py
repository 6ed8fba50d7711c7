"""SIGKILL at random moments while a run saves a checkpoint every step: the newest complete
checkpoint always loads, and `checkpoint.resume=auto` continues from it.

Process start-up (importing Keras and a framework, about 7 s on 2 CPU cores) dominates, so the
kills are chained: every run after the first is itself a `resume=auto` run of the same directory,
which must log that it resumed from exactly the checkpoint just checked and then save newer ones
before it is killed in turn; after the last kill a resume run trains to the end (exit 0,
"completed"). One such chain per backend.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from dualtrain.checkpoint import newest_checkpoints, read_checkpoint
from dualtrain.errors import RunError
from tests.conftest import REPO, run_cli

# Every test here trains in subprocesses (a framework start-up each): the full suite only.
pytestmark = pytest.mark.slow

# Tiny and checkpoint-heavy: 4 steps of 64 per epoch, a save after every step and every epoch.
RUN = [
    "data=synthetic",
    "data.num_samples=256",
    "logger=[jsonl]",
    "logger.progress=false",
    "checkpoint.every_n_steps=1",
    "checkpoint.resume=auto",
]
STEPS_PER_EPOCH = 4  # 204 train samples (80% of 256), batch 64
KILLS = 4  # per backend: 2 at random moments, 2 aimed at a save
MAX_DELAY_S = 1.0  # the kill comes 0 to 1 s after the process's first checkpoint...
SAVE_DELAY_S = 0.005  # ...and every other one then waits for a save to start, and 0 to 5 ms more
WAIT_S = 180  # for a process's first checkpoint
RESUMED = re.compile(r"resumed from (\S+) \(written by \w+\): step (\d+), epoch (\d+)")
ENV = {"TF_CPP_MIN_LOG_LEVEL": "2"}


def newest_step_name(checkpoints: Path) -> int:
    """The highest N of the `step-N` directories (they appear by rename, so only whole)."""
    try:
        names = os.listdir(checkpoints)
    except FileNotFoundError:
        return -1
    return max((int(n[5:]) for n in names if n.startswith("step-")), default=-1)


def leftovers(checkpoints: Path) -> set[str]:
    """What interrupted saves leave: `.step-N.tmp-PID`, `.step-N.old-PID`, `.last.tmp`."""
    if not checkpoints.is_dir():
        return set()
    return {p.name for p in checkpoints.iterdir() if p.name.startswith(".")}


def kill_chain(backend: str, run_dir: Path, seed: str) -> list[dict[str, Any]]:
    """Kills KILLS resume=auto runs of `run_dir` in turn, checking after each kill; then lets
    one resume run finish. Returns what each kill left behind."""
    rng = random.Random(seed)
    checkpoints = run_dir / "checkpoints"
    resumed_step: int | None = None  # the step the next run must resume from
    kills: list[dict[str, Any]] = []
    for number in range(KILLS):
        log = run_dir.parent / f"{run_dir.name}-{number}.log"
        before = leftovers(checkpoints)
        with log.open("w") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "dualtrain", f"backend={backend}", *RUN,
                 "trainer.max_epochs=100000", f"hydra.run.dir={run_dir}"],
                cwd=REPO, env={**os.environ, **ENV}, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            # Its first checkpoint: one past the step it resumed from.
            start = -1 if resumed_step is None else resumed_step
            deadline = time.monotonic() + WAIT_S
            while newest_step_name(checkpoints) <= start:
                assert proc.poll() is None, f"run {number} exited early:\n{log.read_text()[-3000:]}"
                assert time.monotonic() < deadline, f"no checkpoint after {WAIT_S} s"
                time.sleep(0.005)
            time.sleep(rng.uniform(0, MAX_DELAY_S))
            if number % 2:  # aim at a save: its temporary directory exists while files are written
                tmp = f".tmp-{proc.pid}"
                deadline = time.monotonic() + 10
                while proc.poll() is None and time.monotonic() < deadline:
                    if any(name.endswith(tmp) for name in os.listdir(checkpoints)):
                        break
                    time.sleep(0.001)
                time.sleep(rng.uniform(0, SAVE_DELAY_S))
            assert proc.poll() is None, f"run {number} exited early:\n{log.read_text()[-3000:]}"
            proc.send_signal(signal.SIGKILL)
            assert proc.wait(timeout=30) == -signal.SIGKILL
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
        text = log.read_text()
        if resumed_step is not None:
            match = RESUMED.search(text)
            assert match, f"run {number} did not resume:\n{text[-3000:]}"
            assert int(match.group(2)) == resumed_step, match.group(0)

        found = newest_checkpoints(checkpoints)
        assert found, f"no complete checkpoint after kill {number}"
        newest = read_checkpoint(found[0])  # raises RunError if it does not load
        # A kill inside a save leaves the previous checkpoint: never older than the resumed one.
        assert newest.step >= (resumed_step or 1)
        unreadable = []
        for directory in found[1:]:
            try:
                read_checkpoint(directory)
            except RunError as err:
                unreadable.append(str(err))
        kills.append({
            "kill": number, "newest": found[0].name, "step": newest.step,
            "mid_save": sorted(leftovers(checkpoints) - before), "older_unreadable": unreadable,
        })  # fmt: skip
        resumed_step = newest.step

    # The last kill, too, is followed by a resume run, and this one trains to the end.
    assert resumed_step is not None
    epochs = int(read_checkpoint(newest_checkpoints(checkpoints)[0]).trainer["epochs"]) + 2
    result = run_cli(
        f"backend={backend}", *RUN, f"trainer.max_epochs={epochs}", f"hydra.run.dir={run_dir}",
        env=ENV, timeout=WAIT_S,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    match = RESUMED.search(result.stdout + result.stderr)
    assert match and int(match.group(2)) == resumed_step, result.stdout[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert (summary["steps"], summary["epochs"]) == (epochs * STEPS_PER_EPOCH, epochs)
    assert read_checkpoint(checkpoints / "last").step == epochs * STEPS_PER_EPOCH
    return kills


@pytest.mark.parametrize("backend", ["torch", "tf"])
def test_sigkill_while_saving_leaves_a_checkpoint_that_resumes(
    backend: str, tmp_path: Path
) -> None:
    kills = kill_chain(backend, tmp_path / "run", backend)
    assert len(kills) == KILLS
    # Shown with -s: how many kills landed inside a save, told by what the save left behind
    # (its `.step-N.tmp-PID` directory, `.old-PID` or `.last.tmp`; see `leftovers`).
    mid_save = [k for k in kills if k["mid_save"]]
    print(f"\n{backend}: {len(kills)} kills, {len(mid_save)} inside a save")
    for kill in kills:
        print(json.dumps(kill))
    # Without enough of them the test would pass without testing a kill inside a save. Measured
    # with 10 kills per backend on 2 shared cores (load average 2 to 4): 4 to 6 inside a save,
    # among them every aimed one, each leaving a `.step-N.tmp-PID` directory; with these 4 (load
    # average 11): the 2 aimed ones on each backend. The threshold, half of the aimed kills,
    # leaves room for a machine so slow that the 0-5 ms wait after a save has started outlasts
    # the save.
    aimed = KILLS // 2  # the odd-numbered kills
    assert len(mid_save) >= aimed // 2, f"{len(mid_save)} of {len(kills)} kills inside a save"
