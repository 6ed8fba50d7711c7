"""A static web page that runs a run's ONNX export in the browser (onnxruntime-web, WebAssembly).

    python -m dualtrain.web RUN_DIR [--port 8000] [--host 127.0.0.1]

RUN_DIR holds `export/onnx/model.onnx` and `export/report.json`, as written by a training run
with `export.formats=[onnx]` or by `python -m dualtrain mode=export checkpoint.path=...
export.formats=[onnx]`. The page is told the model's inputs and outputs (from report.json) and
predicts in the browser: nothing is computed on the server, which only hands out files.

What the page offers for an input is decided here, from its shape in report.json (`widget`):
a one-channel image (height, width, 1), such as the 8x8 digits, is drawn on a canvas (or
uploaded); a three-channel image is uploaded; anything else is typed as a row of numbers.

onnxruntime-web comes from the npm registry through the package.json and package-lock.json beside
this file: `npm ci` installs it once into `<cache>/web-<lockfile hash>/` (cache:
`$DUALTRAIN_CACHE`, else `~/.cache/dualtrain`), and only the three files the page loads are kept.
The page needs no network after that.

The server is the standard library's ThreadingHTTPServer with a fixed table of paths: the page,
its script and style, the lib files, the page's config and the model. Any other path, `..` or a
directory included, is a 404.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import shlex
import shutil
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn, TypeGuard

from dualtrain import installs
from dualtrain.errors import ConfigError, DualtrainError, RunError

PACKAGE_DIR = Path(__file__).resolve().parent
STATIC_DIR = PACKAGE_DIR / "static"
LOCKFILE = PACKAGE_DIR / "package-lock.json"
PACKAGE_JSON = PACKAGE_DIR / "package.json"
# The files of onnxruntime-web the page loads: the WebAssembly-only ES module build, and the
# Emscripten loader and binary it imports (the SIMD build; with numThreads = 1 it needs no
# SharedArrayBuffer, so no cross-origin isolation). Kept from the npm install, the rest dropped.
ORT_DIST = Path("node_modules") / "onnxruntime-web" / "dist"
LIB_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
DEFAULT_PORT = 8000
CLIENT_TIMEOUT_S = 30  # seconds a connection may take to send its request
# The page's own files, by URL path.
STATIC_FILES = {"/": "index.html", "/index.html": "index.html", "/app.js": "app.js",
                "/style.css": "style.css"}  # fmt: skip
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".wasm": "application/wasm",  # WebAssembly.instantiateStreaming insists on it
    ".onnx": "application/octet-stream",
}
# Where an image widget is offered: (height, width, channels) with these channel counts.
DRAW_CHANNELS = 1
IMAGE_CHANNELS = (1, 3)
FLOAT_DTYPES = ("float32", "float64")
# The dtypes the page can build a tensor of (onnxruntime-web's Tensor types, from typed arrays).
PAGE_DTYPES = (*FLOAT_DTYPES, "int8", "int16", "int32", "int64", "uint8", "uint16")


@dataclass(frozen=True)
class Export:
    """A run's ONNX export: the model file and what the page needs to know about it."""

    run_dir: Path
    model: Path
    config: dict[str, Any]


def find_export(run_dir: Path) -> Export:
    """The ONNX export in `run_dir`, checked, with the page's config.

    Raises:
        ConfigError: no such directory, no ONNX export in it (the message gives the command that
            writes one), or an export the page cannot take.
    """
    if not run_dir.is_dir():
        raise ConfigError(
            f"{run_dir} is not a directory; give the run directory of a run that exported onnx "
            "(it holds export/onnx/model.onnx)"
        )
    model = run_dir / "export" / "onnx" / "model.onnx"
    report_path = run_dir / "export" / "report.json"
    report = _read_json(report_path)
    formats = report.get("formats") if isinstance(report, dict) else None
    entry = formats.get("onnx") if isinstance(formats, dict) else None
    if not model.is_file() or not isinstance(entry, dict):
        raise ConfigError(_no_export(run_dir, model))
    # The file served is the one found now, and it must lie inside the run directory: a symbolic
    # link out of it (to ~/.ssh/..., /proc/self/environ) would hand that file to any client.
    served = model.resolve()
    if not served.is_relative_to(run_dir.resolve()):
        raise ConfigError(
            f"{model} is a link to {served}, outside {run_dir}; the server hands out only files "
            "inside the run directory: replace the link with a copy of the model it points to, "
            "if that is the model to serve"
        )
    if entry.get("status") != "ok":
        raise ConfigError(
            f"the onnx export in {run_dir} failed ({entry.get('error', 'no cause recorded')}); "
            f"{_export_command(run_dir)}"
        )
    return Export(run_dir, served, page_config(report, run_dir, served.stat().st_size))


def _no_export(run_dir: Path, model: Path) -> str:
    return f"{run_dir} has no ONNX export ({model} and its export/report.json); " + (
        _export_command(run_dir)
    )


def _export_command(run_dir: Path) -> str:
    """How to write an ONNX export of `run_dir`'s checkpoint into a directory of its own."""
    if not (run_dir / "checkpoints").is_dir() and not (run_dir / "trainer.json").is_file():
        return (
            "write one from a training run with python -m dualtrain mode=export "
            "checkpoint.path=<run dir> export.formats=[onnx] hydra.run.dir=<new dir>, then give "
            "that new dir"
        )
    # An export run writes into a directory of its own: a training run's is not reused.
    target = run_dir.parent / f"{run_dir.name}-onnx"
    return (
        "write one with python -m dualtrain mode=export "
        f"checkpoint.path={shlex.quote(str(run_dir))} export.formats=[onnx] "
        f"hydra.run.dir={shlex.quote(str(target))} and run python -m dualtrain.web "
        f"{shlex.quote(str(target))}"
    )


def page_config(report: Mapping[str, Any], run_dir: Path, model_bytes: int) -> dict[str, Any]:
    """What the page is told: each input with the widget that feeds it, each output with the
    activation that turns it into scores and its class names, and where the model came from.

    Raises:
        ConfigError: report.json does not describe the model's inputs and outputs.
    """
    onnx = report["formats"]["onnx"]
    inputs, outputs = report.get("inputs"), report.get("outputs")
    if not _ports(inputs) or not _ports(outputs):
        raise ConfigError(
            f"{run_dir / 'export' / 'report.json'} does not list the model's inputs and outputs "
            f"(name, shape, dtype); {_export_command(run_dir)}"
        )
    per_output = onnx.get("per_output")
    per_output = per_output if isinstance(per_output, dict) else {}
    classes = _class_names(report, run_dir)
    page_inputs = []
    for port in inputs:
        if port["dtype"] not in PAGE_DTYPES:
            raise ConfigError(
                f"the model's input {port['name']!r} is {port['dtype']}, which the page cannot "
                f"build; it takes inputs of {', '.join(PAGE_DTYPES)}"
            )
        page_inputs.append({**port, "widget": widget(port["shape"][1:], port["dtype"])})
    page_outputs = []
    for port in outputs:
        about = per_output.get(port["name"])
        task = about.get("task") if isinstance(about, dict) else None
        shape = port["shape"][1:]
        scores = len(shape) == 1 and shape[0] > 1
        activation = None
        if task == "classification" and scores:
            activation = "softmax"  # every classifier dualtrain ships returns logits
        elif task == "multilabel" and len(shape) == 1:
            activation = "sigmoid"
        names = classes.get(port["name"]) if len(outputs) > 1 else classes.get("")
        if names is not None and (len(shape) != 1 or len(names) != shape[0]):
            names = None
        page_outputs.append({**port, "task": task, "activation": activation, "classes": names})
    return {
        "recipe": report.get("recipe"),
        "run_dir": str(run_dir.resolve()),
        "checkpoint_backend": report.get("checkpoint_backend"),
        "checkpoint_step": report.get("checkpoint_step"),
        "onnx_max_abs_diff": onnx.get("max_abs_diff"),
        "opset": onnx.get("opset"),
        "model_bytes": model_bytes,
        "inputs": page_inputs,
        "outputs": page_outputs,
    }


def widget(shape: Sequence[int], dtype: str) -> str:
    """How the page feeds an input of one sample's `shape`: `draw` (a one-channel image drawn on
    a canvas, or uploaded), `image` (an uploaded image), or `numbers` (a row of typed numbers)."""
    image = len(shape) == 3 and dtype in FLOAT_DTYPES and shape[2] in IMAGE_CHANNELS
    if image:
        return "draw" if shape[2] == DRAW_CHANNELS else "image"
    return "numbers"


def _ports(ports: Any) -> TypeGuard[list[dict[str, Any]]]:
    return (
        isinstance(ports, list)
        and len(ports) > 0
        and all(
            isinstance(p, dict)
            and isinstance(p.get("name"), str)
            and isinstance(p.get("dtype"), str)
            and isinstance(p.get("shape"), list)
            and len(p["shape"]) >= 1
            and all(type(d) is int and d > 0 for d in p["shape"][1:])
            and math.prod(p["shape"][1:]) <= 1 << 24
            for p in ports
        )
    )


def _class_names(report: Mapping[str, Any], run_dir: Path) -> dict[str, list[str]]:
    """Class names by target name ("" for the only target): from the checkpoint's model_spec,
    else from export/data_transform.json (an image folder's class folders)."""
    names: dict[str, list[str]] = {}
    checkpoint = report.get("checkpoint")
    record = _read_json(Path(checkpoint) / "trainer.json") if isinstance(checkpoint, str) else {}
    spec = record.get("model_spec") if isinstance(record, dict) else None
    data = spec.get("data") if isinstance(spec, dict) else None
    targets = data.get("targets") if isinstance(data, dict) else None
    if isinstance(targets, list):
        for target in targets:
            found = target.get("classes") if isinstance(target, dict) else None
            if _strings(found):
                names[str(target.get("name"))] = list(found)
                if len(targets) == 1:
                    names[""] = list(found)
    transform = _read_json(run_dir / "export" / "data_transform.json")
    if "" not in names and isinstance(transform, dict) and _strings(transform.get("classes")):
        names[""] = list(transform["classes"])
    return names


def _strings(value: Any) -> TypeGuard[list[str]]:
    return isinstance(value, list) and len(value) > 0 and all(isinstance(s, str) for s in value)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


# --- onnxruntime-web, installed once from the lockfile ----------------------------------------


def ensure_libs(root: Path | None = None) -> Path:
    """The directory that holds `LIB_FILES`, installed with `npm ci` on first use, once for all
    processes (dualtrain/installs.py).

    Raises:
        RunError: npm is missing or the install failed (one line: what npm said).
    """
    target = (root or installs.cache_root()) / f"web-{installs.file_hash(LOCKFILE)}"
    with installs.building(target, RunError) as work:
        if work is not None:
            _install(work, target)
    return target / "lib"


def _install(work: Path, target: Path) -> None:
    version = _locked_version()
    print(
        f"dualtrain.web: installing onnxruntime-web {version} (npm ci, once) into {target}",
        flush=True,
    )
    installs.npm_ci(work, PACKAGE_JSON, LOCKFILE, f"onnxruntime-web {version}", RunError)
    lib = work / "lib"
    lib.mkdir()
    for name in LIB_FILES:
        source = work / ORT_DIST / name
        if not source.is_file():
            raise RunError(
                f"npm ci installed onnxruntime-web {version} without dist/{name}; the "
                "lockfile in dualtrain/web names a release the page does not fit"
            )
        shutil.copy2(source, lib / name)
    shutil.copy2(work / "node_modules" / "onnxruntime-web" / "package.json", lib / "ort.json")
    shutil.rmtree(work / "node_modules")


def _locked_version() -> str:
    lock = _read_json(LOCKFILE)
    entry = (lock.get("packages") or {}).get("node_modules/onnxruntime-web") or {}
    return str(entry.get("version", "?"))


# --- the server ---------------------------------------------------------------------------------


def routes(export: Export, lib: Path) -> dict[str, Path | bytes]:
    """Every URL path the server answers, and the file (or bytes) it answers with."""
    table: dict[str, Path | bytes] = {p: STATIC_DIR / name for p, name in STATIC_FILES.items()}
    table.update({f"/lib/{name}": lib / name for name in LIB_FILES})
    table["/model.onnx"] = export.model
    table["/config.json"] = json.dumps(
        {**export.config, "onnxruntime_web": _locked_version()}
    ).encode()
    return table


def make_server(table: Mapping[str, Path | bytes], host: str, port: int) -> ThreadingHTTPServer:
    """A server of `table` on host:port (port 0: a free one).

    Raises:
        RunError: the address cannot be bound.
    """

    class Handler(BaseHTTPRequestHandler):
        server_version = "dualtrain.web"
        sys_version = ""
        # A client that sends its request slowly, or not at all, is dropped after this long,
        # rather than holding its thread for ever.
        timeout = CLIENT_TIMEOUT_S

        def do_GET(self) -> None:
            self._answer(body=True)

        def do_HEAD(self) -> None:
            self._answer(body=False)

        def _answer(self, body: bool) -> None:
            path = self.path.split("?", 1)[0].split("#", 1)[0]
            found = table.get(path)
            if found is None:
                self.send_error(HTTPStatus.NOT_FOUND, "not found")
                return
            suffix = ".json" if isinstance(found, bytes) else found.suffix
            name = "index.html" if path == "/" else path
            content_type = CONTENT_TYPES.get(suffix, CONTENT_TYPES.get(Path(name).suffix))
            try:
                data = found if isinstance(found, bytes) else found.read_bytes()
            except OSError:
                self.send_error(HTTPStatus.NOT_FOUND, "gone")
                return
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", content_type or "application/octet-stream")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-cache")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.end_headers()
            if body:
                self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet: the terminal shows the one line that says where the page is

    try:
        server = ThreadingHTTPServer((host, port), Handler)
    except OSError as err:
        raise RunError(
            f"cannot serve on {host}:{port}: {err.strerror}; choose another --port (0 takes a "
            "free one) or --host"
        ) from err
    server.daemon_threads = True
    return server


# --- the command line ---------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        _exit(f"{message}; usage: python -m dualtrain.web RUN_DIR [--port N] [--host ADDRESS]", 2)


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m dualtrain.web RUN_DIR [--port N] [--host 127.0.0.1]`."""
    parser = _Parser(
        prog="python -m dualtrain.web",
        description="Serve a page that runs RUN_DIR's ONNX export in the browser "
        "(onnxruntime-web, WebAssembly): draw a digit, upload an image or type numbers.",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", type=Path,
                        help="a run directory with export/onnx/model.onnx")  # fmt: skip
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"port (default {DEFAULT_PORT}; 0 takes a free one)")  # fmt: skip
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1: this machine only)")  # fmt: skip
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        _exit(f"--port {args.port} is not a port; give 0 to 65535 (0 takes a free one)", 2)
    try:
        export = find_export(args.run_dir)
        lib = ensure_libs()
        server = make_server(routes(export, lib), args.host, args.port)
    except DualtrainError as err:
        _exit(str(err), err.exit_code)
    host, port = str(server.server_address[0]), server.server_address[1]
    shown = f"[{host}]" if ":" in host else host
    print(
        f"dualtrain.web: serving {export.model} at http://{shown}:{port}/ (Ctrl-C stops)",
        flush=True,
    )
    signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM stops it as Ctrl-C does: exit 0
    with contextlib.suppress(KeyboardInterrupt), server:
        server.serve_forever()


def _interrupt(signum: int, frame: FrameType | None) -> NoReturn:
    raise KeyboardInterrupt


def _exit(message: str, code: int) -> NoReturn:
    print("dualtrain.web: error: " + " ".join(message.split()), file=sys.stderr)
    sys.exit(code)
