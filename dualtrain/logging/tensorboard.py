"""TensorBoard event files written with the `tensorboard` package alone: no TensorFlow needed.

Tags are the same on both backends: `train/loss`, `train/lr`, `train/samples_per_sec`, `val/loss`,
`val/<metric>`, at the global optimizer step; the composed config as text (`config`); an HParams
entry (the flattened config, backend included) whose metrics are the `val/*` scalars; and, with
`logger.histograms_every`, `weights/<variable>` and `gradients/<variable>` histograms.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from dualtrain import compat
from dualtrain.logging.base import Logger
from dualtrain.settings import LoggerSettings

HISTOGRAM_BINS = 30


class TensorBoardLogger(Logger):
    """Writes TensorBoard event files without TensorFlow: scalars, the config, HParams, histograms.

    Args:
        log_dir: the folder of the event files (`tensorboard/` in the run directory).
    """

    @classmethod
    def create(cls, run_dir: Path, backend: str, settings: LoggerSettings) -> TensorBoardLogger:
        return cls(run_dir / "tensorboard")

    def __init__(self, log_dir: Path) -> None:
        # A torch run must not load TensorFlow just to log (compat: tensorboard's TF-free stub).
        compat.tensorboard_without_tensorflow()
        # Imported on first use: runs without this logger never load tensorboard.
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self._event = event_pb2.Event
        self._summary = summary_pb2
        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        # The writer's thread writes queued events; flush_secs bounds what a crash can lose.
        self._writer = EventFileWriter(str(log_dir), max_queue_size=100, flush_secs=10)

    def log_hparams(self, hparams: Mapping[str, Any], config_yaml: str) -> None:
        from tensorboard.plugins.hparams import summary_v2 as hparams_summary

        self._write(self._text_summary("config", f"```\n{config_yaml}\n```"), step=0)
        self._write(hparams_summary.hparams_pb(dict(hparams)), step=0)

    def log_metrics(self, split: str, metrics: Mapping[str, float], step: int, epoch: int) -> None:
        values = [
            self._summary.Summary.Value(tag=f"{split}/{name}", simple_value=float(value))
            for name, value in metrics.items()
        ]
        self._write(self._summary.Summary(value=values), step)

    def log_histograms(self, arrays: Mapping[str, np.ndarray], step: int) -> None:
        values = [
            self._summary.Summary.Value(tag=tag, histo=self._histogram(array))
            for tag, array in arrays.items()
        ]
        self._write(self._summary.Summary(value=values), step)

    def finalize(self, summary: Mapping[str, Any]) -> None:
        self._writer.close()  # flushes what is queued

    def _write(self, summary: Any, step: int) -> None:
        self._writer.add_event(self._event(wall_time=time.time(), step=step, summary=summary))

    def _histogram(self, array: np.ndarray) -> Any:
        values = np.asarray(array, dtype=np.float64).reshape(-1)
        counts, edges = np.histogram(values, bins=HISTOGRAM_BINS)
        return self._summary.HistogramProto(
            min=float(values.min()),
            max=float(values.max()),
            num=float(values.size),
            sum=float(values.sum()),
            sum_squares=float(np.dot(values, values)),
            bucket_limit=[float(edge) for edge in edges[1:]],
            bucket=[float(count) for count in counts],
        )

    def _text_summary(self, tag: str, text: str) -> Any:
        from tensorboard.compat.proto import tensor_pb2, tensor_shape_pb2, types_pb2
        from tensorboard.plugins.text import metadata as text_metadata

        tensor = tensor_pb2.TensorProto(
            dtype=types_pb2.DT_STRING,
            string_val=[text.encode("utf-8")],
            tensor_shape=tensor_shape_pb2.TensorShapeProto(),
        )
        value = self._summary.Summary.Value(
            tag=tag, tensor=tensor, metadata=text_metadata.create_summary_metadata("", "")
        )
        return self._summary.Summary(value=[value])
