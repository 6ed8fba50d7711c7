"""A user's own logger, plugged in by `_target_` as callbacks are: it receives what metrics.jsonl
holds, on this process's backend."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from dualtrain.logging import Logger
from dualtrain.run import train
from tests.backend.conftest import BACKEND, make_settings


class Recording(Logger):
    """Keeps every call; a test reads `made` (dualtrain constructs the logger itself)."""

    made: ClassVar[list[Recording]] = []

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.hparams: dict[str, Any] = {}
        self.lines: list[dict[str, Any]] = []
        self.summary: dict[str, Any] = {}
        self.made.append(self)

    def log_hparams(self, hparams: Mapping[str, Any], config_yaml: str) -> None:
        self.hparams = dict(hparams)

    def log_metrics(self, split: str, metrics: Mapping[str, float], step: int, epoch: int) -> None:
        self.lines.append({"step": step, "epoch": epoch, "split": split, **metrics})

    def finalize(self, summary: Mapping[str, Any]) -> None:
        self.summary = dict(summary)


def test_a_logger_given_by_target_gets_what_metrics_jsonl_holds(tmp_path: Path) -> None:
    Recording.made.clear()
    settings = make_settings(
        tmp_path,
        "recipe=mlp", "data=synthetic", "data.num_samples=128", "trainer.max_epochs=2",
        "trainer.log_every_n_steps=2", "logger=[jsonl]",
        f"+logger.mine={{_target_:{__name__}.Recording,prefix:run-a}}",
    )  # fmt: skip
    train(settings)

    [logger] = Recording.made
    assert logger.prefix == "run-a"  # its keyword arguments, from the config
    assert logger.hparams["backend.name"] == BACKEND
    jsonl = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    # 102 train samples in batches of 64 (data=synthetic): 2 steps an epoch, a line every 2.
    assert [(line["split"], line["step"]) for line in jsonl] == [
        ("train", 2), ("val", 2), ("train", 4), ("val", 4)
    ]  # fmt: skip
    for line in jsonl:
        del line["backend"], line["time"]
    assert logger.lines == jsonl
    assert logger.summary["status"] == "completed" and logger.summary["steps"] == 4
