"""First-day rough edges: what a new user sees in the console, the run directory and README."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_module

from dualtrain.distributed import register_shared_now
from dualtrain.logging import format_summary
from tests.conftest import REPO, TINY, run_cli


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


@pytest.mark.slow
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


@pytest.mark.parametrize(
    ("overrides", "group"),
    [
        (["backend=tf"], "tf"),
        (["mode=train"], "torch"),
        (["mode=eval", "backend=tf"], "eval"),
        (["mode=export"], "export"),
        (["mode=parity", "recipe=mlp"], "parity"),
    ],
)
def test_default_run_dir_names_the_backend_for_training_and_the_mode_otherwise(
    overrides: list[str], group: str
) -> None:
    """Parity runs both backends, eval and export run on the checkpoint's: naming their
    directories after `backend` would file them under a backend they did not (only) use."""
    register_shared_now()  # as the CLI does before Hydra composes
    with initialize_config_module("dualtrain.configs", version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    run_dir = Path(cfg.hydra.run.dir)
    assert run_dir.parts[:3] == ("outputs", cfg.recipe.name, group), run_dir
    assert re.fullmatch(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d", run_dir.parts[3])


@pytest.mark.slow
def test_eval_of_a_run_goes_to_outputs_recipe_eval(tmp_path: Path) -> None:
    trained = run_cli(*TINY, "trainer.max_epochs=1", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    [train_dir] = (tmp_path / "outputs" / "cnn" / "torch").iterdir()
    result = run_cli(
        "mode=eval", f"checkpoint.path={train_dir}", "data=synthetic", "data.num_samples=256",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    [eval_dir] = (tmp_path / "outputs" / "cnn" / "eval").iterdir()
    assert (eval_dir / "eval.json").is_file()
    assert sorted(p.name for p in (tmp_path / "outputs" / "cnn").iterdir()) == ["eval", "torch"]


def _readme_figures() -> Any:
    spec = importlib.util.spec_from_file_location(
        "readme_figures", REPO / "scripts" / "readme_figures.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_figures_rewrites_only_between_its_markers() -> None:
    rewrite = _readme_figures().rewrite
    text = "a\n<!-- figures:start x -->\nold\n<!-- figures:end x -->\nb 0.983\n"
    assert rewrite(text, {"x": "| new |"}) == (
        "a\n<!-- figures:start x -->\n| new |\n<!-- figures:end x -->\nb 0.983\n"
    )
    with pytest.raises(SystemExit, match="0 blocks named 'y'"):
        rewrite(text, {"y": "z"})
    # README carries every block the script writes, once each.
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    names = _readme_figures().BLOCKS
    assert set(names) >= {"recipes", "task-recipes", "run-table", "compare", "parity"}
    assert rewrite(readme, dict.fromkeys(names, "z")).count("<!-- figures:start") == len(names)
