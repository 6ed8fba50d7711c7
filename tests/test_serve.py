"""`python -m dualtrain.serve`: real servers on real exports, answering like the Keras model.

One tiny mlp run exported in every format and a two-input, two-output run exported to ONNX; each
format gets a server and requests in both protocols (TF Serving's REST API and KServe's v2), the
answers compared with the Keras model's on the same weights (`dualtrain.load_model`, in a torch
subprocess); the ONNX server also gets every kind of bad request, concurrent requests of several
samples (dynamic batching), and SIGTERM.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.backend.users import recipe_overrides
from tests.conftest import REPO

# Every test here trains, exports or serves in subprocesses: the full suite only. One worker runs
# them all, so the module's runs train and export once.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("serve")]

FORMATS = ["onnx", "torch", "saved_model", "tflite"]
TOLERANCE = 1e-4  # dualtrain.export.TOLERANCE: the runtimes order float32 sums differently
READY_SECONDS = 90
TWO_TOWERS = "tests.backend.users.two_towers"

# The Keras model of each run on given inputs, in a torch process: inputs and outputs by name.
_KERAS = """
import json, sys
import numpy as np
import keras
from dualtrain.loading import load_model
jobs = json.load(open(sys.argv[1]))
results = {}
for key, job in jobs.items():
    model = load_model(job["run"], backend="torch", recipe=job["recipe"])
    named = {k: np.asarray(v, dtype=job["dtypes"][k]) for k, v in job["inputs"].items()}
    got = model(named if len(named) > 1 else next(iter(named.values())), training=False)
    got = got if isinstance(got, dict) else {job["output"]: got}
    results[key] = {k: keras.ops.convert_to_numpy(v).tolist() for k, v in got.items()}
json.dump(results, open(sys.argv[2], "w"))
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 1-epoch mlp run on torch exported in every format, and a two-input, two-output run
    exported to ONNX: trained side by side."""
    base = tmp_path_factory.mktemp("serve")
    commands = {
        "mlp": ["recipe=mlp", f"export.formats=[{','.join(FORMATS)}]"],
        "two_towers": [
            *recipe_overrides("two_towers"), "export.formats=[onnx]",
        ],
    }  # fmt: skip
    started = {}
    for name, overrides in commands.items():
        log = open(base / f"{name}.log", "w")  # noqa: SIM115 - closed below
        command = [sys.executable, "-m", "dualtrain", *overrides, "backend=torch",
                   "trainer.max_epochs=1", "logger.progress=false",
                   f"hydra.run.dir={base / name}"]  # fmt: skip
        started[name] = (subprocess.Popen(command, cwd=REPO, stdout=log, stderr=log), log)
    for name, (process, log) in started.items():
        code = process.wait(timeout=600)
        log.close()
        assert code == 0, (base / f"{name}.log").read_text()[-3000:]
    return {name: base / name for name in commands}


RNG = np.random.default_rng(7)
MLP_X = RNG.normal(size=(5, 30)).round(3).astype("float32")
TOWERS_X = {
    "numbers": RNG.normal(size=(3, 4)).round(3).astype("float32"),
    "category": RNG.integers(0, 7, size=(3, 1)).astype("int32"),
}


@pytest.fixture(scope="module")
def keras_outputs(runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("keras")
    jobs = {
        "mlp": {
            "run": str(runs["mlp"]), "recipe": None, "output": "logits",
            "inputs": {"features": MLP_X.tolist()}, "dtypes": {"features": "float32"},
        },
        "two_towers": {
            "run": str(runs["two_towers"]), "recipe": TWO_TOWERS, "output": None,
            "inputs": {k: v.tolist() for k, v in TOWERS_X.items()},
            "dtypes": {"numbers": "float32", "category": "int32"},
        },
    }  # fmt: skip
    (folder / "jobs.json").write_text(json.dumps(jobs))
    result = subprocess.run(
        [sys.executable, "-c", _KERAS, str(folder / "jobs.json"), str(folder / "out.json")],
        cwd=REPO, env={**os.environ, "KERAS_BACKEND": "torch"}, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads((folder / "out.json").read_text())
    return {run: {k: np.asarray(v) for k, v in named.items()} for run, named in out.items()}


class Server:
    """A running `python -m dualtrain.serve` and a client for it."""

    def __init__(self, process: subprocess.Popen[str], port: int, log: Path) -> None:
        self.process, self.port, self.log = process, port, log

    def call(self, method: str, path: str, body: Any = None, raw: bytes | None = None):  # type: ignore[no-untyped-def]
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
            connection.request(method, path, data, {"Content-Type": "application/json"})
            response = connection.getresponse()
            return response.status, json.loads(response.read() or b"null")
        finally:
            connection.close()

    def post(self, path: str, body: Any = None, raw: bytes | None = None):  # type: ignore[no-untyped-def]
        return self.call("POST", path, body, raw)

    def get(self, path: str):  # type: ignore[no-untyped-def]
        return self.call("GET", path)

    def children(self) -> list[int]:
        """The server's process tree below it (LitServe's HTTP server, worker, manager)."""
        found, todo = [], [self.process.pid]
        parents: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                    parents.setdefault(int(stat[1]), []).append(int(entry))
        while todo:
            for child in parents.get(todo.pop(), []):
                found.append(child)
                todo.append(child)
        return found


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def serving(run: Path, tmp_path: Path, *options: str) -> Iterator[Server]:
    port = _free_port()
    log = tmp_path / f"server-{port}.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "dualtrain.serve", str(run), "--port", str(port), *options],
            cwd=REPO, stdout=out, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )  # fmt: skip
    server = Server(process, port, log)
    try:
        deadline = time.monotonic() + READY_SECONDS
        while True:
            assert process.poll() is None, f"the server exited: {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no answer in {READY_SECONDS} s: {log.read_text()}"
            # Ready: it answers, and it has said so (its start-up line comes once it answers).
            with contextlib.suppress(OSError):
                if server.get("/v2/health/ready")[0] == 200 and "serves" in log.read_text():
                    break
            time.sleep(0.2)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # whatever is left of its process group
        process.wait(timeout=30)


def _alive(pid: int) -> bool:
    """Running: a zombie (ended, not yet reaped by whoever adopted it) is not."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _close(got: Any, want: np.ndarray) -> None:
    got = np.asarray(got, dtype="float64")
    assert got.shape == want.shape
    assert np.max(np.abs(got - want)) <= TOLERANCE


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_answers_both_protocols_like_the_keras_model(
    fmt: str, runs: dict[str, Path], keras_outputs: dict, tmp_path: Path
) -> None:
    want = keras_outputs["mlp"]["logits"]
    with serving(runs["mlp"], tmp_path, "--format", fmt) as server:
        first = server.log.read_text().splitlines()[0]
        assert f"serves 'mlp' ({fmt}, " in first and f"127.0.0.1:{server.port}" in first
        status, answer = server.post("/v1/models/mlp:predict", {"instances": MLP_X.tolist()})
        assert status == 200, answer
        _close(answer["predictions"], want)
        body = {"inputs": [{"name": "features", "shape": [2, 30], "datatype": "FP32",
                            "data": MLP_X[3:].reshape(-1).tolist()}]}  # fmt: skip
        status, answer = server.post("/v2/models/mlp/infer", body)
        assert status == 200, answer
        (output,) = answer["outputs"]
        assert output["name"] == "logits" and output["datatype"] == "FP32"
        assert output["shape"] == [2, 2]
        _close(np.reshape(output["data"], output["shape"]), want[3:])


def test_bad_requests_get_400_batches_split_right_and_sigterm_ends_it(
    runs: dict[str, Path], keras_outputs: dict, tmp_path: Path
) -> None:
    want = keras_outputs["mlp"]["logits"]
    options = ("--format", "onnx", "--max-batch-size", "4", "--batch-timeout", "0.05",
               "--max-body-bytes", "20000", "--max-answer-values", "10")  # fmt: skip
    with serving(runs["mlp"], tmp_path, *options) as server:
        predict = "/v1/models/mlp:predict"
        good = {"instances": MLP_X[:1].tolist()}
        bad: list[tuple[str, Any, bytes | None, str]] = [
            ("malformed JSON", None, b'{"instances": [[1, 2,', "not valid JSON"),
            ("JSON nested too deeply", None, b"[" * 5000 + b"]" * 5000, "nested too deeply"),
            ("a wrong shape", {"instances": [[0.5] * 29]}, None, "[null, 30]"),
            ("columns of a wrong shape", {"inputs": [[0.5] * 31]}, None, "[null, 30]"),
            ("non-numeric values", {"instances": [["a"] * 30]}, None, "not numbers"),
            ("a value beyond float32", {"instances": [[1e300] * 30]}, None, "float32's range"),
            ("ragged rows", {"instances": [[0.5] * 30, [0.5] * 3]}, None, "ragged"),
            ("an unknown input name", {"instances": [{"feature": [0.5] * 30}]}, None, "'feature'"),
            ("neither instances nor inputs", {"rows": []}, None, "'rows'"),
            ("a body that is too large", {"instances": [[0.5] * 30] * 200}, None, "20,000"),
            ("a JSON array body", [1, 2], None, "JSON object"),
            ("a 5,000-digit number", None, b'{"instances": [[' + b"9" * 5000 + b"]]}", "4,300"),
            ("an answer too large", {"instances": [[0.5] * 30] * 6}, None, "send at most 5"),
        ]
        for what, body, raw, said in bad:
            status, answer = server.post(predict, body, raw)
            assert status == 400, (what, answer)
            assert said in answer["error"] and "\n" not in answer["error"], (what, answer)
            assert server.post(predict, good)[0] == 200, f"no answer after {what}"
        v2 = "/v2/models/mlp/infer"
        entry = {"name": "features", "shape": [1, 30], "datatype": "FP32", "data": [0.5] * 30}
        v2_bad = [
            ("a missing input", {"inputs": []}, "'features' is missing"),
            ("a wrong v2 shape", {"inputs": [{**entry, "shape": [1, 29]}]}, "[null, 30]"),
            ("too few values", {"inputs": [{**entry, "shape": [2, 30]}]}, "needs 60"),
            ("a wrong datatype", {"inputs": [{**entry, "datatype": "INT32"}]}, "FP32"),
            ("non-numeric data", {"inputs": [{**entry, "data": ["x"] * 30}]}, "not numbers"),
            ("an unknown output", {"inputs": [entry], "outputs": [{"name": "p"}]}, "'p'"),
            ("an id not a string", {"inputs": [entry], "id": {"a": 1}}, '"id" must be a string'),
        ]
        for what, body, said in v2_bad:
            status, answer = server.post(v2, body)
            assert status == 400 and said in answer["error"], (what, answer)
        assert server.post(v2, {"inputs": [entry]})[0] == 200
        # Another model name or version: TF Serving's 404 with {"error"}.
        status, answer = server.post("/v1/models/cnn:predict", good)
        assert status == 404 and "'mlp'" in answer["error"]
        assert server.post("/v1/models/mlp/versions/2:predict", good)[0] == 404
        assert server.post("/v1/models/mlp/versions/1:predict", good)[0] == 200
        assert server.get("/v2/models/cnn/ready")[0] == 404
        # Paths and methods the server does not have: {"error"} too, not FastAPI's {"detail"}.
        status, answer = server.get("/v1/model/mlp")
        assert status == 404 and "/v1/models/mlp" in answer["error"], answer
        assert server.get(predict) == (405, {"error": f"GET {predict}: predict takes POST"})
        status, answer = server.call("DELETE", v2)
        assert status == 405 and "does not take DELETE" in answer["error"], answer
        # Status and metadata, in each protocol's shape.
        assert server.get("/v1/models/mlp") == (200, {"model_version_status": [{
            "version": "1", "state": "AVAILABLE",
            "status": {"error_code": "OK", "error_message": ""}}]})  # fmt: skip
        status, meta = server.get("/v1/models/mlp/metadata")
        signature = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]
        assert signature["inputs"]["features"]["dtype"] == "DT_FLOAT"
        assert [d["size"] for d in signature["inputs"]["features"]["tensor_shape"]["dim"]] == [
            "-1",
            "30",
        ]
        assert server.get("/v2/health/live") == (200, {"live": True})
        assert server.get("/v2/health/ready") == (200, {"ready": True})
        assert server.get("/v2/models/mlp/ready") == (200, {"name": "mlp", "ready": True})
        status, meta = server.get("/v2/models/mlp")
        assert meta["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 30]}]
        assert meta["platform"] == "onnxruntime_onnx" and server.get("/v2")[1]["name"]
        # Concurrent requests of 1 to 5 samples, batched by the worker (up to 4 requests, 50 ms):
        # each answer is its own rows' outputs, in order.
        answers: dict[int, Any] = {}

        def ask(i: int) -> None:
            rows = [(i + k) % 5 for k in range(1 + i % 5)]
            status, answer = server.post(predict, {"instances": MLP_X[rows].tolist()})
            answers[i] = (rows, status, answer)

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert len(answers) == 16
        for rows, status, answer in answers.values():
            assert status == 200, answer
            _close(answer["predictions"], want[rows])
        # SIGTERM: exit 0, a last line, no process left behind.
        children = server.children()
        assert len(children) >= 2  # LitServe's HTTP server and inference worker at least
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=60) == 0
        lines = server.log.read_text().splitlines()
        assert lines[-1] == "dualtrain.serve: stopped (SIGTERM)", lines[-10:]
        assert "Traceback" not in server.log.read_text()
        deadline = time.monotonic() + 10
        while any(Path(f"/proc/{pid}").exists() for pid in children):
            assert time.monotonic() < deadline, "workers left behind"
            time.sleep(0.1)


def test_two_inputs_and_two_outputs_by_name(
    runs: dict[str, Path], keras_outputs: dict, tmp_path: Path
) -> None:
    want = keras_outputs["two_towers"]
    numbers, category = TOWERS_X["numbers"], TOWERS_X["category"]
    with serving(runs["two_towers"], tmp_path) as server:  # default format: onnx
        rows = [
            {"numbers": n.tolist(), "category": c.tolist()}
            for n, c in zip(numbers, category, strict=True)
        ]
        status, answer = server.post("/v1/models/two_towers:predict", {"instances": rows})
        assert status == 200, answer
        for name in ("kind", "value"):
            _close([p[name] for p in answer["predictions"]], want[name])
        columns = {"numbers": numbers.tolist(), "category": category.tolist()}
        status, answer = server.post("/v1/models/two_towers:predict", {"inputs": columns})
        assert status == 200 and set(answer["outputs"]) == {"kind", "value"}
        for name in ("kind", "value"):
            _close(answer["outputs"][name], want[name])
        body = {"id": "r1", "outputs": [{"name": "value"}], "inputs": [
            {"name": "category", "shape": [3, 1], "datatype": "INT32",
             "data": category.reshape(-1).tolist()},
            {"name": "numbers", "shape": [3, 4], "datatype": "FP32", "data": numbers.tolist()},
        ]}  # fmt: skip
        status, answer = server.post("/v2/models/two_towers/infer", body)
        assert status == 200 and answer["id"] == "r1"
        (value,) = answer["outputs"]
        assert value["name"] == "value" and value["shape"] == [3, 1]
        _close(np.reshape(value["data"], value["shape"]), want["value"])
        # A missing input and a non-integer id are the client's mistakes: 400, named.
        status, answer = server.post(
            "/v1/models/two_towers:predict", {"instances": [{"numbers": [0.0] * 4}]}
        )
        assert status == 400 and "'category'" in answer["error"]
        bad_id = {"instances": [{"numbers": [0.0] * 4, "category": [1.5]}]}
        status, answer = server.post("/v1/models/two_towers:predict", bad_id)
        assert status == 400 and "int32" in answer["error"]
        # A negative id: every runtime would take it from the end of the Embedding's table.
        negative = {"instances": [{"numbers": [0.0] * 4, "category": [-1]}]}
        status, answer = server.post("/v1/models/two_towers:predict", negative)
        assert status == 400 and "negative id (-1)" in answer["error"], answer
        # SIGKILL, which the command cannot handle: its processes end with it, none serves on.
        children = server.children()
        server.process.kill()
        deadline = time.monotonic() + 15
        while any(_alive(pid) for pid in children):
            assert time.monotonic() < deadline, "processes left serving after SIGKILL"
            time.sleep(0.1)


def _serve_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dualtrain.serve", *args],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_usage_errors_exit_2_with_one_line_saying_what_to_do(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    # A format whose export failed: report.json says so.
    failed = tmp_path / "failed"
    (failed / "export").mkdir(parents=True)
    report = json.loads((runs["mlp"] / "export" / "report.json").read_text())
    report["formats"]["tflite"] = {"status": "failed", "error": "the converter failed"}
    (failed / "export" / "report.json").write_text(json.dumps(report))
    # Crafted reports: data that is checked, never a traceback, never a file outside the run.
    crafted = {
        "shape": ("inputs", {"name": "features", "shape": "abc", "dtype": "float32"}),
        "dtype": ("inputs", {"name": "features", "shape": [None, 30], "dtype": "object"}),
        "formats": ("formats", ["onnx"]),
        "path": ("formats", {"onnx": {"status": "ok", "path": "../../../etc/passwd"}}),
    }
    for what, (key, value) in crafted.items():
        folder = tmp_path / f"crafted-{what}" / "export"
        folder.mkdir(parents=True)
        bad = {**report, key: [value] if key == "inputs" else value}
        (folder / "report.json").write_text(json.dumps(bad))
    crafted_said = {
        "shape": "inputs[0] is not {name, shape, dtype}", "dtype": "a dtype of bool, uint8",
        "formats": "formats is not an object", "path": "it must be a path inside",
    }  # fmt: skip
    cases = [
        ((str(tmp_path),), "mode=export recipe=RECIPE checkpoint.path="),  # no export/
        ((str(runs["mlp"]), "--format", "tfjs"), "use one of onnx, torch, saved_model, tflite"),
        ((str(runs["two_towers"]), "--format", "torch"), "export.formats=[torch]"),
        ((str(runs["two_towers"]), "--format", "torch"), "or serve one that is: --format onnx"),
        ((str(failed), "--format", "tflite"), "failed (the converter failed)"),
        ((str(runs["mlp"]), "--port", "80"), "from 1024 to 65535"),
        ((str(runs["mlp"]), "--host", "example.com"), "use one of 127.0.0.1, 0.0.0.0, ::"),
        ((str(runs["mlp"]), "--max-batch-size", "x"), "invalid int value"),
        *(((str(tmp_path / f"crafted-{k}"),), said) for k, said in crafted_said.items()),
        ((str(runs["mlp"]), "--name", "a b"), "cannot be a model name in a URL"),
    ]
    for args, said in cases:
        result = _serve_cli(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert said in result.stderr and len(result.stderr.strip().splitlines()) == 1, (
            args, result.stderr
        )  # fmt: skip
        assert result.stderr.startswith("dualtrain.serve: error: ")
    # SIGTERM as soon as the command can take it, before anything is started: exit 0 too.
    process = subprocess.Popen(
        [sys.executable, "-m", "dualtrain.serve", str(runs["mlp"]), "--port", str(_free_port())],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while not _catches_sigterm(process.pid):
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    out = process.communicate(timeout=60)[0]
    assert process.returncode == 0 and out.strip() == "dualtrain.serve: stopped (SIGTERM)", out


def _catches_sigterm(pid: int) -> bool:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signal.SIGTERM - 1) & 1)
    return False


def test_benchmark_smoke(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "serving.json"
    result = subprocess.run(
        [sys.executable, "benchmarks/serving.py", str(runs["mlp"]), "--smoke",
         "--formats", "onnx", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (row,) = json.loads(out.read_text())["rows"]
    assert row["format"] == "onnx" and row["errors"] == 0 and row["requests"] == 40
    assert row["requests_per_sec"] > 0 and 0 < row["p50_ms"] <= row["p99_ms"]
    assert row["peak_rss_mb"] > 50 and row["server_exit_code"] == 0
    assert "| onnx |" in result.stdout
