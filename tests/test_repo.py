"""README's set-up promises: two commands, one constraints file, CI runs command 2."""

from __future__ import annotations

import re

import pytest

from tests.conftest import REPO


def quick_start_commands() -> list[str]:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(?:bash|sh)\n(.+?)\n```", section, flags=re.S)


def test_readme_has_two_quick_start_commands_and_ci_runs_the_second() -> None:
    commands = quick_start_commands()
    assert len(commands) == 2
    train, test = commands
    assert "-c constraints.txt" in train and "python -m dualtrain" in train
    assert "-c constraints.txt" in test and "scripts/test" in test
    assert test in (REPO / ".ci" / "run").read_text()


def test_constraints_pin_the_known_good_versions() -> None:
    pins = dict(
        line.split(";")[0].strip().split("==")
        for line in (REPO / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    assert pins["torch"] == "2.13.0"
    assert pins["tensorflow-cpu"] == "2.21.0"
    assert pins["keras"] == "3.15.1"
    assert pins["hydra-core"].startswith("1.3.")


def test_backends_are_extras() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert set(extras) >= {"torch", "tf", "all", "dev"}
    assert not any(dep.startswith(("torch", "tensorflow")) for dep in project["dependencies"])
