"""The gan recipe on this process's backend: its noise is part of the resumable state."""

from __future__ import annotations

from pathlib import Path

import pytest

from dualtrain.run import train
from tests.backend.conftest import make_settings
from tests.backend.test_training import losses

SMALL = ["recipe=gan", "data.batch_size=128", "logger=jsonl", "trainer.log_every_n_steps=4"]


@pytest.mark.slow  # three gan trainings: 12-18 s
def test_gan_resumed_draws_the_same_noise(tmp_path: Path) -> None:
    """The noise generator's state is in the checkpoint: 2 epochs, then a resume to 3, log the
    same losses as 3 epochs in one go, exactly (one backend's kernels are deterministic here)."""
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    train(make_settings(whole, *SMALL, "trainer.max_epochs=3"))
    train(make_settings(parts, *SMALL, "trainer.max_epochs=2"))
    train(make_settings(parts, *SMALL, "trainer.max_epochs=3", "checkpoint.resume=auto"))
    assert len(losses(whole)) == 9  # 1,437 samples / 128 -> 12 steps an epoch, logged every 4
    assert losses(parts) == losses(whole)
