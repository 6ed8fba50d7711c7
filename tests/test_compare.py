"""Runs side by side: the sweep comparison after a multirun, `python -m dualtrain.compare`, and
Hydra's Optuna sweeper optimizing what each run returns."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, TINY, run_cli

PNG = b"\x89PNG\r\n\x1a\n"
# The tests of the `sweep` fixture: on one worker, so the sweep runs once.
SWEEP = pytest.mark.xdist_group("sweep")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    sweep = tmp_path_factory.mktemp("sweep")
    result = run_cli("-m", "backend=torch,tf", *TINY, f"hydra.sweep.dir={sweep}")
    assert result.returncode == 0, result.stderr[-3000:]
    return sweep


@pytest.mark.slow
@SWEEP
def test_multirun_runs_each_backend_in_its_own_process(sweep: Path) -> None:
    for job, backend in (("0", "torch"), ("1", "tf")):
        summary = json.loads((sweep / job / "summary.json").read_text())
        assert (summary["status"], summary["backend"]) == ("completed", backend)


@pytest.mark.slow
@SWEEP
def test_the_sweep_directory_gets_a_comparison(sweep: Path) -> None:
    rows = json.loads((sweep / "comparison.json").read_text())
    assert [r["run"] for r in rows] == ["backend=torch", "backend=tf"]  # what tells them apart
    for row, job in zip(rows, ("0", "1"), strict=True):
        summary = json.loads((sweep / job / "summary.json").read_text())
        assert row["backend"] == summary["backend"] and row["status"] == "completed"
        assert row["val/accuracy"] == summary["final"]["val"]["accuracy"]
        assert row["val/loss"] == summary["final"]["val"]["loss"]
        assert row["samples/s"] == summary["train_samples_per_sec"] > 0
        assert row["steps"] == summary["steps"] == 8  # 205 train samples / 64 -> 4 steps x 2
    table = (sweep / "comparison.md").read_text().splitlines()
    assert table[0].startswith("| run | backend | recipe | status | steps | val/loss |")
    assert table[2].startswith("| backend=torch | torch | cnn | completed | 8 |")
    assert (sweep / "comparison.png").read_bytes().startswith(PNG)


@pytest.mark.slow
@SWEEP
def test_compare_prints_a_table_and_draws_the_curves(sweep: Path, tmp_path: Path) -> None:
    png, table = tmp_path / "curves.png", tmp_path / "table.json"
    result = subprocess.run(
        [sys.executable, "-m", "dualtrain.compare", str(sweep / "1"), str(sweep / "0"),
         "--png", str(png), "--json", str(table)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("| run | backend |")
    assert lines[2].startswith("| backend=tf | tf | cnn | completed |")  # in the order given
    assert lines[3].startswith("| backend=torch | torch | cnn | completed |")
    assert png.read_bytes().startswith(PNG)
    assert [r["backend"] for r in json.loads(table.read_text())] == ["tf", "torch"]


@pytest.mark.slow
@SWEEP
def test_compare_writes_its_png_with_the_runs_not_into_the_working_directory(
    sweep: Path, tmp_path: Path
) -> None:
    """Without --png the curves go into the first directory given; with --out, all three files
    go there; the working directory stays as it was."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    first = sweep / "1"
    (first / "comparison.png").unlink(missing_ok=True)
    compare = [sys.executable, "-m", "dualtrain.compare", str(first), str(sweep / "0")]
    result = subprocess.run(compare, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == f"curves: {first / 'comparison.png'}"
    assert (first / "comparison.png").read_bytes().startswith(PNG)
    out = tmp_path / "out"
    result = subprocess.run(
        [*compare, "--out", str(out)], cwd=cwd, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "comparison.json", "comparison.md", "comparison.png"
    ]  # fmt: skip
    assert [r["backend"] for r in json.loads((out / "comparison.json").read_text())] == [
        "tf", "torch"
    ]  # fmt: skip
    assert list(cwd.iterdir()) == []


def test_compare_of_a_directory_without_runs_is_one_line_exit_2(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dualtrain.compare", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"dualtrain: error: {tmp_path} holds no run (no metrics.jsonl or summary.json in it or "
        "below it); give run directories or sweep directories"
    )


@pytest.mark.slow
def test_optuna_search_maximizes_what_the_runs_return(tmp_path: Path) -> None:
    sweep = tmp_path / "optuna"
    result = run_cli(
        "-m", "hparams_search=cnn_optuna", "hydra.sweeper.n_trials=3", *TINY,
        f"hydra.sweep.dir={sweep}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    accuracies = []
    for job in ("0", "1", "2"):
        summary = json.loads((sweep / job / "summary.json").read_text())
        assert summary["status"] == "completed"
        accuracies.append(summary["final"]["val"]["accuracy"])
        # Each trial ran the parameters the sampler chose.
        overrides = yaml.safe_load((sweep / job / ".hydra" / "overrides.yaml").read_text())
        assert any(o.startswith("optimizer.lr=") for o in overrides)
    # The sweeper maximized checkpoint.monitor=val/accuracy, as each run returned it.
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["best_value"] == pytest.approx(max(accuracies))
    assert len(json.loads((sweep / "comparison.json").read_text())) == 3


@pytest.mark.parametrize(("low", "high"), [(0.003, 3.0), (0.015, 2.2), (0.03, 0.9), (0.3, 0.5)])
def test_log_axis_labels_are_plain_numbers_that_do_not_overlap(low: float, high: float) -> None:
    """comparison.png's and parity.png's loss axes: labelling every minor tick of a log axis
    that spans decades piles the labels into each other."""
    from dualtrain.compare import plain_log_y
    from dualtrain.plots import pyplot

    plt = pyplot()
    fig, axis = plt.subplots(figsize=(4.6, 3.8), dpi=100)
    axis.plot([0, 1], [high, low])
    plain_log_y(axis)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    shown = [
        (label.get_text(), label.get_window_extent(renderer))
        for label in axis.get_yticklabels(minor=False) + axis.get_yticklabels(minor=True)
        if label.get_visible() and label.get_text()
        if low <= float(label.get_text()) <= high
    ]
    plt.close(fig)
    assert len(shown) >= 2, shown
    assert all("e" not in text and "$" not in text for text, _ in shown)  # 0.01, not 10^-2
    boxes = sorted(box.y0 for _, box in shown)
    height = shown[0][1].height
    assert all(b - a >= height for a, b in itertools.pairwise(boxes)), shown
