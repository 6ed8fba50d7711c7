"""The benchmark harness in its tiny smoke configuration: it runs every system and reports.

Benchmarks are not timed tests; these check that the harness works, not how fast anything is.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

# Each test runs the benchmark harness, which trains in subprocesses: the full suite only.
pytestmark = pytest.mark.slow

# Two halves, one per framework, so two pytest-xdist workers run them side by side. XLA is left
# out: dualtrain/tf+xla is dualtrain/tf with one flag, and its compile would double the tf half.
HALVES = {
    "torch": ["dualtrain/torch", "torch.nn", "torch+keras", "fit/torch"],
    "tf": ["dualtrain/tf", "tf.function", "tf.function+onednn", "fit/tf"],
}


@pytest.mark.parametrize("half", sorted(HALVES))
def test_systems_harness_smoke(half: str, tmp_path: Path) -> None:
    systems = HALVES[half]
    out = tmp_path / "systems.json"
    result = subprocess.run(
        [sys.executable, "benchmarks/systems.py", "--smoke", "--threads", "1",
         "--workloads", "W1", "--systems", ",".join(systems),
         "--out", str(out)],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = report["table"]["W1"]
    assert report["matmul_flops"] > 0
    for system in systems:
        row = rows[system]
        assert row["samples_per_sec"] > 0 and row["first_step_seconds"] > 0
        # MFU only > 0: in --smoke the matmul rate is a 0.2 s burst beside the other half's
        # processes, no bound for a system's rate (oneDNN tf measured 1.39 of it once).
        assert row["peak_rss_mb"] > 50 and row["mfu"] > 0
        # Ratios to torch.nn where it ran in the same harness run (the torch half).
        assert (row["vs_torch_nn"] is None) == (half == "tf")
        assert f"| W1 | {system} |" in result.stdout  # the printed table
    # The goals whose two systems are both in this half, with the ratio of its one round.
    expected = {"torch": {("dualtrain/torch", "fit/torch"), ("dualtrain/torch", "torch.nn")},
                "tf": {("dualtrain/tf", "tf.function"),
                       ("dualtrain/tf", "tf.function+onednn")}}[half]  # fmt: skip
    assert {(g["system"], g["against"]) for g in report["goals"]} == expected
    for goal in report["goals"]:
        ratio = rows[goal["system"]]["samples_per_sec"] / rows[goal["against"]]["samples_per_sec"]
        assert goal["per_round"] == [pytest.approx(ratio)]
        assert goal["median"] == goal["per_round"][0]
        assert goal["met"] == (goal["median"] >= goal["target"])
        name = f"{goal['system']} >= {goal['target']:.1f}x {goal['against']}"
        assert f"| W1 | {name} |" in result.stdout


def test_step_profile_splits_a_step_into_flop_ops_and_memory_ops(tmp_path: Path) -> None:
    out = tmp_path / "profile.json"
    result = subprocess.run(
        [sys.executable, "benchmarks/step_profile.py", "--workload", "W2", "--steps", "4",
         "--out", str(out)],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    # W2's matmuls, counted by torch for one step of 256 samples: the forward's
    # F = 2 * 256 * (784*512 + 512*512 + 512*10) FLOPs, as many for the weights' gradients, and
    # as many for the inputs' gradients less the first layer's (the data needs none).
    forward = 2 * 256 * (784 * 512 + 512 * 512 + 512 * 10)
    assert report["step_flops"] == 3 * forward - 2 * 256 * 784 * 512
    assert report["whole_step_graph"] is True
    assert 0 < report["mfu"] < 2 and report["flop_ops_seconds"] > 0
    assert "aten::mm" in report["ops"] or "aten::addmm" in report["ops"]
    assert "| op | ms/step | share |" in result.stdout


def test_zoo_step_times_dualtrains_step_against_the_torch_nn_twin() -> None:
    ours, theirs, ratio = _zoo_step_row("gru")
    assert ours > 0 and theirs > 0 and ratio == pytest.approx(theirs / ours, abs=0.01)
    # The update alone: the GRU's steps run an update graph.
    graph, keras, ratio = _zoo_step_row("gru", "--update")
    assert graph > 0 and keras > 0 and ratio == pytest.approx(keras / graph, abs=0.01)
    # A model without a torch.nn twin is refused in one line, naming the twins.
    result = subprocess.run(
        [sys.executable, "benchmarks/zoo_step.py", "--models", "lstm"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "lstm has no torch.nn twin; the zoo's twins: cnn_bn, gru, transformer"
    )


def _zoo_step_row(model: str, *args: str) -> tuple[float, ...]:
    """The figures of `model`'s row of a tiny `benchmarks/zoo_step.py` run."""
    result = subprocess.run(
        [sys.executable, "benchmarks/zoo_step.py", "--models", model, "--rounds", "1",
         "--steps", "3", *args],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    row = [line for line in result.stdout.splitlines() if line.startswith(f"| {model} |")]
    assert len(row) == 1, result.stdout
    return tuple(float(cell) for cell in row[0].strip("|").split("|")[1:])


def test_steps_per_execution_times_dualtrain_against_keras_fit(tmp_path: Path) -> None:
    out = tmp_path / "spe.json"
    result = subprocess.run(
        [sys.executable, "benchmarks/steps_per_execution.py", "--smoke", "--models", "ops_loss",
         "--per-call", "1,4", "--out", str(out)],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    runs = json.loads(out.read_text())
    rates = {(r["per_call"], r["system"]): r["samples_per_sec"] for r in runs}
    assert sorted(rates) == [(1, "dualtrain/tf"), (1, "fit/tf"), (4, "dualtrain/tf"), (4, "fit/tf")]
    assert all(len(v) == 1 and v[0] > 0 for v in rates.values())
    # The table's row for N=4: the medians (here the one round's) and their ratio.
    row = [line for line in result.stdout.splitlines() if line.startswith("| ops_loss | 4 |")]
    assert len(row) == 1, result.stdout
    cells = [c.strip() for c in row[0].strip("|").split("|")]
    ours, theirs = rates[(4, "dualtrain/tf")][0], rates[(4, "fit/tf")][0]
    assert cells[2:5] == [f"{ours:,.0f}", f"{theirs:,.0f}", f"{ours / theirs:.2f}x"]
