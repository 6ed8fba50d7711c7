"""`python -m dualtrain.web`: a cnn trained on the digits, exported to ONNX, run in real headless
Chromium (driven through the DevTools protocol), its prediction checked against the Keras model."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dualtrain.errors import ConfigError
from tests.conftest import REPO, run_cli

# Trains and exports in subprocesses, and starts a browser: the full suite only.
pytestmark = pytest.mark.slow

# The tests of the `runs` fixture: on one worker, so its run trains and exports once.
RUNS = pytest.mark.xdist_group("web_runs")
CHROMIUM = Path(os.environ.get("DUALTRAIN_CHROMIUM", "/usr/bin/chromium"))
# Three epochs of the digits: about 0.97 val accuracy, enough for a drawn 0 to read as a 0.
TRAIN = ["recipe=cnn", "data=digits", "backend=torch", "trainer.max_epochs=3",
         "logger.progress=false"]  # fmt: skip
WAIT_S = 60.0


# --- headless Chromium through the DevTools protocol ------------------------------------------


class Chromium:
    """Debian's headless Chromium with one page, driven over the DevTools protocol (websockets).

    Every wait is bounded; `close()` ends the browser (kill after 5 s)."""

    def __init__(self, executable: Path, profile: Path, size: tuple[int, int] = (1100, 760)):
        self.profile = profile
        profile.mkdir(parents=True, exist_ok=True)
        port_file = profile / "DevToolsActivePort"
        port_file.unlink(missing_ok=True)  # a stale one, from an earlier browser on this profile
        self.log = open(profile.parent / f"{profile.name}-chromium.log", "w")  # noqa: SIM115
        self.process = subprocess.Popen(
            [
                str(executable), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--no-default-browser-check", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-extensions",
                "--disable-dev-shm-usage", f"--user-data-dir={profile}",
                "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1",
                f"--window-size={size[0]},{size[1]}", "about:blank",
            ],
            stdout=subprocess.DEVNULL, stderr=self.log,
        )  # fmt: skip
        self.ws: Any = None
        self.next_id = 0
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.session: str | None = None
        try:
            self._attach(port_file, size)
        except BaseException:
            self.close()
            raise

    def _attach(self, port_file: Path, size: tuple[int, int]) -> None:
        from websockets.sync.client import connect

        deadline = time.monotonic() + 30
        while not (port_file.is_file() and len(port_file.read_text().split()) == 2):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"chromium did not start; see {self.log.name}")
            time.sleep(0.05)
        port, path = port_file.read_text().split()
        self.ws = connect(f"ws://127.0.0.1:{port}{path}", max_size=64 << 20, open_timeout=10)
        target = self.send("Target.createTarget", {"url": "about:blank"})
        attached = self.send(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
        )
        self.session = attached["sessionId"]
        self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": size[0], "height": size[1], "deviceScaleFactor": 1, "mobile": False},
        )
        for domain in ("Page", "Runtime", "Network"):
            self.send(f"{domain}.enable")

    def send(self, method: str, params: dict[str, Any] | None = None) -> Any:
        """One command to the page (to the browser before a page is attached); its result."""
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if self.session is not None:
            message["sessionId"] = self.session
        self.ws.send(json.dumps(message))
        deadline = time.monotonic() + WAIT_S
        while True:
            reply = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                self.events.append((reply["method"], reply.get("params", {})))

    def goto(self, url: str) -> None:
        self.send("Page.navigate", {"url": url})

    def evaluate(self, expression: str) -> Any:
        result = self.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = WAIT_S) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"{expression} stayed false for {timeout:.0f} s")
            time.sleep(0.05)

    def mouse(self, kind: str, x: float, y: float, pressed: bool) -> None:
        self.send("Input.dispatchMouseEvent", {
            "type": kind, "x": x, "y": y, "button": "left", "buttons": 1 if pressed else 0,
            "clickCount": 1,
        })  # fmt: skip

    def stroke(self, points: list[tuple[float, float]]) -> None:
        """Presses the left button at the first point, moves through the rest, releases."""
        self.mouse("mousePressed", *points[0], pressed=True)
        for x, y in points[1:]:
            self.mouse("mouseMoved", x, y, pressed=True)
        self.mouse("mouseReleased", *points[-1], pressed=False)

    def upload(self, selector: str, path: Path) -> None:
        """Chooses `path` in the file input `selector`, as a person picking a file would."""
        root = self.send("DOM.getDocument")["root"]["nodeId"]
        node = self.send("DOM.querySelector", {"nodeId": root, "selector": selector})["nodeId"]
        self.send("DOM.setFileInputFiles", {"files": [str(path)], "nodeId": node})

    def screenshot(self, path: Path) -> None:
        import base64

        shot = self.send("Page.captureScreenshot", {"format": "png"})
        path.write_bytes(base64.b64decode(shot["data"]))

    def requested(self) -> list[str]:
        """The URLs the page asked for (every Network.requestWillBeSent so far)."""
        return [p["request"]["url"] for m, p in self.events if m == "Network.requestWillBeSent"]

    def close(self) -> None:
        if self.ws is not None:
            with contextlib.suppress(Exception):
                self.ws.close()
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self.log.close()


def draw(browser: Chromium, strokes: list[list[tuple[float, float]]]) -> None:
    """Strokes on the page's drawing pad, each a list of points in [0, 1] of its width and
    height, drawn with the mouse as a person would."""
    left, top, width, height = browser.evaluate(
        "(() => { const r = document.querySelector('canvas.pad').getBoundingClientRect();"
        " return [r.left, r.top, r.width, r.height]; })()"
    )
    for stroke in strokes:
        browser.stroke([(left + u * width, top + v * height) for u, v in stroke])


def zero() -> list[list[tuple[float, float]]]:
    """A 0: one ellipse, drawn from the top."""
    return [[
        (0.5 + 0.22 * math.sin(t), 0.5 - 0.36 * math.cos(t))
        for t in (2 * math.pi * i / 48 for i in range(50))
    ]]  # fmt: skip


# --- the server --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serving(run: Path, env: dict[str, str] | None = None) -> Iterator[str]:
    """`python -m dualtrain.web RUN --port <free>` until the block ends; yields its URL."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "dualtrain.web", str(run), "--port", str(port)],
        cwd=REPO, env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        # The first start installs onnxruntime-web with npm (a few seconds from npm's cache).
        deadline = time.monotonic() + 300
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if process.poll() is not None:
                    raise AssertionError(f"the server ended: {process.stdout.read()}") from None  # type: ignore[union-attr]
                if time.monotonic() > deadline:
                    raise AssertionError("the server did not listen within 300 s") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/"
        # SIGTERM stops it as Ctrl-C does.
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
    finally:
        process.kill()
        process.wait(10)


def raw_get(url: str, target: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.0 request with `target` sent as it is (no client normalizes the path)."""
    host, port = url.split("//")[1].rstrip("/").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(f"{method} {target} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(1 << 16):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A digits cnn run without an export, the error line of the page for it, and the export
    written by the command that line gives."""
    root = tmp_path_factory.mktemp("web")
    run = root / "run"
    trained = run_cli(*TRAIN, f"hydra.run.dir={run}")
    assert trained.returncode == 0, trained.stderr[-3000:]
    refused = subprocess.run(
        [sys.executable, "-m", "dualtrain.web", str(run)],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    # The command the line gives, run as given.
    line = refused.stderr.strip()
    command = line.split("write one with python -m dualtrain ", 1)[1].split(" and run ")[0]
    exported = run_cli(*shlex.split(command))
    assert exported.returncode == 0, exported.stderr[-3000:]
    target = Path(line.rsplit("python -m dualtrain.web ", 1)[1])
    return {"run": run, "refused": refused, "export": target}


# --- tests -------------------------------------------------------------------------------------


@RUNS
def test_a_run_without_an_onnx_export_is_refused_with_the_command_that_writes_it(
    runs: dict[str, Any],
) -> None:
    refused, run = runs["refused"], runs["run"]
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.count("\n") == 1 and refused.stderr.startswith("dualtrain.web: error: ")
    assert f"{run} has no ONNX export" in refused.stderr
    assert (
        f"python -m dualtrain mode=export checkpoint.path={run} export.formats=[onnx] "
        f"hydra.run.dir={run}-onnx" in refused.stderr
    )
    # ... and that command wrote an export the page takes.
    assert runs["export"] == Path(f"{run}-onnx")
    assert (runs["export"] / "export" / "onnx" / "model.onnx").is_file()


@RUNS
def test_the_server_answers_only_its_own_paths(runs: dict[str, Any]) -> None:
    with serving(runs["export"]) as url:
        for path, content_type in [
            ("/", "text/html"), ("/app.js", "text/javascript"), ("/style.css", "text/css"),
            ("/config.json", "application/json"), ("/model.onnx", "application/octet-stream"),
            ("/lib/ort.wasm.min.mjs", "text/javascript"),
            ("/lib/ort-wasm-simd-threaded.wasm", "application/wasm"),
        ]:  # fmt: skip
            status, headers, body = raw_get(url, path)
            assert status == 200 and headers["content-type"].startswith(content_type), path
            assert int(headers["content-length"]) == len(body) > 0, path
        model = runs["export"] / "export" / "onnx" / "model.onnx"
        assert raw_get(url, "/model.onnx")[2] == model.read_bytes()
        config = json.loads(raw_get(url, "/config.json")[2])
        assert config["inputs"] == [
            {"name": "image", "shape": [None, 8, 8, 1], "dtype": "float32", "widget": "draw"}
        ]
        (output,) = config["outputs"]
        assert output["name"] == "logits" and output["activation"] == "softmax"
        head = raw_get(url, "/model.onnx", method="HEAD")
        assert head[0] == 200 and head[2] == b""
        for path in [
            "/../../../../etc/passwd", "/lib/../../../../etc/passwd", "/lib/../model.onnx",
            "/%2e%2e/%2e%2e/etc/passwd", "/..%2f..%2fetc%2fpasswd", "//etc/passwd",
            "/lib/", "/lib", "/static/app.js", "/export/onnx/model.onnx", "/export/report.json",
            "/package.json", "/index.html/..", "/__init__.py", "/lib/ort.json",
        ]:  # fmt: skip
            status, _, body = raw_get(url, path)
            assert status == 404 and b"root:" not in body, path
        assert raw_get(url, "/", method="POST")[0] == 501


@RUNS
def test_a_digit_drawn_in_chromium_is_predicted_as_the_keras_model_predicts_it(
    runs: dict[str, Any], tmp_path: Path
) -> None:
    if not CHROMIUM.is_file():
        pytest.skip(f"needs Debian's chromium at {CHROMIUM} (apt-get install -y chromium)")
    # A digit of the data as a PNG (0..16 -> 0..255), for the page's upload.
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    sample, label = digits.images[7], int(digits.target[7])
    png = tmp_path / "digit.png"
    Image.fromarray((sample / 16 * 255).round().astype("uint8"), "L").save(png)
    seen = []
    with serving(runs["export"]) as url:
        browser = Chromium(CHROMIUM, tmp_path / "profile")
        try:
            browser.goto(url)
            browser.wait_for("window.modelReady || window.pageError")
            for count, give in enumerate(
                [lambda: draw(browser, zero()), lambda: browser.upload("input[type=file]", png)],
                start=1,
            ):
                give()
                browser.wait_for(f"window.predictionCount >= {count} || window.pageError")
                assert browser.evaluate("window.pageError") is None
                seen.append({
                    "fed": browser.evaluate("window.lastInput.image"),
                    "result": browser.evaluate("window.lastResult"),
                    "shown": browser.evaluate(
                        "document.getElementById('predicted-logits').textContent"
                    ),
                })  # fmt: skip
            timing = browser.evaluate("[window.loadMs, window.sessionMs]")
            requested = browser.requested()
        finally:
            browser.close()
    print(f"page ready {timing[0]:.0f} ms (model {timing[1]:.0f} ms), first inference "
          f"{seen[0]['result']['inferenceMs']:.2f} ms")  # fmt: skip
    # The page ran offline: every file it asked for came from the server.
    assert requested and all(u.startswith(url) for u in requested), requested
    drawn, uploaded = (entry["fed"] for entry in seen)
    # What the page fed the model: one 8x8x1 image in [0, 1], ink where the 0 was drawn...
    assert drawn["shape"] == [1, 8, 8, 1] and drawn["dtype"] == "float32"
    pixels = drawn["values"]
    assert len(pixels) == 64 and min(pixels) >= 0 and max(pixels) <= 1 and max(pixels) > 0.5
    assert pixels[3 * 8 + 3] < 0.2 and pixels[4 * 8 + 4] < 0.2  # the 0's hole
    # ... and the uploaded digit scaled as the data source scales it (0..16 -> 0..1).
    want_pixels = (sample / 16).reshape(-1)
    assert max(abs(a - b) for a, b in zip(uploaded["values"], want_pixels, strict=True)) < 0.01
    # The Keras model, rebuilt from the checkpoint, on the same pixels.
    keras_logits = _keras_logits(runs["run"], [pixels, uploaded["values"]], tmp_path)
    for entry, want in zip(seen, keras_logits, strict=True):
        logits = entry["result"]["outputs"]["logits"]
        difference = max(abs(a - b) for a, b in zip(logits["values"], want, strict=True))
        print(f"page vs Keras logits: max abs diff {difference:.2g}")
        assert difference < 1e-4
        keras_class = max(range(10), key=want.__getitem__)
        assert logits["predicted"] == keras_class and entry["shown"] == str(keras_class)
        # The page's probabilities are the softmax of the logits.
        exp = [math.exp(v - max(want)) for v in want]
        softmax = [e / sum(exp) for e in exp]
        assert max(abs(a - b) for a, b in zip(logits["probabilities"], softmax, strict=True)) < 1e-4
    # A drawn 0 reads as a 0, the data's digit as its label.
    assert [entry["result"]["outputs"]["logits"]["predicted"] for entry in seen] == [0, label]


_KERAS = """
import json, sys
import numpy as np
import keras
from dualtrain.loading import load_model
model = load_model(sys.argv[1])
x = np.asarray(json.loads(open(sys.argv[2]).read()), dtype="float32").reshape(-1, 8, 8, 1)
print(json.dumps(keras.ops.convert_to_numpy(model(x, training=False)).tolist()))
"""


def _keras_logits(run: Path, images: list[list[float]], tmp_path: Path) -> list[list[float]]:
    """The logits of the checkpoint's Keras model (in a process of its own) for each image."""
    fed = tmp_path / "pixels.json"
    fed.write_text(json.dumps(images))
    done = subprocess.run(
        [sys.executable, "-c", _KERAS, str(run), str(fed)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return list(json.loads(done.stdout.strip().splitlines()[-1]))


# --- installing onnxruntime-web ---------------------------------------------------------------

# A stand-in for npm: `npm ci` that counts its calls, takes a second, and writes the files the
# page needs (or fails, with FAKE_NPM_FAIL set), so the lock and the rename are tested offline.
_FAKE_NPM = """#!/usr/bin/env python3
import os, pathlib, sys, time
assert sys.argv[1] == "ci" and pathlib.Path("package-lock.json").is_file()
with open(os.environ["FAKE_NPM_CALLS"], "a") as f:
    f.write(os.getcwd() + "\\n")
if os.environ.get("FAKE_NPM_FAIL"):  # what npm 11 prints when the registry is unreachable
    print("npm error code ECONNREFUSED\\nnpm error syscall connect\\nnpm error FetchError: "
          "request to https://registry.example/long failed, reason: connect ECONNREFUSED\\n"
          "npm error     at ClientRequest.<anonymous> (index.js:130:14)\\nnpm error\\n"
          "npm error A complete log of this run can be found in: /tmp/x.log", file=sys.stderr)
    sys.exit(1)
time.sleep(1)
dist = pathlib.Path("node_modules/onnxruntime-web/dist")
dist.mkdir(parents=True)
(dist.parent / "package.json").write_text("{}")
for name in ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm"):
    (dist / name).write_text(name)
"""


@pytest.fixture
def fake_npm(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    npm = bin_dir / "npm"
    npm.write_text(_FAKE_NPM)
    npm.chmod(0o755)
    return {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "FAKE_NPM_CALLS": str(tmp_path / "calls"),
        "DUALTRAIN_CACHE": str(tmp_path / "cache"),
    }


def test_concurrent_first_starts_install_once(fake_npm: dict[str, str], tmp_path: Path) -> None:
    code = "from dualtrain.web import ensure_libs; print(ensure_libs())"
    processes = [
        subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env={**os.environ, **fake_npm},
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]  # fmt: skip
    outputs = [p.communicate(timeout=60) for p in processes]
    assert all(p.returncode == 0 for p in processes), outputs
    libs = {out.strip().splitlines()[-1] for out, _ in outputs}
    (lib,) = libs
    assert Path(lib).parent.parent == Path(fake_npm["DUALTRAIN_CACHE"])
    assert sorted(os.listdir(lib)) == sorted(
        [
            "ort.wasm.min.mjs",
            "ort-wasm-simd-threaded.mjs",
            "ort-wasm-simd-threaded.wasm",
            "ort.json",
        ]
    )
    assert len(Path(fake_npm["FAKE_NPM_CALLS"]).read_text().splitlines()) == 1
    installing = [out for out, _ in outputs if "installing onnxruntime-web" in out]
    assert len(installing) == 1 and installing[0].count("\n") == 2  # its one line, then the path
    # Nothing is left of the temporary install directory.
    assert sorted(p.name for p in Path(lib).parent.parent.iterdir() if p.name.startswith(".")) == []


def test_a_failed_install_exits_1_with_one_line(
    fake_npm: dict[str, str], runs: dict[str, Any]
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "dualtrain.web", str(runs["export"]), "--port", "0"],
        cwd=REPO, env={**os.environ, **fake_npm, "FAKE_NPM_FAIL": "1"},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith("dualtrain.web: error: npm ci failed installing onnxruntime-web")
    assert (
        "(exit code 1: ECONNREFUSED: FetchError: request to https://registry.example/long "
        "failed, reason: connect ECONNREFUSED)" in done.stderr
    )
    cache = Path(fake_npm["DUALTRAIN_CACHE"])
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == []
    # Without npm at all: one line that says to install it.
    no_npm = subprocess.run(
        [sys.executable, "-c", "from dualtrain.web import main; main()", str(runs["export"])],
        cwd=REPO, env={**os.environ, "PATH": str(Path(sys.executable).parent),
                       "DUALTRAIN_CACHE": str(cache)},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert no_npm.returncode == 1 and no_npm.stderr.count("\n") == 1
    assert "npm is not on PATH" in no_npm.stderr


def test_usage_errors_exit_2_with_one_line(tmp_path: Path) -> None:
    # A model file that is a link out of the run directory would be handed to any client.
    linked = tmp_path / "linked"
    (linked / "export" / "onnx").mkdir(parents=True)
    port = {"name": "x", "shape": [None, 2], "dtype": "float32"}
    report = {"formats": {"onnx": {"status": "ok"}}, "inputs": [port], "outputs": [port]}
    (linked / "export" / "report.json").write_text(json.dumps(report))
    (linked / "export" / "onnx" / "model.onnx").symlink_to("/proc/self/environ")
    for args, said in [
        ([str(linked)], "is a link to /proc/"),
        ([], "the following arguments are required: RUN_DIR"),
        ([str(tmp_path / "missing")], "is not a directory"),
        ([str(tmp_path), "--port", "70000"], "is not a port"),
        ([str(tmp_path)], f"{tmp_path} has no ONNX export"),
    ]:
        done = subprocess.run(
            [sys.executable, "-m", "dualtrain.web", *args],
            cwd=REPO, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 2 and done.stderr.count("\n") == 1, (args, done.stderr)
        assert said in done.stderr, (args, done.stderr)


def test_a_silent_client_is_dropped_and_does_not_hold_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dualtrain.web as web

    monkeypatch.setattr(web, "CLIENT_TIMEOUT_S", 0.5)
    (tmp_path / "a.css").write_text("a")
    server = web.make_server({"/a.css": tmp_path / "a.css"}, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        with socket.create_connection(("127.0.0.1", server.server_address[1])) as slow:
            slow.sendall(b"GET /a.c")  # and nothing more
            assert raw_get(url, "/a.css")[0] == 200  # another client is answered meanwhile
            slow.settimeout(5)
            started = time.monotonic()
            assert slow.recv(100) == b""  # closed by the server
            assert time.monotonic() - started < 3
    finally:
        server.shutdown()
        server.server_close()


def test_a_crafted_report_is_data() -> None:
    from dualtrain.web import page_config

    port = {"name": "x", "shape": [None, 2], "dtype": "float32"}
    report = {"formats": {"onnx": {"per_output": ["x"]}}, "inputs": [port], "outputs": [port]}
    assert page_config(report, Path("run"), 1)["outputs"][0]["task"] is None
    with pytest.raises(ConfigError, match="does not list"):
        page_config({**report, "inputs": [{**port, "shape": [None, True]}]}, Path("run"), 1)


def test_widgets_follow_the_input_shapes() -> None:
    from dualtrain.web import widget

    assert widget([8, 8, 1], "float32") == "draw"
    assert widget([64, 64, 3], "float32") == "image"
    assert widget([30], "float32") == "numbers"
    assert widget([16], "int32") == "numbers"
    assert widget([8, 8, 2], "float32") == "numbers"
    assert widget([24, 24, 1], "int32") == "numbers"
