"""`profile.steps=[first,last]`: a profiler trace of those training steps and the table both
backends write from it, <run_dir>/profile.md (docs/profiling.md).

The loop marks, in the trace, the getting of each engine call's batches (`dualtrain.input`) and
the rest of its steps (`dualtrain.step <n>`). The engine's recorder (engines/torch_profile.py,
engines/tf_profile.py) runs its framework's own profiler over the chosen steps, writes the
framework's trace under <run_dir>/profile/, and hands back the trace's events as plain numbers
(`Event`). From here on both backends are one:

- a step's time runs from the start of getting its batch to the end of its step mark;
- input: the time getting the batch (whatever ran inside: a gather, a DataLoader, tf.data);
- compute: the rest of the time the loop's thread spent inside the framework's events (its
  operations and its own dispatch of them, a tf.function call included);
- host: the remainder: Python (dualtrain's loop, Keras between framework calls), logging,
  checkpoints, callbacks;
- operations: the framework's operations on every thread during the recorded steps, each with
  its self time (its time less that of the operations it called), as torch's and TensorFlow's
  own profilers count it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Hashable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from dualtrain.engines.base import Engine

log = logging.getLogger("dualtrain")

STEP = "dualtrain.step"  # marks "dualtrain.step 12", or "dualtrain.step 11-12" for one call
INPUT = "dualtrain.input"
TOP_OPERATIONS = 15  # rows of the operations table; the others are summed in one row


@dataclass(frozen=True)
class Event:
    """One event of a trace: on a thread, from `start` to `end` (microseconds)."""

    thread: Hashable
    name: str
    start: float
    end: float
    op: str | None = None  # the operation it runs; None for marks and the framework's own work


class Recorder(Protocol):
    """A framework's profiler, as an engine hands it out (`Engine.profiler`)."""

    def start(self) -> None: ...

    def mark(self, name: str, step: int | None) -> contextlib.AbstractContextManager[None]:
        """A named span in the trace; `step`: the first step it runs, for a step's span."""

    def stop(self, name: str) -> tuple[Path, list[Event] | None]:
        """Writes the trace (`name` says which steps it holds, where the file name is ours);
        returns its path and its events (None where they cannot be read)."""


@dataclass(frozen=True)
class StepTime:
    """One recorded engine call (one step, or several with backend.steps_per_execution), in
    seconds."""

    steps: str  # "12", or "11-12"
    total: float
    compute: float
    input: float

    @property
    def host(self) -> float:
        return self.total - self.compute - self.input


@dataclass(frozen=True)
class OpTime:
    name: str
    calls: int
    seconds: float  # self time, summed over calls


def summarize(events: list[Event]) -> tuple[list[StepTime], list[OpTime]]:
    """The time of each marked step, split, and the operations by self time (most first)."""
    marks = sorted((e for e in events if e.name.startswith(f"{STEP} ")), key=lambda e: e.start)
    if not marks:
        return [], []
    thread = marks[0].thread  # the loop's
    own = [e for e in events if e.thread == thread]
    inputs = [e for e in own if e.name == INPUT]
    framework = [e for e in own if not e.name.startswith((STEP, INPUT))]
    steps, spans, after = [], [], float("-inf")
    for mark in marks:
        # The step's input: getting its batches, between the previous step's end and its mark
        # (an input that found the epoch's end, with no step after it, is left out).
        taken = [(e.start, e.end) for e in inputs if e.start >= after and e.end <= mark.start][-1:]
        span = (min([mark.start, *(s for s, _ in taken)]), mark.end)
        busy = _union(_clip([(e.start, e.end) for e in framework], span))
        steps.append(
            StepTime(
                steps=mark.name.removeprefix(f"{STEP} "),
                total=(span[1] - span[0]) / 1e6,
                compute=(_length(busy) - _overlap(busy, taken)) / 1e6,
                input=_length(taken) / 1e6,
            )
        )
        spans.append(span)
        after = mark.end
    return steps, _operations(events, spans)


def _operations(events: list[Event], spans: list[tuple[float, float]]) -> list[OpTime]:
    """Operations that start within `spans`, on any thread, grouped by name, by self time."""
    totals: dict[str, list[float]] = {}
    for event, seconds in _self_times(events):
        if any(start <= event.start < end for start, end in spans):
            assert event.op is not None
            entry = totals.setdefault(event.op, [0, 0.0])
            entry[0] += 1
            entry[1] += seconds
    ops = [OpTime(name, int(calls), seconds) for name, (calls, seconds) in totals.items()]
    return sorted(ops, key=lambda op: -op.seconds)


def _self_times(events: Iterable[Event]) -> Iterator[tuple[Event, float]]:
    """Each operation with its self time in seconds: its duration less that of the operations
    nested in it on its thread (through events that are not operations, such as a TensorFlow
    executor running a function inside an op)."""
    by_thread: dict[Hashable, list[Event]] = {}
    for event in events:
        by_thread.setdefault(event.thread, []).append(event)
    for thread_events in by_thread.values():
        thread_events.sort(key=lambda e: (e.start, -e.end))
        open_: list[Event] = []  # the events enclosing the current one, outermost first
        nested: dict[int, float] = {}  # id(operation) -> time of the operations nested in it
        for event in thread_events:
            while open_ and open_[-1].end <= event.start:
                open_.pop()
            if event.op is not None:
                parent = next((e for e in reversed(open_) if e.op is not None), None)
                if parent is not None:
                    nested[id(parent)] = nested.get(id(parent), 0.0) + (
                        min(event.end, parent.end) - event.start
                    )
            open_.append(event)
        for event in thread_events:
            if event.op is not None:
                yield event, max(event.end - event.start - nested.get(id(event), 0.0), 0.0) / 1e6


def _clip(
    intervals: list[tuple[float, float]], span: tuple[float, float]
) -> list[tuple[float, float]]:
    return [(max(s, span[0]), min(e, span[1])) for s, e in intervals if s < span[1] and e > span[0]]


def _union(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[tuple[float, float]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _length(intervals: list[tuple[float, float]]) -> float:
    return sum(end - start for start, end in intervals)


def _overlap(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> float:
    """The length of the intersection of two unions of intervals."""
    return sum(max(0.0, min(e1, e2) - max(s1, s2)) for s1, e1 in a for s2, e2 in b)


def write_table(
    path: Path, backend: str, trace: Path, steps: list[StepTime], ops: list[OpTime]
) -> None:
    """profile.md: the time per recorded step, split, and the top operations."""
    opens = (
        "open it in https://ui.perfetto.dev or chrome://tracing"
        if backend == "torch"
        else "in this directory, `tensorboard --logdir profile` shows it in the Profile tab "
        "(with `pip install tensorboard-plugin-profile`)"
    )
    ms = "{:,.3f}".format
    lines = [
        f"# Profile of steps {steps[0].steps.split('-')[0]}-{steps[-1].steps.split('-')[-1]} "
        f"({backend})",
        "",
        f"Trace: `{trace.relative_to(path.parent)}`; {opens} (docs/profiling.md).",
        "",
        "## Time per step",
        "",
        "compute: the training thread inside the framework (its operations and their dispatch); "
        "input: getting the batch; host: the rest (Python, logging, checkpoints, callbacks).",
        "",
        "| step | total ms | compute ms | input ms | host ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for step in steps:
        times = (step.total, step.compute, step.input, step.host)
        lines.append(f"| {step.steps} | " + " | ".join(ms(t * 1e3) for t in times) + " |")
    mean = [sum(getattr(s, k) for s in steps) / len(steps) for k in ("total", "compute", "input")]
    mean.append(mean[0] - mean[1] - mean[2])
    lines.append("| mean | " + " | ".join(ms(t * 1e3) for t in mean) + " |")
    everything = sum(op.seconds for op in ops) or 1.0
    lines += [
        "",
        "## Top operations",
        "",
        "Self time (an operation's time less that of the operations it called), on all threads, "
        "during the recorded steps; share: of all operations' self time.",
        "",
        "| operation | calls | total ms | share |",
        "|---|---:|---:|---:|",
    ]
    rest = ops[TOP_OPERATIONS:]
    shown = ops[:TOP_OPERATIONS]
    if rest:
        rest_time = sum(op.seconds for op in rest)
        shown.append(OpTime(f"({len(rest)} others)", sum(op.calls for op in rest), rest_time))
    for op in shown:
        name = op.name.replace("|", "\\|")
        lines.append(
            f"| `{name}` | {op.calls:,} | {ms(op.seconds * 1e3)} | "
            f"{100 * op.seconds / everything:.1f}% |"
        )
    path.write_text("\n".join(lines) + "\n")


class StepProfiler:
    """Records `profile.steps` with the engine's recorder, as the loop reaches them; does nothing
    without them, or where the run writes nothing (`run_dir` None)."""

    def __init__(self, engine: Engine, run_dir: Path | None, start: int) -> None:
        self.engine = engine
        self.run_dir = run_dir
        self.chosen = engine.settings.profile.steps if run_dir is not None else None
        self.start = start  # steps done when the loop began (a resumed run: more than 0)
        self._recorder: Recorder | None = None
        self._first: int | None = None  # the first step recorded
        self._finished = False

    def _wanted(self, done: int, count: int) -> bool:
        """Whether the engine call that runs steps done+1 .. done+count is recorded."""
        if self.chosen is None or self._finished:
            return False
        first, last = self.chosen
        return done + 1 <= last and done + count >= first

    def input(self, done: int, count: int) -> contextlib.AbstractContextManager[None]:
        """Around getting the batches of the engine call for steps done+1 .. done+count; the
        recorder starts before the first recorded step's input."""
        if not self._wanted(done, count):
            return contextlib.nullcontext()
        if self._recorder is None:
            assert self.run_dir is not None
            self._recorder = self.engine.profiler(self.run_dir / "profile")
            self._recorder.start()
        return self._recorder.mark(INPUT, None)

    def steps(self, done: int, count: int) -> contextlib.AbstractContextManager[None]:
        """Around the rest of the engine call for steps done+1 .. done+count (the step itself,
        its logging and callbacks); after the last chosen step, the recorder stops."""
        if self._recorder is None or not self._wanted(done, count):
            return contextlib.nullcontext()  # every step of a run without profile.steps
        return self._recording(done, count)

    @contextlib.contextmanager
    def _recording(self, done: int, count: int) -> Iterator[None]:
        assert self._recorder is not None and self.chosen is not None
        if self._first is None:
            self._first = done + 1
        label = str(done + 1) if count == 1 else f"{done + 1}-{done + count}"
        with self._recorder.mark(f"{STEP} {label}", done + 1):
            yield
        if done + count >= self.chosen[1]:
            self._finish(done + count)

    def close(self, done: int, failed: bool = False) -> None:
        """At the end of training, `done` steps in (also after a failure: what was recorded is
        written): says in one line when the run did not reach the chosen steps."""
        if self.chosen is None or self._finished:
            return
        first, last = self.chosen
        chosen = f"profile.steps=[{first},{last}]"
        if self._first is None:
            if not failed:
                where = (
                    f"ended at step {done}, before step {first}"
                    if done < first
                    else f"resumed at step {self.start}, after step {last}"
                )
                log.warning("%s: the run %s; nothing was recorded", chosen, where)
            if self._recorder is not None:
                self._recorder.stop("steps-none")
            self._finished = True
            return
        if not failed:
            log.warning(
                "%s: the run ended at step %d; recorded steps %d-%d",
                chosen,
                done,
                self._first,
                done,
            )
        self._finish(done)

    def _finish(self, done: int) -> None:
        assert self._recorder is not None and self.run_dir is not None
        self._finished = True
        recorder, self._recorder = self._recorder, None
        trace, events = recorder.stop(f"steps-{self._first}-{done}")
        steps, ops = summarize(events or [])
        if not steps:
            log.info("profile: trace of steps %s-%d in %s", self._first, done, trace)
            return
        table = self.run_dir / "profile.md"
        write_table(table, self.engine.name, trace, steps, ops)
        log.info(
            "profile: trace of steps %s-%d in %s; summary in %s", self._first, done, trace, table
        )
