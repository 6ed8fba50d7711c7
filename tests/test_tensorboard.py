"""TensorBoard: the same tags and values as metrics.jsonl on both backends, read back by
TensorBoard's own reader and served by the real tensorboard server."""

from __future__ import annotations

import csv
import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, TINY, read_jsonl, run_cli

# Every test here trains in subprocesses (a framework start-up each): the full suite only.
pytestmark = pytest.mark.slow

ALL_LOGGERS = "logger=[jsonl,console,tensorboard,csv]"
TAGS = {"train/loss", "train/lr", "train/samples_per_sec", "val/loss", "val/accuracy"}
# The tests of the `logdir` fixture: on one worker, so its runs train once.
RUNS = pytest.mark.xdist_group("tensorboard_runs")


def jsonl_series(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """metrics.jsonl as TensorBoard tags: {"train/loss": [(step, value), ...], ...}."""
    series: dict[str, list[tuple[int, float]]] = {}
    for line in read_jsonl(run_dir / "metrics.jsonl"):
        for key, value in line.items():
            if key not in ("step", "epoch", "split", "backend", "time"):
                series.setdefault(f"{line['split']}/{key}", []).append((line["step"], value))
    return series


def train(run_dir: Path, backend: str, *extra: str) -> None:
    result = run_cli(f"backend={backend}", *TINY, f"hydra.run.dir={run_dir}", *extra)
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def logdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of two runs, `torch/` and `tf/`, each with every logger and histograms every 4
    steps."""
    root = tmp_path_factory.mktemp("runs")
    for backend in ("torch", "tf"):
        train(root / backend, backend, ALL_LOGGERS, "logger.histograms_every=4")
    return root


@RUNS
@pytest.mark.parametrize("backend", ["torch", "tf"])
def test_event_files_hold_what_metrics_jsonl_holds(backend: str, logdir: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    run_dir = logdir / backend
    events = EventAccumulator(
        str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0}
    )
    events.Reload()
    tags = events.Tags()
    expected = jsonl_series(run_dir)
    assert set(tags["scalars"]) == TAGS == set(expected)
    for tag in TAGS:
        got = [(e.step, e.value) for e in events.Scalars(tag)]
        assert [step for step, _ in got] == [step for step, _ in expected[tag]]
        # TensorBoard stores scalars as float32: equal to the JSON float64 within float32 rounding.
        assert [v for _, v in got] == pytest.approx([v for _, v in expected[tag]], rel=1e-6)

    # The composed config as text, and an HParams entry that names the backend.
    config = events.Tensors("config")[0].tensor_proto.string_val[0].decode()
    assert f"name: {backend}" in config and "recipe:" in config
    plugin = events.SummaryMetadata("_hparams_/session_start_info").plugin_data.content
    start = plugin_data_pb2.HParamsPluginData.FromString(plugin).session_start_info
    assert start.hparams["backend.name"].string_value == backend
    assert start.hparams["optimizer.lr"].number_value == pytest.approx(0.002)
    assert start.hparams["recipe.name"].string_value == "cnn"

    # Histograms every 4 steps: weights and gradients of every trainable variable.
    histograms = set(tags["histograms"])
    assert "weights/conv2d/kernel" in histograms and "gradients/logits/bias" in histograms
    assert len(histograms) == 16  # 8 variables (4 layers x kernel, bias), weights and gradients
    assert [e.step for e in events.Histograms("gradients/conv2d/kernel")] == [4, 8]

    # metrics.csv holds the same values, long form.
    with (run_dir / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    from_csv: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        from_csv.setdefault(f"{row['split']}/{row['name']}", []).append(
            (int(row["step"]), float(row["value"]))
        )
    assert from_csv == expected


def test_loggers_are_chosen_from_the_logger_group(tmp_path: Path) -> None:
    train(tmp_path, "torch", "logger=[jsonl]")
    assert (tmp_path / "metrics.jsonl").is_file()
    assert not (tmp_path / "tensorboard").exists() and not (tmp_path / "metrics.csv").exists()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def post_json(url: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@RUNS
def test_tensorboard_server_shows_a_torch_and_a_tf_run(logdir: Path) -> None:
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tensorboard.main",
            "--logdir",
            str(logdir),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--load_fast",
            "false",
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}/data/plugin/scalars"
    runs = {"torch": "torch/tensorboard", "tf": "tf/tensorboard"}
    try:
        deadline = time.monotonic() + 90
        tags: dict[str, Any] = {}
        while set(tags) != set(runs.values()):
            assert server.poll() is None, "tensorboard exited"
            assert time.monotonic() < deadline, f"tensorboard served only {sorted(tags)}"
            time.sleep(0.5)
            try:
                tags = get_json(f"{base}/tags")
            except OSError:
                continue  # not listening yet
        for backend, run in runs.items():
            assert set(tags[run]) == TAGS
            expected = jsonl_series(logdir / backend)
            for tag in ("train/loss", "val/accuracy"):
                query = urllib.parse.urlencode({"run": run, "tag": tag})
                points = get_json(f"{base}/scalars?{query}")  # [[wall_time, step, value], ...]
                assert [(step, pytest.approx(value, rel=1e-6)) for _, step, value in points] == (
                    expected[tag]
                )
        # The HParams dashboard: one session per run, told apart by backend.name, with the val
        # scalars as its metric columns.
        hparams = f"http://127.0.0.1:{port}/data/plugin/hparams"
        experiment = post_json(f"{hparams}/experiment", {"experimentName": ""})
        assert {"val/loss", "val/accuracy"} <= {m["name"]["tag"] for m in experiment["metricInfos"]}
        groups = post_json(f"{hparams}/session_groups", {
            "experimentName": "", "startIndex": 0, "sliceSize": 10,
            "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_RUNNING"],
            "colParams": [{"metric": {"group": "", "tag": "val/accuracy"}}],
        })["sessionGroups"]  # fmt: skip
        assert sorted(g["hparams"]["backend.name"] for g in groups) == ["tf", "torch"]
    finally:
        server.terminate()
        server.wait(timeout=30)
