"""The mlflow logger: a torch run and a tf run read back from a real MLflow tracking server through
its REST API; MLflow's limits on params; a server that is down."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, probe_cli
from tests.test_tensorboard import free_port, get_json, jsonl_series, post_json

# MLflow's usage telemetry off (MLflow's default is on): the tests reach only 127.0.0.1.
NO_TELEMETRY = {"MLFLOW_DISABLE_TELEMETRY": "true"}
# A few steps of the mlp: 2 epochs of 4 steps, a train line every 2 steps.
TINY_MLP = [
    "recipe=mlp",
    "data=synthetic",
    "data.num_samples=256",
    "trainer.max_epochs=2",
    "trainer.log_every_n_steps=2",
    "logger.progress=false",
    "logger=[jsonl,console,mlflow]",
]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `mlflow server` on 127.0.0.1 with its store under a temporary directory; stopped
    (its whole process group: the server starts uvicorn) whatever the tests do."""
    store = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    log = (store / "server.log").open("w")
    server = subprocess.Popen(
        [
            sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
            "--workers", "1", "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
            "--artifacts-destination", str(store / "artifacts"),
        ],
        cwd=store, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, **NO_TELEMETRY},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        # Start-up took about 9 s on this 2-core machine while shared; 120 s bounds a slow one.
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, (store / "server.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "mlflow server did not answer /health in 120 s"
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.3)  # not listening yet
        yield url
    finally:
        # A test's server keeps nothing: no graceful shutdown (uvicorn's took up to 27 s).
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
        log.close()


@pytest.mark.slow
def test_a_torch_and_a_tf_run_in_an_mlflow_server(mlflow_server: str, tmp_path: Path) -> None:
    api = f"{mlflow_server}/api/2.0/mlflow"
    run_dirs = {backend: tmp_path / backend for backend in ("torch", "tf")}
    # Both runs at once (each its own process, one framework each); the torch run also exports,
    # so its export report must reach MLflow after the run has ended.
    extra = {"torch": ["export.formats=[onnx]"], "tf": []}
    processes = {}
    for backend, run_dir in run_dirs.items():
        mlflow = [f"logger.mlflow.tracking_uri={mlflow_server}", "logger.mlflow.experiment=tiny"]
        command = [sys.executable, "-m", "dualtrain", f"backend={backend}", *TINY_MLP, *mlflow]
        processes[backend] = subprocess.Popen(
            [*command, f"hydra.run.dir={run_dir}", *extra[backend]],
            cwd=REPO,
            env={**os.environ, **NO_TELEMETRY},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    for backend, process in processes.items():
        output, _ = process.communicate(timeout=600)
        assert process.returncode == 0, f"{backend}: {output[-3000:]}"

    experiment = get_json(f"{api}/experiments/get-by-name?experiment_name=tiny")["experiment"]
    runs = post_json(f"{api}/runs/search", {"experiment_ids": [experiment["experiment_id"]]})
    by_backend = {}
    for run in runs["runs"]:
        tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
        by_backend[tags["backend"]] = (run, tags)
    assert set(by_backend) == {"torch", "tf"}

    for backend, (run, tags) in by_backend.items():
        run_id = run["info"]["run_id"]
        assert run["info"]["status"] == "FINISHED"
        assert tags["recipe"] == "mlp"
        assert tags["run_dir"] == str(run_dirs[backend].resolve())
        assert json.loads((run_dirs[backend] / "mlflow.json").read_text())["run_id"] == run_id
        params = {p["key"]: p["value"] for p in run["data"]["params"]}
        assert params["backend.name"] == backend
        assert params["recipe.name"] == "mlp"
        assert params["optimizer.lr"] == "0.001"
        assert params["trainer.max_epochs"] == "2"

        # Every metric of metrics.jsonl, under TensorBoard's names, at the same steps, with
        # the same float64 values (JSON in both places, no rounding).
        expected = jsonl_series(run_dirs[backend])
        assert set(expected) == {
            "train/loss", "train/lr", "train/samples_per_sec", "val/loss", "val/accuracy"
        }  # fmt: skip
        assert {m["key"] for m in run["data"]["metrics"]} == set(expected)
        for name, series in expected.items():
            query = urllib.parse.urlencode({"run_id": run_id, "metric_key": name})
            history = get_json(f"{api}/metrics/get-history?{query}")["metrics"]
            got = sorted((m["step"], m["value"]) for m in history)
            assert got == series, name

        listed = get_json(f"{api}/artifacts/list?run_id={run_id}")
        assert {f["path"] for f in listed["files"]} == (
            {"config.yaml", "summary.json", "export"}
            if backend == "torch"
            else {"config.yaml", "summary.json"}
        )
        # The artifact is the run directory's summary.json, byte for byte.
        with urllib.request.urlopen(
            f"{mlflow_server}/get-artifact?path=summary.json&run_uuid={run_id}", timeout=10
        ) as response:
            assert response.read() == (run_dirs[backend] / "summary.json").read_bytes()
    torch_id = by_backend["torch"][0]["info"]["run_id"]
    export = get_json(f"{api}/artifacts/list?run_id={torch_id}&path=export")
    assert [f["path"] for f in export["files"]] == ["export/report.json"]


def test_a_tracking_server_that_is_down_fails_the_run_at_its_start(tmp_path: Path) -> None:
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    result, imported = probe_cli(
        *TINY_MLP, f"logger.mlflow.tracking_uri={uri}", f"hydra.run.dir={tmp_path}",
        tmp_path=tmp_path, timeout=120, env=NO_TELEMETRY,
    )  # fmt: skip
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith(f"dualtrain: error: no MLflow tracking server answers at {uri}")
    assert "Traceback" not in result.stderr
    # Before any framework is imported, and the run's own record is written.
    assert imported == {"code": 1, "torch": False, "tensorflow": False}
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["steps"] == 0


@pytest.mark.slow
def test_params_keep_to_mlflow_limits_and_status_maps(
    mlflow_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in NO_TELEMETRY.items():
        monkeypatch.setenv(name, value)
    from mlflow.tracking import MlflowClient

    from dualtrain.logging.mlflow import MlflowLogger
    from dualtrain.settings import MlflowSettings

    uri = mlflow_server  # the server checks MLflow's limits itself
    # More params than one request takes (100), a value longer than MLflow's 6,000 characters,
    # and a key with characters MLflow refuses in names.
    hparams: dict[str, Any] = {f"recipe.model.k{i}": i for i in range(250)}
    hparams["recipe.model.text"] = "x" * 7000
    hparams["recipe.model.{odd}"] = True
    hparams["recipe.name"] = "mine"
    logger = MlflowLogger(tmp_path, "tf", MlflowSettings(tracking_uri=uri, experiment="limits"))
    logger.log_hparams(hparams, "recipe:\n  name: mine\n")
    logger.log_metrics("val", {"loss": 0.5}, step=3, epoch=0)
    logger.finalize({"status": "interrupted", "recipe": "mine"})

    run = MlflowClient(uri).get_run(logger.run_id)
    assert len(run.data.params) == 253
    assert run.data.params["recipe.model.k249"] == "249"
    assert run.data.params["recipe.model.text"] == "x" * 6000
    assert run.data.params["recipe.model._odd_"] == "True"
    assert run.data.tags["backend"] == "tf" and run.data.tags["recipe"] == "mine"
    assert run.data.metrics == {"val/loss": 0.5}
    assert run.info.status == "KILLED"  # interrupted (Ctrl-C, SIGTERM)


@pytest.mark.slow
def test_a_store_that_refuses_values_midway_costs_one_warning(
    mlflow_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    for name, value in NO_TELEMETRY.items():
        monkeypatch.setenv(name, value)
    from mlflow.tracking import MlflowClient

    from dualtrain.logging.mlflow import MlflowLogger
    from dualtrain.settings import MlflowSettings

    settings = MlflowSettings(tracking_uri=mlflow_server, experiment="refused")
    logger = MlflowLogger(tmp_path, "torch", settings)
    logger.log_metrics("train", {"loss": 1.0}, step=1, epoch=0)
    # Someone deletes the run while it trains: the server refuses what follows (400, no retry).
    MlflowClient(mlflow_server).delete_run(logger.run_id)
    logger.log_metrics("train", {"loss": 0.5}, step=2, epoch=0)
    logger.finalize({"status": "completed", "recipe": "mlp"})  # no exception: the run goes on

    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert warnings[0].startswith(f"mlflow: {mlflow_server} did not take run {logger.run_id}'s")
    assert "metrics.jsonl and summary.json have everything" in warnings[0]
