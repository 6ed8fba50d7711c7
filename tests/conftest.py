"""Helpers for tests that run dualtrain's command line in subprocesses (no framework in-process)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]

# A small, fast run: synthetic data, two epochs of a few steps.
TINY = [
    "data=synthetic",
    "data.num_samples=256",
    "trainer.max_epochs=2",
    "trainer.log_every_n_steps=2",
    "logger.progress=false",
]

# Runs the CLI in this interpreter, then records which frameworks the process imported.
_PROBE = """
import json, os, sys
sys.argv = ["dualtrain", *json.loads(sys.argv[1])]
code = 0
try:
    from dualtrain.cli import main
    main()
except SystemExit as exit:
    code = exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1)
finally:  # by now the error line is written
    with open(os.environ["PROBE_OUT"], "w") as f:
        json.dump({"code": code, "torch": "torch" in sys.modules,
                   "tensorflow": "tensorflow" in sys.modules}, f)
sys.exit(code)
"""


def run_cli(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """`python -m dualtrain ARGS` in a new process; returns its exit code, stdout and stderr."""
    return subprocess.run(
        [sys.executable, "-m", "dualtrain", *args],
        cwd=cwd or REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def probe_cli(
    *args: str, tmp_path: Path, timeout: float = 300, env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """Like run_cli, and also reports whether torch or tensorflow got imported (an empty dict
    if the process ended before it could say)."""
    out = tmp_path / "probe.json"
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(list(args))],
        cwd=REPO,
        env={**os.environ, **(env or {}), "PROBE_OUT": str(out)},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return result, json.loads(out.read_text()) if out.is_file() else {}


def readme_recipe_example() -> tuple[str, str]:
    """The YAML and the Python of README's "Your own recipe": the tests run what users read."""
    section = (
        (REPO / "README.md").read_text().split("## Your own recipe", 1)[1].split("\n## ", 1)[0]
    )
    (yaml,) = re.findall(r"```yaml\n(.+?)```", section, flags=re.S)
    (python,) = re.findall(r"```python\n(.+?)```", section, flags=re.S)
    return yaml, python


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist, the slow tests first and the quick ones (no framework start-up) last:
    workers take tests in this order (xdist_groups first), so both finish on quick tests rather
    than one waiting on the other's last long one. Every module-scoped fixture's tests are in
    one xdist_group, which a worker runs as one block, so such a fixture is still set up once."""
    if "PYTEST_XDIST_WORKER" in os.environ:
        items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # a stable sort


# The small cnn that the export tests export: accuracy does not matter there (they compare each
# exported model with the Keras model on the same weights).
SMALL_CNN = ["recipe=cnn", "data=synthetic", "data.num_samples=300", "trainer.max_epochs=1"]


@pytest.fixture(scope="session")
def small_cnn(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """backend -> the run directory of SMALL_CNN trained on it: trained on first use, then shared
    (read only) by the tests in xdist_group "export", which one worker runs."""
    runs: dict[str, Path] = {}

    def run(backend: str) -> Path:
        if backend not in runs:
            run_dir = tmp_path_factory.mktemp(f"small-cnn-{backend}")
            result = run_cli(
                *SMALL_CNN, f"backend={backend}", "logger.progress=false",
                f"hydra.run.dir={run_dir}",
            )  # fmt: skip
            assert result.returncode == 0, result.stderr[-3000:]
            runs[backend] = run_dir
        return runs[backend]

    return run


@pytest.fixture
def repo() -> Path:
    return REPO
