"""First-day rough edges: what a new user sees in the console, the run directory and README."""

from __future__ import annotations

import re
from pathlib import Path

from dualtrain.logging import format_summary
from tests.conftest import TINY, run_cli


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


def test_export_shows_the_report_not_the_exporters_info_logs(tmp_path: Path) -> None:
    """The ONNX exporter's optimizer passes (onnxscript, onnx_ir), TensorFlow's saver and LiteRT's
    C++ runtime each log at INFO; an export run shows its own lines only."""
    result = run_cli(
        *TINY, "trainer.max_epochs=1", "export.formats=[onnx,tflite]", f"hydra.run.dir={tmp_path}"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert re.search(r"^  onnx +export/onnx/model\.onnx", result.stdout, re.M), output
    assert re.search(r"^  tflite +export/tflite/model\.tflite", result.stdout, re.M), output
    for noise in ("onnxscript", "onnx_ir", "Assets written to", "XNNPACK"):
        assert noise not in output, output
