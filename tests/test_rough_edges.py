"""First-day rough edges: what a new user sees in the console, the run directory and README."""

from __future__ import annotations

from dualtrain.logging import format_summary


def _summary() -> dict:
    return {
        "status": "completed",
        "backend": "torch",
        "recipe": "cnn",
        "steps": 675,
        "epochs": 15,
        "wall_seconds": 8.3,
        "train_samples_per_sec": 3548.2,
        "final": {
            "train": {"loss": 0.01, "lr": 0.002, "samples_per_sec": 799.0},
            "val": {"loss": 0.04, "accuracy": 0.989},
        },
    }


def test_final_table_shows_one_throughput_named_as_steady_state() -> None:
    table = format_summary(_summary())
    assert "samples/s (steady state)  3,548" in table
    # The last logged window's figure would contradict it under a similar name.
    assert "799" not in table and "samples_per_sec" not in table
    assert "train/loss" in table and "val/accuracy" in table
