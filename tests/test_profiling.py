"""profiling.py's arithmetic on a hand-made trace, with no framework: the split of each step,
the operations' self times, and the line for chosen steps that a run does not reach."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from dualtrain.profiling import INPUT, STEP, Event, OpTime, StepProfiler, StepTime, summarize


def test_steps_are_split_and_operations_timed_by_self_time() -> None:
    events = [
        # step 1: its input (with a gather inside), then its mark
        Event("main", INPUT, 0, 10),
        Event("main", "gather", 2, 6, op="gather"),
        Event("main", f"{STEP} 1", 10, 100),
        Event("main", "A", 20, 50, op="A"),
        Event("main", "B", 30, 40, op="B"),  # in A: A's self time is 30 - 10
        Event("main", "dispatch", 60, 80),  # the framework's own work, not an operation
        Event("main", "C", 65, 75, op="C"),
        Event("pool", "D", 25, 35, op="D"),  # another thread, during the step
        Event("pool", "D", 200, 210, op="D"),  # after the recorded steps: left out
        # steps 2-3 (one engine call): input, mark, and no framework work
        Event("main", INPUT, 101, 105),
        Event("main", f"{STEP} 2-3", 105, 150),
        Event("main", INPUT, 150, 152),  # found the epoch's end: no step follows
    ]
    steps, ops = summarize(events)
    # Microseconds: step 1 runs 0-100, input 10, compute [20,50] and [60,80] = 50 (the gather is
    # input), host the other 40.
    assert steps == [
        StepTime("1", total=100e-6, compute=50e-6, input=10e-6),
        StepTime("2-3", total=49e-6, compute=0.0, input=4e-6),
    ]
    assert steps[0].host == pytest.approx(40e-6)
    assert ops[0] == OpTime("A", 1, pytest.approx(20e-6))
    assert {(op.name, op.calls, round(op.seconds * 1e6, 6)) for op in ops} == {
        ("A", 1, 20.0),
        ("B", 1, 10.0),
        ("C", 1, 10.0),
        ("D", 1, 10.0),
        ("gather", 1, 4.0),
    }


@pytest.mark.parametrize(
    "start,done,line",
    [
        (0, 4, "the run ended at step 4, before step 10; nothing was recorded"),
        (20, 30, "the run resumed at step 20, after step 15; nothing was recorded"),
    ],
)
def test_steps_the_run_does_not_reach_are_one_line(
    start: int, done: int, line: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine: Any = SimpleNamespace(settings=SimpleNamespace(profile=SimpleNamespace(steps=(10, 15))))
    profiler = StepProfiler(engine, tmp_path, start)
    for step in range(start, done):  # the loop's calls; none is recorded
        with profiler.input(step, 1), profiler.steps(step, 1):
            pass
    with caplog.at_level(logging.WARNING, logger="dualtrain"):
        profiler.close(done)
    assert [r.getMessage() for r in caplog.records] == [f"profile.steps=[10,15]: {line}"]
    assert not (tmp_path / "profile.md").exists()
