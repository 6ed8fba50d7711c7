"""A model that no graph can record (its `call` branches on a tensor's value) still trains on
this process's backend: its steps run eagerly, one info line says why, summary.json records it,
and the losses are those of `debug=eager`."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from dualtrain.run import train
from tests.backend.conftest import make_settings
from tests.backend.users import recipe_overrides
from tests.conftest import read_jsonl

# float32: torch's fallback still captures the optimizer's update as a graph, which may order
# its sums differently from the eager update (about 1e-7 relative per step); tf runs the same
# eager ops in both runs.
RTOL = 1e-5


def _train_losses(run_dir: Path) -> list[float]:
    return [x["loss"] for x in read_jsonl(run_dir / "metrics.jsonl") if x["split"] == "train"]


def test_a_model_no_graph_can_record_trains_eagerly_and_says_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    overrides = recipe_overrides(
        "layers", "+recipe.model.kind=branches", "trainer.max_epochs=1",
        "trainer.log_every_n_steps=1", "logger=[jsonl]",
    )  # fmt: skip
    with caplog.at_level(logging.INFO, logger="dualtrain"):
        summary = train(make_settings(tmp_path / "fallback", *overrides))
    assert summary["status"] == "completed"
    record = summary["step_capture"]
    assert record["captured"] is False, record
    # Each backend names the construct in the user's terms (torch: a value read on the host).
    assert "a Python `if`" in record["not_captured_because"], record
    said = [r.getMessage() for r in caplog.records if "eagerly" in r.getMessage()]
    assert said and all("a Python `if`" in line for line in said), said

    eager = train(make_settings(tmp_path / "eager", *overrides, "debug=eager"))
    assert eager["status"] == "completed"
    losses, expected = _train_losses(tmp_path / "fallback"), _train_losses(tmp_path / "eager")
    assert len(losses) == len(expected) >= 6  # 6 steps: 409 train samples, batch 64
    np.testing.assert_allclose(losses, expected, rtol=RTOL)
