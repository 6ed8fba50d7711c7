"""Every model style, end to end across the backends: trained on torch, resumed on tf (which
exports every format), evaluated on torch from the checkpoint alone.

The recipes are tests/backend/users/: Sequential, a subclassed model with its own build, a
functional model around a user's own Layer, a subclassed model built on its first call (with
BatchNorm and Dropout), and a functional model with two named inputs and two named outputs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.backend.users import recipe_overrides
from tests.conftest import run_cli

pytestmark = pytest.mark.slow  # three processes and four exports per case: 40-60 s each

FORMATS = ["saved_model", "tflite", "onnx", "torch"]


def recipe(module: str, *overrides: str) -> list[str]:
    return recipe_overrides(module, "logger.progress=false", *overrides)


STYLES = {
    "sequential": (recipe("styles", "+recipe.model.style=sequential"), "accuracy"),
    "subclassed-own-build": (
        recipe("styles", "+recipe.model.style=subclassed_build"),
        "accuracy",
    ),
    "custom-layer": (recipe("styles", "+recipe.model.style=custom_layer"), "accuracy"),
    "subclassed-batchnorm": (recipe("subclassed"), "accuracy"),
    "two-inputs-two-outputs": (recipe("two_towers"), "kind/accuracy"),
}


@pytest.mark.parametrize("style", sorted(STYLES))
def test_a_model_style_resumes_on_the_other_backend_evaluates_and_exports(
    style: str, tmp_path: Path
) -> None:
    overrides, metric = STYLES[style]
    run = tmp_path / "run"
    first = run_cli(*overrides, "backend=torch", "trainer.max_epochs=1", f"hydra.run.dir={run}")
    assert first.returncode == 0, first.stderr[-3000:]
    second = run_cli(
        *overrides, "backend=tf", "trainer.max_epochs=2", "checkpoint.resume=auto",
        f"export.formats=[{','.join(FORMATS)}]", f"hydra.run.dir={run}",
    )  # fmt: skip
    assert second.returncode == 0, second.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["status"], summary["epochs"]) == ("completed", 2)
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["backend"] for x in lines if x["split"] == "val"] == ["torch", "tf"]
    report = json.loads((run / "export" / "report.json").read_text())
    assert {name: f["status"] for name, f in report["formats"].items()} == dict.fromkeys(
        FORMATS, "ok"
    )
    # The checkpoint on the other backend (a recipe that does not ship with dualtrain is named,
    # never taken from the checkpoint): the same weights give the same val metric.
    evaluated = tmp_path / "eval"
    third = run_cli(
        *overrides, "mode=eval", f"checkpoint.path={run}", "backend=torch",
        f"hydra.run.dir={evaluated}",
    )  # fmt: skip
    assert third.returncode == 0, third.stderr[-3000:]
    metrics = json.loads((evaluated / "eval.json").read_text())["metrics"]
    assert metrics[metric] == pytest.approx(summary["final"]["val"][metric], abs=1e-6)
