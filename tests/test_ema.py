"""trainer.ema across backends: a run resumed on the other backend continues the saved average."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dualtrain.checkpoint import read_checkpoint
from tests.conftest import run_cli

# Small: synthetic data, batches of 32, a few steps.
RUN = ["data=synthetic", "data.num_samples=320", "trainer.ema=0.75", "logger=[jsonl]"]


@pytest.mark.slow
def test_a_resume_on_the_other_backend_continues_the_saved_average(tmp_path: Path) -> None:
    first, second = tmp_path / "torch", tmp_path / "tf"
    for args in (
        ["backend=torch", "trainer.max_steps=4", f"hydra.run.dir={first}"],
        [
            "backend=tf",
            "trainer.max_steps=5",
            f"checkpoint.path={first}",
            f"hydra.run.dir={second}",
        ],
    ):
        result = run_cli(*RUN, *args)
        assert result.returncode == 0, result.stderr
    saved, resumed = (read_checkpoint(d / "checkpoints" / "last") for d in (first, second))
    assert (saved.step, resumed.step, resumed.trainer["backend"]) == (4, 5, "tf")
    assert resumed.trainer["ema"] == {"momentum": 0.75}
    assert saved.average is not None and resumed.average is not None
    assert set(saved.average) == set(resumed.average) < set(saved.model)
    m = np.float32(0.75)
    for path, average in saved.average.items():
        assert not np.array_equal(average, saved.model[path])  # an average, not the weights
        # tf's one step from torch's saved average, in Keras's float32 arithmetic redone here.
        expected = m * average + (np.float32(1) - m) * resumed.model[path]
        np.testing.assert_array_equal(resumed.average[path], expected)
