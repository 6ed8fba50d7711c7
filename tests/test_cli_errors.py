"""Mistakes that Hydra meets (bad overrides, unknown keys and options, broken YAML, a run directory
that cannot be made) end like dualtrain's own: one `dualtrain: error:` line, exit code 2.

The table of such mistakes is part of tests/test_catalogue.py; here are the checks around it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dualtrain.settings import OPTIMIZER_KWARGS, OPTIMIZER_KWARGS_SET_BY
from tests.conftest import REPO, probe_cli, run_cli


def _user_dir(tmp_path: Path, text: str) -> Path:
    user = tmp_path / "user"
    (user / "recipe").mkdir(parents=True)
    (user / "recipe" / "mine.yaml").write_text(text)
    return user


def test_python_tags_in_a_user_config_are_refused(tmp_path: Path) -> None:
    user = _user_dir(
        tmp_path, "# @package _global_\nrecipe:\n  name: !!python/name:os.system\n  module: x\n"
    )
    result = run_cli("--config-dir", str(user), "recipe=mine", f"hydra.run.dir={tmp_path}/r")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"dualtrain: error: {user}/recipe/mine.yaml, line 3, column 9: the YAML tag "
        "!!python/name:os.system is not allowed; configs hold plain values (strings, numbers, "
        "true/false, null, lists, mappings); name Python code by its import path as a string, "
        "e.g. module: my_recipe"
    ]


def test_config_mistakes_fail_before_any_framework_is_imported(tmp_path: Path) -> None:
    for args in (["+trainer.max_epoch=5"], ["recipe=cnnn"], ["+optimizer.betaa=0.9"]):
        result, imported = probe_cli(*args, f"hydra.run.dir={tmp_path}/r", tmp_path=tmp_path)
        assert imported == {"code": 2, "torch": False, "tensorflow": False}, result.stderr


def test_hydra_full_error_shows_the_traceback(tmp_path: Path) -> None:
    result = run_cli("recipe=cnnn", f"hydra.run.dir={tmp_path}", env={"HYDRA_FULL_ERROR": "1"})
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "MissingConfigException" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["--cfg", "job", "+optimizer.weight_decay=0.1", "+data.noise_scale=2"],
        ["--cfg", "job", "+recipe.model.width=3", "+callbacks.mine._target_=a.B"],
        ["--cfg", "job", "debug=fast_dev_run", "optimizer=sgd"],
    ],
)
def test_keys_that_are_passed_on_still_compose(args: list[str]) -> None:
    result = run_cli(*args, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_help_imports_no_framework(tmp_path: Path) -> None:
    result, imported = probe_cli("--help", tmp_path=tmp_path)
    assert result.returncode == 0 and "recipe: " in result.stdout
    assert imported == {"code": 0, "torch": False, "tensorflow": False}


@pytest.mark.slow
def test_optimizer_keys_match_the_keras_signatures() -> None:
    """The table of optimizer arguments is checked without Keras; here it is held to Keras."""
    code = (
        "import inspect, json, keras\n"
        "from dualtrain.engines.state import _OPTIMIZERS\n"
        "print(json.dumps({name: sorted(set(inspect.signature(getattr(keras.optimizers, cls))"
        ".parameters) - {'kwargs'}) for name, cls in _OPTIMIZERS.items()}))\n"
    )
    env = {**os.environ, "KERAS_BACKEND": "torch"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True
    )
    signatures = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(signatures) == set(OPTIMIZER_KWARGS)
    for name, accepted in signatures.items():
        assert sorted(set(OPTIMIZER_KWARGS[name]) | set(OPTIMIZER_KWARGS_SET_BY)) == accepted


def test_hydra_full_error_shows_the_cause_of_dualtrains_own_errors(tmp_path: Path) -> None:
    """The one line stays, with its exit code; before it, the chain down to NumPy's error."""
    (tmp_path / "d.npz").write_bytes(b"PK\x03\x04 not really a zip")
    args = ["recipe=mlp", "data=npz", f"data.path={tmp_path / 'd.npz'}"]
    plain = run_cli(*args, f"hydra.run.dir={tmp_path}/plain")
    full = run_cli(*args, f"hydra.run.dir={tmp_path}/full", env={"HYDRA_FULL_ERROR": "1"})
    assert plain.returncode == full.returncode == 1
    assert "Traceback" not in plain.stderr
    assert "The above exception was the direct cause of the following exception" in full.stderr
    assert full.stderr.strip().splitlines()[-1] == plain.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_a_type_error_inside_build_model_is_the_recipes_own(tmp_path: Path) -> None:
    """Not reported as a recipe.model key that build_model does not take (it takes them all)."""
    user = tmp_path / "user"
    (user / "recipe").mkdir(parents=True)
    (user / "recipe" / "broken.yaml").write_text(
        "# @package _global_\nrecipe:\n  name: broken\n  module: broken_recipe\n  model:\n"
        "    units: 4\n"
    )
    (user / "broken_recipe.py").write_text(
        "def build_model(data, units):\n    return len(units)  # a bug: int has no len()\n\n"
        "def loss():\n    return None\n"
    )
    result = run_cli("--config-dir", str(user), "recipe=broken", f"hydra.run.dir={tmp_path}/r")
    assert result.returncode == 1
    line = result.stderr.strip().splitlines()[-1]
    assert "TypeError: object of type 'int' has no len()" in line
    assert "does not take the keys" not in line
