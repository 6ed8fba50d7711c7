"""dualtrain/compat.py, the framework-free hooks (Hydra, TensorBoard): each works on the pinned
versions, and takes its public fallback, with one log line, when its internal is taken away.
The Keras, torch and TensorFlow hooks are tested in tests/backend/test_compat.py."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator

import pytest

from dualtrain import compat


@pytest.fixture(autouse=True)
def _fresh_reports(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test sees the fallback lines as a new process would (one per hook)."""
    monkeypatch.setattr(compat, "_reported", set())
    yield


def _fallback_lines(caplog: pytest.LogCaptureFixture, hook: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "dualtrain" and r.getMessage().startswith(f"compat.{hook}:")
    ]


def test_the_versions_written_for_are_the_pinned_ones() -> None:
    from tests.conftest import REPO

    pins = dict(
        line.split("==", 1)
        for line in (REPO / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#") and ";" not in line
    )
    for library, version in compat.WRITTEN_FOR.items():
        name = "tensorflow-cpu" if library == "tensorflow" else library
        assert pins[name] == version, library


def test_share_hydra_config_repository(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from hydra._internal.config_loader_impl import ConfigLoaderImpl

    original = ConfigLoaderImpl.get_group_options
    monkeypatch.setattr(ConfigLoaderImpl, "get_group_options", original)  # restored afterwards
    with caplog.at_level(logging.INFO, logger="dualtrain"):
        assert compat.share_hydra_config_repository()
    assert ConfigLoaderImpl.get_group_options is not original
    assert not _fallback_lines(caplog, "share_hydra_config_repository")

    # Without the internal it leaves Hydra's own method in place and says so once.
    monkeypatch.setattr(ConfigLoaderImpl, "get_group_options", original)
    monkeypatch.delattr(ConfigLoaderImpl, "_parse_overrides_and_create_caching_repo")
    with caplog.at_level(logging.INFO, logger="dualtrain"):
        assert not compat.share_hydra_config_repository()
        assert not compat.share_hydra_config_repository()
    assert ConfigLoaderImpl.get_group_options is original
    assert len(_fallback_lines(caplog, "share_hydra_config_repository")) == 1


def test_help_lists_the_same_options_with_the_shared_repository() -> None:
    """The public result (Hydra's --help) is the same with and without the hook."""
    outputs = []
    for off in (False, True):
        script = (
            "import sys\nfrom dualtrain import cli, compat\n"
            + ("compat.share_hydra_config_repository = lambda: False\n" if off else "")
            + "sys.argv = ['dualtrain', '--help']\ncli.main()\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stderr
        outputs.append(result.stdout)
    assert outputs[0] == outputs[1]
    assert "recipe:" in outputs[0] or "== Configuration groups ==" in outputs[0]


def test_hydra_args_parser(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from hydra._internal import utils

    parser = compat.hydra_args_parser()
    assert parser is not None
    assert parser.parse_args(["a=1", "--multirun"]).overrides == ["a=1"]

    monkeypatch.delattr(utils, "get_args_parser")
    with caplog.at_level(logging.INFO, logger="dualtrain"):
        assert compat.hydra_args_parser() is None
    assert len(_fallback_lines(caplog, "hydra_args_parser")) == 1


def test_hydra_errors_unreported(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from hydra._internal import utils

    original = utils.run_and_report
    with compat.hydra_errors_unreported() as active:
        assert active
        with pytest.raises(ValueError, match="reaches the caller"):
            utils.run_and_report(lambda: (_ for _ in ()).throw(ValueError("reaches the caller")))
    assert utils.run_and_report is original  # restored

    # A run_and_report of another shape is left alone, with one line.
    monkeypatch.setattr(utils, "run_and_report", lambda function, extra: None)
    with caplog.at_level(logging.INFO, logger="dualtrain"):
        with compat.hydra_errors_unreported() as active:
            assert not active
        with compat.hydra_errors_unreported():
            pass
    assert len(_fallback_lines(caplog, "hydra_errors_unreported")) == 1


def test_config_errors_without_hydra_internals_leave_hydra_reporting(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from pathlib import Path

    from hydra._internal import utils

    from dualtrain import config_errors

    monkeypatch.delattr(utils, "get_args_parser")
    monkeypatch.delattr(utils, "run_and_report")
    with (
        caplog.at_level(logging.INFO, logger="dualtrain"),
        config_errors.hydra_errors_raised(["not an override"], Path(".")),
    ):
        pass  # the command line is not checked here: Hydra will report it
    assert len(_fallback_lines(caplog, "hydra_args_parser")) == 1
    assert len(_fallback_lines(caplog, "hydra_errors_unreported")) == 1


_TENSORBOARD = """
import logging, sys
logging.basicConfig(level=logging.INFO, format="%(name)s %(message)s")
{setup}
from dualtrain import compat
print("stub", compat.tensorboard_without_tensorflow())
print("tensorflow loaded", "tensorflow" in sys.modules)
"""


def test_tensorboard_without_tensorflow() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _TENSORBOARD.format(setup="")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "stub True" in result.stdout
    assert "tensorflow loaded False" in result.stdout
    assert "compat." not in result.stderr


def test_tensorboard_without_the_switch_says_so_once() -> None:
    # tensorboard.compat.tf resolved to something other than the stub: the switch did nothing.
    setup = (
        "import types, tensorboard.compat\ntensorboard.compat.tf = types.ModuleType('tensorflow')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", _TENSORBOARD.format(setup=setup)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "stub False" in result.stdout
    lines = [
        line
        for line in result.stderr.splitlines()
        if "compat.tensorboard_without_tensorflow" in line
    ]
    assert len(lines) == 1, result.stderr
    assert "tensorboard 2.21.0" in lines[0]
