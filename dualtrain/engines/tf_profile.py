"""profile.steps on tf: TensorFlow's profiler over the chosen steps, its trace in
<run_dir>/profile/plugins/profile/<run>/<host>.xplane.pb (TensorBoard's profile plugin reads it),
read back as plain events for dualtrain/profiling.py."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import tensorflow as tf

from dualtrain import compat
from dualtrain.errors import RunError
from dualtrain.profiling import Event

HOST_PLANE = "/host:CPU"  # the host's threads; accelerators have planes of their own


class TensorFlowRecorder:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._earlier: set[Path] = set()

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._earlier = set(self._traces())
        try:
            tf.profiler.experimental.start(str(self.directory))
        except tf.errors.OpError as err:  # another profiler session runs in this process
            message = f"profile.steps: TensorFlow's profiler did not start: {err.message}"
            raise RunError(message) from err

    def mark(self, name: str, step: int | None) -> contextlib.AbstractContextManager[None]:
        if step is None:
            return tf.profiler.experimental.Trace(name)
        # step_num with _r=1 makes the span a step for TensorBoard's profile plugin.
        return tf.profiler.experimental.Trace(name, step_num=step, _r=1)

    def stop(self, name: str) -> tuple[Path, list[Event] | None]:
        tf.profiler.experimental.stop()  # TensorFlow names the trace's directory by the time
        new = [p for p in self._traces() if p not in self._earlier]
        if not new:
            raise RunError(
                f"profile.steps: TensorFlow's profiler wrote no trace in {self.directory}"
            )
        path = max(new, key=lambda p: p.stat().st_mtime)
        proto = compat.xplane_module()
        if proto is None:
            return path, None
        space = proto.XSpace()
        space.ParseFromString(path.read_bytes())
        return path, xspace_events(space)

    def _traces(self) -> list[Path]:
        return list(self.directory.glob("plugins/profile/*/*.xplane.pb"))


def xspace_events(space: Any) -> list[Event]:
    """The host plane's events (one line per thread), in microseconds from the first line's
    start (the trace's nanosecond clock would lose precision as a float)."""
    plane = next((p for p in space.planes if p.name == HOST_PLANE), None)
    if plane is None:
        return []
    origin = min((line.timestamp_ns for line in plane.lines), default=0)
    stat_names = {key: meta.name for key, meta in plane.stat_metadata.items()}
    events = []
    for line in plane.lines:
        base_ps = (line.timestamp_ns - origin) * 1000
        for event in line.events:
            meta = plane.event_metadata[event.metadata_id]
            start = (base_ps + event.offset_ps) / 1e6
            events.append(
                Event(
                    thread=line.id,
                    name=meta.name,
                    start=start,
                    end=start + event.duration_ps / 1e6,
                    op=_operation(meta, event, stat_names),
                )
            )
    return events


def _operation(meta: Any, event: Any, stat_names: dict[int, str]) -> str | None:
    """The operation an event runs: a kernel's op type (its display name: `MatMul` of
    `dense/MatMul:MatMul`), or an eager op's name (`EagerExecute` of an op that is not a
    tf.function); None for TensorFlow's other work and for marks."""
    if meta.display_name:
        return str(meta.display_name)
    if meta.name != "EagerExecute":
        return None
    stats = {stat_names.get(s.metadata_id): s for s in event.stats}
    if "is_func" not in stats or stats["is_func"].int64_value or "eager_op" not in stats:
        return None
    return stat_names.get(stats["eager_op"].ref_value)
