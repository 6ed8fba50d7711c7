"""profile.steps on torch: torch.profiler over the chosen steps, its Chrome trace (Perfetto,
chrome://tracing) in <run_dir>/profile/, read back as plain events for dualtrain/profiling.py."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from dualtrain.export import native_stderr_without
from dualtrain.profiling import Event

# Printed by the profiler's C++ side on file descriptor 2 at each start and stop.
_CHATTER = ("USDT:",)


class TorchRecorder:
    def __init__(self, directory: Path, device: torch.device) -> None:
        self.directory = directory
        activities = [ProfilerActivity.CPU]
        if device.type == "cuda":
            activities.append(ProfilerActivity.CUDA)  # the kernels, on their streams
        self._profile = profile(activities=activities)

    def start(self) -> None:
        with native_stderr_without(_CHATTER):
            self._profile.start()

    def mark(self, name: str, step: int | None) -> contextlib.AbstractContextManager[None]:
        return record_function(name)

    def stop(self, name: str) -> tuple[Path, list[Event] | None]:
        with native_stderr_without(_CHATTER):
            self._profile.stop()
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{name}.trace.json"
        self._profile.export_chrome_trace(str(path))
        return path, chrome_trace_events(path)


def chrome_trace_events(path: Path) -> list[Event]:
    """The complete events ("ph": "X") of a Chrome trace file, by (process, thread); those of
    category cpu_op are torch's operations (user_annotation: record_function's marks; kernels
    and CUDA runtime calls have categories of their own)."""
    events = []
    for event in json.loads(path.read_text())["traceEvents"]:
        if event.get("ph") != "X" or "dur" not in event:
            continue
        start = float(event["ts"])
        events.append(
            Event(
                thread=(event.get("pid"), event.get("tid")),
                name=str(event.get("name", "")),
                start=start,
                end=start + float(event["dur"]),
                op=event["name"] if event.get("cat") == "cpu_op" else None,
            )
        )
    return events
