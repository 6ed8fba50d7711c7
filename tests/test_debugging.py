"""debug=eager: a breakpoint() in a recipe stops at every step, with real tensors, on both
backends (docs/training.md, "Debugging with pdb")."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow  # a training process per backend


@pytest.mark.parametrize(
    "backend,tensor,counted",
    [("torch", "Tensor", "Tensor"), ("tf", "EagerTensor", "SymbolicTensor")],
)
def test_pdb_stops_at_every_step_with_debug_eager(
    backend: str, tensor: str, counted: str, tmp_path: Path
) -> None:
    command = [
        sys.executable, "-m", "dualtrain", f"backend={backend}", "debug=eager",
        "recipe.name=debugged", "recipe.module=tests.backend.users.debugged", "~recipe.model",
        "~recipe.task", "data=python", "data.source=tests.backend.users.debugged:load_data",
        "trainer.max_epochs=1", "trainer.max_steps=3", "trainer.limit_val_batches=1",
        "logger.progress=false", f"hydra.run.dir={tmp_path / 'run'}",
    ]  # fmt: skip
    # At each stop: print what the loss got, then continue (more than enough stops' worth).
    commands = "p ('seen', type(y_pred).__name__, tuple(y_pred.shape))\nc\n" * 20
    result = subprocess.run(
        command, input=commands, capture_output=True, text=True, cwd=REPO, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    seen = re.findall(r"\('seen', '(\w+)', \((\d+), 3\)\)", result.stdout)
    # Once for the check on two samples before the first step, once while the model summary
    # counts a training step's FLOPs on two samples (tf traces it: symbolic tensors), once per
    # train step (3 of 32), once for the val batch (32 of 40): every time the loss runs.
    expected = [(tensor, "2"), (counted, "2"), *[(tensor, "32")] * 4]
    assert seen == expected, result.stdout[-2000:]
    assert f"{backend} steps run eagerly, op by op" in result.stdout + result.stderr


def test_a_debugger_turns_eager_on_and_a_coverage_tracer_does_not() -> None:
    import bdb

    from dualtrain.engines.base import debugger_attached

    assert not debugger_attached()
    debugger = bdb.Bdb()  # pdb's base class: its hooks do nothing here
    debugger.reset()
    sys.settrace(debugger.trace_dispatch)
    try:
        under_pdb = debugger_attached()
    finally:
        sys.settrace(None)

    def tracer(frame, event, arg):  # type: ignore[no-untyped-def]  # as coverage's Python tracer
        return tracer

    sys.settrace(tracer)
    try:
        under_coverage = debugger_attached()
    finally:
        sys.settrace(None)
    assert (under_pdb, under_coverage) == (True, False)
