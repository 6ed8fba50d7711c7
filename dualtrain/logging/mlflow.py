"""An MLflow run per training run: params, tags, metrics and files, in a tracking store or server.

`logger=[jsonl,console,mlflow]`; `logger.mlflow.tracking_uri` (null: MLflow's own choice,
MLFLOW_TRACKING_URI or else sqlite:///mlflow.db in the working directory) and
`logger.mlflow.experiment` (null: the recipe's name). What is logged:

- params: the flattened config (the TensorBoard HParams entry's keys), values cut to MLflow's
  length limit; tags `backend`, `recipe` and `run_dir`; `config.yaml`, the composed config;
- metrics: the names and steps of TensorBoard's scalars (`train/loss`, `val/accuracy`, ...);
- at the end: `summary.json` as an artifact, the run's status as MLflow's (completed: FINISHED,
  failed: FAILED, interrupted: KILLED); with export, `export/report.json` (`log_export_report`).

The run's ids go to `<run_dir>/mlflow.json`. A tracking server that cannot be reached fails the run
at its start; one that stops answering later costs the MLflow run only (one warning), the run goes
on with its other loggers. mlflow is imported only when this logger is chosen.
"""

from __future__ import annotations

import functools
import json
import logging
import queue
import re
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from dualtrain.errors import RunError
from dualtrain.logging.base import Logger
from dualtrain.settings import LoggerSettings, MlflowSettings

log = logging.getLogger("dualtrain")

RUN_FILE = "mlflow.json"
# summary.json's status -> MLflow's RunStatus name
STATUS = {"completed": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}
# MLflow's documented limits (REST API, log-batch and Param): 100 params per request, values of
# at most 6,000 characters, names of at most 250 made of letters, digits, _ - . / and spaces;
# 1,000 metrics per request.
PARAMS_PER_REQUEST = 100
METRICS_PER_REQUEST = 1000
PARAM_VALUE_LENGTH = 6000
NAME_LENGTH = 250
_NOT_IN_NAMES = re.compile(r"[^\w\-./ ]")
# how long to wait for a tracking server's port before the run fails
CONNECT_TIMEOUT_S = 5.0
# metrics reach MLflow at most this often (TensorBoard's writer flushes every 10 s)
SEND_EVERY_S = 5.0
# how long the run's end waits for queued metrics to reach the store
FLUSH_TIMEOUT_S = 60.0


class MlflowLogger(Logger):
    @classmethod
    def create(cls, run_dir: Path, backend: str, settings: LoggerSettings) -> MlflowLogger:
        return cls(run_dir, backend, settings.mlflow)

    def __init__(self, run_dir: Path, backend: str, settings: MlflowSettings) -> None:
        try:
            from mlflow.tracking import MlflowClient
        except ImportError as err:
            raise RunError(
                f"logger=[...,mlflow] needs the mlflow package: pip install -c constraints.txt "
                f"'dualtrain[mlflow]' ({err})"
            ) from err

        uri = settings.tracking_uri
        if uri is not None and urllib.parse.urlsplit(uri).scheme in ("http", "https"):
            _check_reachable(uri)  # MLflow itself would retry for minutes
        self.run_dir = run_dir
        self._failed = False
        try:
            self.client = MlflowClient(tracking_uri=uri)
            self.tracking_uri = self.client.tracking_uri
            experiment_id = self._experiment_id(str(settings.experiment))
            self.run_id = self.client.create_run(
                experiment_id, tags={"backend": backend, "run_dir": str(run_dir.resolve())}
            ).info.run_id
        except Exception as err:  # MlflowException, or requests' errors from a REST store
            raise RunError(
                f"MLflow ({uri or 'its default store'}) could not start a run in experiment "
                f"{settings.experiment!r}: {_one_line(err)}"
            ) from err
        # Metrics go through a queue to a thread of their own (None: the run ended).
        self._metrics: queue.SimpleQueue[list[Any] | None] = queue.SimpleQueue()
        self._sender = threading.Thread(target=self._send_metrics, name="mlflow", daemon=True)
        self._sender.start()
        record = {"tracking_uri": self.tracking_uri, "experiment_id": experiment_id}
        (run_dir / RUN_FILE).write_text(json.dumps({**record, "run_id": self.run_id}) + "\n")
        log.info(
            "mlflow: run %s, experiment %r at %s",
            self.run_id,
            settings.experiment,
            self.tracking_uri,
        )

    def _experiment_id(self, name: str) -> str:
        from mlflow.exceptions import MlflowException

        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            return str(experiment.experiment_id)
        try:
            return str(self.client.create_experiment(name))
        except MlflowException as err:
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            # Another run (a sweep's job, the other backend) created it meanwhile.
            return str(self.client.get_experiment_by_name(name).experiment_id)  # type: ignore[union-attr]

    def log_hparams(
        self, hparams: Mapping[str, bool | int | float | str], config_yaml: str
    ) -> None:
        from mlflow.entities import Param

        # One value per name: two config keys may come out as one name once cleaned.
        params = [
            Param(name, value)
            for name, value in {
                _name(key): str(value)[:PARAM_VALUE_LENGTH] for key, value in hparams.items()
            }.items()
        ]
        for i in range(0, len(params), PARAMS_PER_REQUEST):
            batch = params[i : i + PARAMS_PER_REQUEST]
            self._send(functools.partial(self.client.log_batch, self.run_id, params=batch))
        recipe = str(hparams.get("recipe.name", ""))
        self._send(lambda: self.client.set_tag(self.run_id, "recipe", recipe))
        self._send(lambda: self.client.log_text(self.run_id, config_yaml, "config.yaml"))

    def log_metrics(self, split: str, metrics: Mapping[str, float], step: int, epoch: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._metrics.put([Metric(f"{split}/{k}", float(v), now, step) for k, v in metrics.items()])

    def finalize(self, summary: Mapping[str, Any]) -> None:
        self._metrics.put(None)
        self._sender.join(timeout=FLUSH_TIMEOUT_S)
        if self._sender.is_alive():  # a store that hangs: MLflow's own retries take minutes
            self._give_up(f"it took no metrics for {FLUSH_TIMEOUT_S:.0f} s")
        summary_path = self.run_dir / "summary.json"
        self._send(lambda: self.client.set_tag(self.run_id, "recipe", summary["recipe"]))
        if summary_path.is_file():
            self._send(lambda: self.client.log_artifact(self.run_id, str(summary_path)))
        status = STATUS.get(summary["status"], "FAILED")
        self._send(lambda: self.client.set_terminated(self.run_id, status))

    def _send_metrics(self) -> None:
        """The sender thread: the loop only queues its values. A request waited 30 ms (a server
        on this machine) to 45 ms (sqlite's commit) and took 3 to 6 ms of CPU with the GIL, about
        half a cnn step on the 2-core CPU, so values go at most every SEND_EVERY_S, together."""
        from mlflow.entities import Metric

        ended = False
        while not ended:
            batch: list[Metric] = []
            deadline: float | None = None  # SEND_EVERY_S after this batch's first value
            while not ended:
                wait: float | None = (
                    None if deadline is None else max(0.0, deadline - time.monotonic())
                )
                try:
                    item = self._metrics.get(timeout=wait)
                except queue.Empty:
                    break
                if item is None:
                    ended = True
                else:
                    batch += item
                    deadline = deadline or time.monotonic() + SEND_EVERY_S
            for i in range(0, len(batch), METRICS_PER_REQUEST):
                chunk = batch[i : i + METRICS_PER_REQUEST]
                self._send(functools.partial(self.client.log_batch, self.run_id, metrics=chunk))

    def _send(self, call: Callable[[], Any]) -> None:
        """Makes one MLflow call unless one failed before; a failure is one warning."""
        if self._failed:
            return
        try:
            call()
        except Exception as err:  # any failure of the store: this logger stops, the run goes on
            self._give_up(_one_line(err))

    def _give_up(self, why: str) -> None:
        self._failed = True
        log.warning(
            "mlflow: %s did not take run %s's values (%s); nothing more is sent to it, "
            "metrics.jsonl and summary.json have everything",
            self.tracking_uri,
            self.run_id,
            why,
        )


def log_export_report(run_dir: Path) -> None:
    """Adds `<run_dir>/export/report.json` to the MLflow run that `<run_dir>/mlflow.json` names
    (the run trained into `run_dir` has ended by the time its export is checked)."""
    record_path, report = run_dir / RUN_FILE, run_dir / "export" / "report.json"
    if not (record_path.is_file() and report.is_file()):
        return
    from mlflow.tracking import MlflowClient

    record = json.loads(record_path.read_text())
    try:
        MlflowClient(record["tracking_uri"]).log_artifact(record["run_id"], str(report), "export")
    except Exception as err:  # the export is written and checked; only MLflow's copy is missing
        log.warning("mlflow: could not add %s to run %s: %s", report, record["run_id"], err)


def _check_reachable(uri: str) -> None:
    parts = urllib.parse.urlsplit(uri)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname or "", port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as err:
        raise RunError(
            f"no MLflow tracking server answers at {uri} ({err.strerror or err}); start one "
            "(mlflow server --host 127.0.0.1 --port 5000) or set logger.mlflow.tracking_uri"
        ) from err


def _name(key: str) -> str:
    """A config key as an MLflow param name: characters MLflow refuses become `_`."""
    return _NOT_IN_NAMES.sub("_", key)[:NAME_LENGTH]


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())[:1000] or type(err).__name__
