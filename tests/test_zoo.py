"""benchmarks/zoo.py: how it reads the way dualtrain ran its steps (fast, no framework), and its
tiny smoke run on two models of the zoo, one half per framework (slow: it trains in subprocesses).

Benchmarks are not timed tests; these check that the harness measures and reports, not how fast
anything is.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from tests.conftest import REPO

BENCHMARKS = REPO / "benchmarks"


def _zoo() -> ModuleType:
    """benchmarks/zoo.py as a module (it imports machine_load from benchmarks/, as a script)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location("zoo_benchmark", BENCHMARKS / "zoo.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCHMARKS))


zoo = _zoo()

LOG_CAPTURED = (
    "[2026-11-30 16:36:58,171][dualtrain][INFO] - torch steps run with the forward pass and loss "
    "as captured graphs (backend.capture_forward; debug=eager for pdb)\n"
)
LOG_REFUSED = (
    "[t][dualtrain][INFO] - backend.capture_forward: the model runs eagerly, as plain Keras on "
    "torch: layer dropout (Dropout) draws from a seeded generator\n"
    "[t][dualtrain][INFO] - torch steps run eagerly (plain Keras on torch)\n"
)
LOG_FAILED_AT_FIRST_STEP = LOG_CAPTURED + (
    "[t][dualtrain][INFO] - backend.capture_forward: the model loss runs eagerly, as plain Keras "
    "on torch (same results, slower steps): it reads a tensor's value on the host\n"
)
LOG_EVAL_ONLY = LOG_CAPTURED + (
    "[t][dualtrain][INFO] - backend.capture_forward: the eval forward pass runs eagerly, as plain "
    "Keras on torch (same results, slower steps): an op it cannot record\n"
)


def test_step_record_from_the_summary() -> None:
    record = {"mode": "as graphs", "captured": False, "not_captured_because": "a reason"}
    for key in ("step_capture", "steps"):  # either name; "steps" only where it is a dict
        got = zoo.step_record({key: record, **({} if key == "steps" else {"steps": 12})}, "")
        assert got == {**record, "source": "summary.json"}
        assert zoo.describe_steps(got) == "eager: a reason"
    # The record wins over the log.
    assert zoo.step_record({"step_capture": record}, LOG_CAPTURED)["captured"] is False


def test_whole_step_or_forward_graph_on_torch() -> None:
    base = {"mode": "m", "captured": True, "not_captured_because": None}
    whole = zoo.step_record({"step_capture": {**base, "whole_step": True}}, "")
    assert zoo.describe_steps(whole) == "whole step"
    forward = zoo.step_record(
        {"step_capture": {**base, "whole_step": False, "whole_step_not_captured_because": "SGD"}},
        "",
    )
    assert forward["whole_step_not_captured_because"] == "SGD"
    assert zoo.describe_steps(forward) == "forward graph (whole step: SGD)"
    record = {**base, "whole_step": False, "whole_step_not_captured_because": "a GRU"}
    both = zoo.step_record({"step_capture": {**record, "update_graph": True}}, "")
    assert both["update_graph"] is True
    assert zoo.describe_steps(both) == "forward and update graphs (whole step: a GRU)"


def test_step_record_from_the_log_where_the_summary_has_none() -> None:
    summary = {"steps": 135, "status": "completed"}  # steps: the step count, not a record
    captured = zoo.step_record(summary, LOG_CAPTURED)
    assert captured["captured"] is True and captured["source"] == "log"
    assert zoo.describe_steps(captured) == "graph"
    refused = zoo.step_record(summary, LOG_REFUSED)
    assert refused["captured"] is False
    reason = "layer dropout (Dropout) draws from a seeded generator"
    assert refused["not_captured_because"] == reason
    assert zoo.describe_steps(refused).startswith("eager: layer dropout")
    # Capture may fail only at the first step, after the line that says the steps are captured.
    failed = zoo.step_record(summary, LOG_FAILED_AT_FIRST_STEP)
    assert failed["captured"] is False
    assert failed["not_captured_because"] == "it reads a tensor's value on the host"
    # The eval forward pass is not a train step.
    assert zoo.step_record(summary, LOG_EVAL_ONLY)["captured"] is True


def test_unknown_and_unexplained_steps_are_not_silent() -> None:
    nothing = zoo.step_record({"steps": 3}, "")
    assert nothing["captured"] is None and zoo.describe_steps(nothing) == "?"
    unexplained = zoo.step_record({}, "[t][dualtrain][INFO] - torch steps run eagerly (plain)\n")
    assert unexplained["captured"] is False
    assert zoo.describe_steps(unexplained) == "eager: NO REASON GIVEN"
    # Both are listed below the table, with the graph run left out.
    table = {
        "a": {"steps": {"dualtrain/torch": [nothing]}},
        "b": {"steps": {"dualtrain/torch": [unexplained], "dualtrain/tf": [{"captured": True}]}},
    }
    assert [(f["model"], f["system"]) for f in zoo.fallbacks(table)] == [
        ("a", "dualtrain/torch"),
        ("b", "dualtrain/torch"),
    ]


def test_every_zoo_model_has_its_recipe() -> None:
    assert len(zoo.MODELS) >= 12
    shipped = REPO / "dualtrain/configs/recipe"
    for model in zoo.MODELS.values():
        folder = shipped if model.shipped else zoo.ZOO / "recipe"
        config = yaml.safe_load((folder / f"{model.recipe}.yaml").read_text())
        assert config["recipe"]["name"] == model.recipe
        if not model.shipped:  # the user-style recipes bring their own data
            assert config["data"]["source"].startswith("zoo_recipes:")
            assert (zoo.ZOO / f"{config['recipe']['module']}.py").exists()
    assert {m.name for m in zoo.MODELS.values() if m.torch_nn} >= {"cnn_bn", "gru", "transformer"}


def test_unknown_models_and_systems_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        zoo.parse_args(["--models", "gru,grue"])
    assert "unknown model(s) ['grue']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        zoo.parse_args(["--systems", "torch.nn,jax"])
    assert "unknown system(s) ['jax']" in capsys.readouterr().err


# -- the smoke run ------------------------------------------------------------------------------

MODELS = ["gru", "mlp_dropout"]
# Two halves, one per framework, so two pytest-xdist workers run them side by side. The torch
# half turns capture off, so that its rows are fallbacks whatever dualtrain learns to capture:
# each must carry the reason dualtrain gives.
HALVES = {
    "torch": (["dualtrain/torch", "torch+keras", "torch.nn"], ["backend.capture_forward=false"]),
    "tf": (["dualtrain/tf", "tf.function"], []),
}


@pytest.mark.slow
@pytest.mark.parametrize("half", sorted(HALVES))
def test_zoo_smoke(half: str, tmp_path: Path) -> None:
    systems, overrides = HALVES[half]
    out = tmp_path / "zoo.json"
    result = subprocess.run(
        [sys.executable, "benchmarks/zoo.py", "--smoke", "--models", ",".join(MODELS),
         "--systems", ",".join(systems), "--out", str(out),
         *[f"--override={o}" for o in overrides]],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["failures"] == []
    assert report["environment"]["versions"]
    table = report["table"]
    assert list(table) == MODELS
    dualtrain = systems[0]
    for name in MODELS:
        row = table[name]
        # Every system ran, except torch.nn where the model has no torch.nn twin (mlp_dropout).
        expected = [s for s in systems if s != "torch.nn" or zoo.MODELS[name].torch_nn]
        assert sorted(row["systems"]) == sorted(expected)
        for entry in row["systems"].values():
            for rate in ("samples_per_sec", "samples_per_cpu_sec"):  # wall and CPU time
                assert math.isfinite(entry[rate]) and entry[rate] > 0
            assert entry["first_step_seconds"] > 0 and entry["peak_rss_mb"] > 50
        # The ratios of the pairs that ran, each from its one round.
        pairs = {(s, b) for s, b, _ in zoo.RATIOS if s in expected and b in expected}
        assert {(r["system"], r["against"]) for r in row["ratios"].values()} == pairs
        for ratio in row["ratios"].values():
            rates = row["systems"]
            expect = (
                rates[ratio["system"]]["samples_per_sec"]
                / (rates[ratio["against"]]["samples_per_sec"])
            )
            assert ratio["per_round"] == [pytest.approx(expect)]
            assert math.isfinite(ratio["median"]) and ratio["median"] > 0
            assert ratio["met"] == (ratio["median"] >= ratio["goal"])
            cpu = (
                rates[ratio["system"]]["samples_per_cpu_sec"]
                / (rates[ratio["against"]]["samples_per_cpu_sec"])
            )
            assert ratio["cpu_per_round"] == [pytest.approx(cpu)] == [ratio["cpu_median"]]
        # How dualtrain ran the steps: one record, from the summary or the log.
        [record] = row["steps"][dualtrain]
        assert record["source"] in ("summary.json", "log")
        assert isinstance(record["mode"], str) and record["mode"]
        if half == "torch":  # capture off: a fallback, with dualtrain's reason
            assert record["captured"] is False
            reason = record["not_captured_because"]
            assert isinstance(reason, str) and reason.strip()
        else:
            assert record["captured"] is True
        # The printed table: the row, its ratios and how the steps ran.
        # The ratios table, then the same from CPU time.
        line, cpu_line = [x for x in result.stdout.splitlines() if x.startswith(f"| {name} |")]
        cpu_cells = [c.strip() for c in cpu_line.strip("|").split("|")]
        assert cpu_cells[1:] == [
            f"{row['ratios'][f'{s} : {b}']['cpu_median']:.2f}x"
            if f"{s} : {b}" in row["ratios"]
            else "-"
            for s, b, _ in zoo.RATIOS
        ]
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == 10
        for (system, base), cell in zip(
            [(s, b) for s, b, _ in zoo.RATIOS], cells[1:4], strict=True
        ):
            key = f"{system} : {base}"
            shown = f"{row['ratios'][key]['median']:.2f}x" if key in row["ratios"] else "-"
            assert cell == shown
        assert cells[9] == ("-" if half == "tf" else zoo.describe_steps(record))
    # The fallbacks are listed below the table too, each with its reason.
    found = report["fallbacks"]
    if half == "torch":
        assert [f["model"] for f in found] == MODELS
        for f in found:
            assert f"- {f['model']}, dualtrain/torch: eager: " in result.stdout
            assert f["not_captured_because"] in result.stdout
    else:
        assert found == []
