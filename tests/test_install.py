"""Packaging: a non-editable install carries its configs and recipes, and runs from anywhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, TINY

# A pip install and a run from it: the full suite only.
pytestmark = pytest.mark.slow


def test_non_editable_install_runs_from_another_directory(tmp_path: Path) -> None:
    site = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(site),
            str(REPO),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert (site / "dualtrain" / "configs" / "recipe" / "cnn.yaml").is_file()
    assert (site / "dualtrain" / "recipes" / "cnn.py").is_file()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run(
        [sys.executable, "-c", "import dualtrain; print(dualtrain.__file__)"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert where.stdout.strip().startswith(str(site))  # the installed copy, not the checkout
    result = subprocess.run(
        [sys.executable, "-m", "dualtrain", *TINY, "hydra.run.dir=run"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads((elsewhere / "run" / "summary.json").read_text())["status"] == "completed"
