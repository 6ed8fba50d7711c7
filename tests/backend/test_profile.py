"""profile.steps on this process's backend: the framework's trace of the chosen steps, and
profile.md, the same table on both backends, checked against the trace."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from dualtrain import compat
from dualtrain.run import train
from tests.backend.conftest import BACKEND, make_settings


def test_chosen_steps_are_traced_and_summed_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="dualtrain")
    run = tmp_path / "run"
    # Steps 3-9 chosen, the run stops at 4: steps 3 and 4 are recorded, with one line.
    train(
        make_settings(
            run, "recipe=mlp", "trainer.max_steps=4", "profile.steps=[3,9]", "logger=[jsonl]",
            "checkpoint.every_n_epochs=0",
        )
    )  # fmt: skip
    assert "profile.steps=[3,9]: the run ended at step 4; recorded steps 3-4" in caplog.text
    marks = _trace_marks(run / "profile")
    steps, ops = _tables((run / "profile.md").read_text())
    assert [row[0] for row in steps] == ["3", "4"]
    for label, total, compute, input_, host in steps:
        # The table rounds each figure to 0.001 ms: four roundings, at most 0.002 ms apart.
        assert compute + input_ + host == pytest.approx(total, abs=0.002)
        assert compute > 0 and input_ > 0 and host >= 0
        # A step runs from the start of getting its batch to the end of its mark: read here
        # from the trace itself (0.001 ms: the table's rounding).
        start = max(
            s for s, e in marks["dualtrain.input"] if e <= marks[f"dualtrain.step {label}"][0][0]
        )
        assert total == pytest.approx(
            (marks[f"dualtrain.step {label}"][0][1] - start) / 1e3, abs=1e-3
        )
    assert ops, "no operations in profile.md"
    assert all(calls >= 1 and ms > 0 for name, calls, ms, _ in ops if not name.endswith("others)"))
    # The mlp's dense layers are matrix products, on either backend.
    assert any(re.search("mm|matmul", name, re.IGNORECASE) for name, *_ in ops)
    # Shares of all operations' time, each rounded to 0.1%.
    assert sum(share for *_, share in ops) == pytest.approx(100, abs=0.05 * len(ops))


def _trace_marks(directory: Path) -> dict[str, list[tuple[float, float]]]:
    """dualtrain's marks in the backend's trace file, parsed here: name -> (start, end) in µs."""
    marks: dict[str, list[tuple[float, float]]] = {}
    if BACKEND == "torch":
        (trace,) = directory.glob("steps-3-4.trace.json")
        for event in json.loads(trace.read_text())["traceEvents"]:
            if event.get("name", "").startswith("dualtrain.") and event.get("ph") == "X":
                start = float(event["ts"])
                marks.setdefault(event["name"], []).append((start, start + float(event["dur"])))
        return marks
    (trace,) = directory.glob("plugins/profile/*/*.xplane.pb")
    proto = compat.xplane_module()
    assert proto is not None
    space = proto.XSpace()
    space.ParseFromString(trace.read_bytes())
    (host,) = [plane for plane in space.planes if plane.name == "/host:CPU"]
    origin = min(line.timestamp_ns for line in host.lines)  # float µs since 1970 lose 0.25 µs
    for line in host.lines:
        for event in line.events:
            name = host.event_metadata[event.metadata_id].name
            if name.startswith("dualtrain."):
                start = ((line.timestamp_ns - origin) * 1000 + event.offset_ps) / 1e6
                marks.setdefault(name, []).append((start, start + event.duration_ps / 1e6))
    return marks


def _tables(
    text: str,
) -> tuple[list[tuple[str, float, float, float, float]], list[tuple[str, int, float, float]]]:
    """profile.md's step rows (label and four times in ms) and operation rows."""
    number = lambda cell: float(cell.replace(",", "").rstrip("%"))  # noqa: E731
    rows = [
        [c.strip() for c in line.strip("|").split("|")]
        for line in text.splitlines()
        if line.startswith("| ") and "---" not in line
    ]
    steps = [
        (r[0], *map(number, r[1:])) for r in rows if len(r) == 5 and r[0] not in ("step", "mean")
    ]
    ops = [
        (r[0].strip("`"), int(number(r[1])), number(r[2]), number(r[3]))
        for r in rows
        if len(r) == 4 and r[0] != "operation"
    ]
    return steps, ops  # type: ignore[return-value]
