"""The console: a tqdm bar per epoch on a terminal, and a table of final metrics at the end."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from dualtrain.logging.base import Logger
from dualtrain.settings import LoggerSettings


class ConsoleLogger(Logger):
    """A tqdm bar per epoch (loss, samples/s, then the val values) and the final table.

    Args:
        progress: draw the bars (`logger.progress`); they are drawn only on a terminal.
        stream: where to write; None: standard output.
    """

    @classmethod
    def create(cls, run_dir: Path, backend: str, settings: LoggerSettings) -> ConsoleLogger:
        return cls(progress=settings.progress)

    def __init__(self, progress: bool, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        # Quiet in logs and pipes: bars are only drawn on a terminal.
        self.progress = progress and self.stream.isatty()
        self._bar: tqdm | None = None
        self._postfix: dict[str, str] = {}

    def start_epoch(self, epoch: int, max_epochs: int, total_steps: int) -> None:
        if self.progress:
            self._postfix = {}
            self._bar = tqdm(
                total=total_steps,
                desc=f"epoch {epoch + 1}/{max_epochs}",
                unit="step",
                file=self.stream,
                leave=True,
                dynamic_ncols=True,
            )

    def advance(self, steps: int) -> None:
        if self._bar is not None:
            self._bar.update(steps)

    def log_metrics(self, split: str, metrics: Mapping[str, float], step: int, epoch: int) -> None:
        if self._bar is None:
            return
        if split == "train":
            self._postfix["loss"] = f"{metrics['loss']:.4f}"
            self._postfix["samples/s"] = f"{metrics['samples_per_sec']:.0f}"
        else:
            self._postfix.update({f"val_{name}": f"{value:.4f}" for name, value in metrics.items()})
        # Train values redraw with the bar's next update; val values end the epoch, so draw now.
        self._bar.set_postfix(self._postfix, refresh=split != "train")

    def end_epoch(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def finalize(self, summary: Mapping[str, Any]) -> None:
        self.end_epoch()
        print(format_summary(summary), file=self.stream)


def format_summary(summary: Mapping[str, Any]) -> str:
    """The table of final metrics and throughput that ends every run.

    Args:
        summary: what summary.json holds.

    Returns:
        The table, one line per value under a title line.
    """
    rows = [
        ("status", summary["status"]),
        ("backend", summary["backend"]),
        ("steps", summary["steps"]),
        ("epochs", summary["epochs"]),
        ("wall_seconds", f"{summary['wall_seconds']:.1f}"),
    ]
    # One throughput, the run's: summary.json's steady-state figure (epochs after the first, so
    # start-up and compilation are not in it). The last logged window's train/samples_per_sec is
    # left out: it covers a few steps only, often a short last batch, and would read as a second,
    # contradicting figure; metrics.jsonl and TensorBoard have it for every window.
    if summary.get("train_samples_per_sec"):
        rows.append(("samples/s (steady state)", f"{summary['train_samples_per_sec']:,.0f}"))
    for split in ("train", "val"):
        for name, value in summary["final"].get(split, {}).items():
            if split == "train" and name == "samples_per_sec":
                continue
            rows.append((f"{split}/{name}", f"{value:.4f}" if abs(value) < 100 else f"{value:.0f}"))
    width = max(len(name) for name, _ in rows)
    title = f"dualtrain {summary['recipe']} on {summary['backend']}: {summary['status']}"
    return "\n".join([title, *(f"  {name:<{width}}  {value}" for name, value in rows)])
