"""TensorFlow.js: a graph model (`model.json` and weight shards), converted from a SavedModel and
checked with `@tensorflow/tfjs` in Node.

Written in the TensorFlow-backend export process, which trains and exports with its own
TensorFlow; the converter (`tensorflowjs` 4.22.0) needs TensorFlow 2.19 and TF-DF, so it runs in a
virtual environment of its own, made once under the cache directory (`$DUALTRAIN_CACHE`, else
`~/.cache/dualtrain`) from the pinned `tfjs_env/converter-requirements.txt`, and reused. The Node
side is `npm ci` from `tfjs_env/package-lock.json` into the same cache, also once. Both are made
under a lock file, in a temporary directory renamed into place when complete, so two exports at
once wait for one install. One Node process per written model serves every check call (JSON lines
over its stdin and stdout) and ends with the export process.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import json
import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import IO, Any

import numpy as np

from dualtrain import installs
from dualtrain.export import ExportFailure, ExportJob, Port, Written
from dualtrain.export.tensorflow import _write_saved_model

CONVERTER_VERSION = "4.22.0"  # tensorflowjs on PyPI, pinned in converter-requirements.txt
FILES = Path(__file__).with_name("tfjs_env")
REQUIREMENTS = FILES / "converter-requirements.txt"
PACKAGE_JSON = FILES / "package.json"
LOCKFILE = FILES / "package-lock.json"
RUNNER = FILES / "runner.js"
# A first export downloads 849 MB of wheels (2.8 GB installed) and @tensorflow/tfjs (294 MB
# installed); generous for slow links.
PIP_TIMEOUT_S = 1800
CONVERT_TIMEOUT_S = 900
# Node's answer to one call: loading a model or running a batch (a hung process fails the format).
NODE_TIMEOUT_S = 300
# model.json's signature dtypes (TensorFlow's DataType names) as NumPy names.
DTYPES = {
    "DT_FLOAT": "float32",
    "DT_INT32": "int32",
    "DT_BOOL": "bool",
    "DT_INT64": "int64",
    "DT_DOUBLE": "float64",
    "DT_STRING": "string",
}


def write_tfjs(job: ExportJob) -> Written:
    """A TensorFlow.js graph model (`model.json`, `group1-shard*.bin`) converted from the
    SavedModel `saved_model` writes, with its `serving_default` signature: inputs and outputs
    keyed by the model's names, any batch size. Loaded back with `tf.loadGraphModel` in Node."""
    model, directory, signature = job.model, job.directory, job.signature
    batch = job.batch
    converter = ensure_converter()
    node_env = ensure_node_runtime()
    with tempfile.TemporaryDirectory(prefix=".tfjs-saved_model-", dir=directory.parent) as tmp:
        saved = Path(tmp) / "saved_model"
        _write_saved_model(model, saved, signature)
        _convert(converter, saved, directory)
    model_json = json.loads((directory / "model.json").read_text(encoding="utf-8"))
    inputs, input_keys = _ports(model_json, "inputs", signature.inputs)
    outputs, output_keys = _ports(model_json, "outputs", signature.outputs)
    node = _NodeModel(node_env, directory)
    asked = [output_keys.get(p.name, p.name) for p in signature.outputs]
    to_port = {key: name for name, key in output_keys.items()}

    def run(named: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        got = node.call({input_keys.get(k, k): v for k, v in named.items()}, asked)
        return {to_port.get(k, k): v for k, v in got.items()}

    # Node's own time for a batch, without the pipe and the JSON: the median of 20 calls after
    # 3 warm-up calls, as the report's latency (which includes them) is measured.
    fed = {input_keys.get(k, k): v for k, v in signature.feed(batch).items()}
    times = node.call(fed, asked, repeat=23, timed=True)
    details: dict[str, Any] = {
        "converter": f"tensorflowjs {CONVERTER_VERSION} (tf_saved_model -> tfjs_graph_model)",
        "converted_by": model_json.get("convertedBy"),
        "signature": "serving_default",
        "inputs": {e["name"]: e["shape"] for e in inputs},
        "outputs": [e["name"] for e in outputs],
        "weight_files": sorted(
            p for group in model_json.get("weightsManifest", []) for p in group.get("paths", [])
        ),
        "in_node_latency_ms_per_batch": round(float(np.median(times[3:])), 4),
    }
    return Written(
        path=directory,
        run=run,
        signature=signature,
        runtime=node.runtime,
        interface={"inputs": inputs, "outputs": outputs},
        details=details,
    )


# --- the model.json signature ------------------------------------------------------------------


def _ports(
    model_json: dict[str, Any], side: str, ports: tuple[Port, ...]
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """model.json's inputs or outputs as {"name", "shape" (None for -1), "dtype"}, in the
    signature's order, named as the model's ports; and each port's key in model.json.

    The converter keys a SavedModel signature's inputs by their names (or by tensor, `image:0`)
    and its outputs by the signature's output keys; a key that matches no port keeps its own name,
    so the common check reports the mismatch."""
    entries = (model_json.get("signature") or {}).get(side) or {}
    names = {p.name for p in ports}
    found: list[dict[str, Any]] = []
    keys: dict[str, str] = {}
    for key, entry in entries.items():
        name = next(
            (
                n
                for n in (key, _tensor_name(key), _tensor_name(entry.get("name", "")))
                if n in names
            ),
            key,
        )
        keys[name] = key
        found.append({"name": name, "shape": _shape(entry), "dtype": _dtype(entry)})
    order = {p.name: i for i, p in enumerate(ports)}
    return sorted(found, key=lambda e: order.get(e["name"], len(order))), keys


def _tensor_name(name: str) -> str:
    return re.sub(r":\d+$", "", name)


def _shape(entry: dict[str, Any]) -> list[int | None] | None:
    shape = entry.get("tensorShape") or {}
    if shape.get("unknownRank"):
        return None
    sizes = [int(d.get("size", -1)) for d in shape.get("dim", [])]
    return [None if s < 0 else s for s in sizes]


def _dtype(entry: dict[str, Any]) -> str:
    given = str(entry.get("dtype", ""))
    return DTYPES.get(given, given.removeprefix("DT_").lower())


# --- the converter, in its own environment -----------------------------------------------------


def converter_dir(root: Path | None = None) -> Path:
    """Where the converter's environment lives: named by its version and its pins' hash, so a
    changed pin list gets a new environment beside the old one."""
    name = f"tfjs-converter-{CONVERTER_VERSION}-{installs.file_hash(REQUIREMENTS)}"
    return (root or installs.cache_root()) / name


def node_runtime_dir(root: Path | None = None) -> Path:
    """Where `npm ci` put @tensorflow/tfjs: named by its version and the lockfile's hash."""
    name = f"tfjs-node-{_tfjs_version()}-{installs.file_hash(LOCKFILE)}"
    return (root or installs.cache_root()) / name


def ensure_converter(root: Path | None = None) -> Path:
    """The Python of the converter's environment, made on first use.

    Raises:
        ExportFailure: it could not be made (one line: what failed and what to do).
    """
    target = converter_dir(root)
    python = target / "bin" / "python"
    if installs.complete(target):
        return python
    if sys.version_info < (3, 11):  # jax 0.10, pandas 3 and scipy 1.17 have no wheels for it
        raise ExportFailure(
            f"the TensorFlow.js converter's environment is pinned for Python 3.11 and 3.12, and "
            f"this is Python {sys.version_info[0]}.{sys.version_info[1]}; run the export with "
            "Python 3.11 or 3.12"
        )
    with installs.building(target, ExportFailure) as work:
        if work is not None:
            print(
                f"export: tfjs: installing the TensorFlow.js converter (tensorflowjs "
                f"{CONVERTER_VERSION} with TensorFlow 2.19, about 2.8 GB, once) into {target}",
                flush=True,
            )
            _make_converter_env(work, target)
    return python


def _make_converter_env(work: Path, target: Path) -> None:
    log = target.with_name(target.name + ".log")
    # The venv's interpreter is the one running dualtrain (symlinked, so the environment works
    # once renamed into place); -I keeps this process's PYTHONPATH and user site out of it.
    steps = [
        ([sys.executable, "-m", "venv", str(work)], 120),
        (
            [str(work / "bin" / "python"), "-I", "-m", "pip", "install", "--no-deps",
             "--only-binary=:all:", "--disable-pip-version-check", "--no-input",
             "-r", str(REQUIREMENTS)],
            PIP_TIMEOUT_S,
        ),
        # Imports what the conversion imports: a broken pin fails here, once, not per export.
        ([str(work / "bin" / "python"), "-I", "-c",
          "import tensorflowjs.converters.converter"], 300),
    ]  # fmt: skip
    with open(log, "w", encoding="utf-8") as out:
        for command, timeout in steps:
            out.write(f"$ {' '.join(command)}\n")
            out.flush()
            try:
                done = subprocess.run(
                    command, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, env=_env()
                )
            except subprocess.TimeoutExpired as err:
                raise ExportFailure(
                    f"installing the TensorFlow.js converter into {target} took over {timeout} s "
                    f"(see {log}); check that PyPI is reachable and export again"
                ) from err
            if done.returncode != 0:
                said = _error_line(log.read_text(encoding="utf-8", errors="replace"))
                raise ExportFailure(
                    f"could not install the TensorFlow.js converter (tensorflowjs "
                    f"{CONVERTER_VERSION}, pinned for Python 3.11 and 3.12) into {target}: "
                    f"{said} (log: {log}); check that PyPI is reachable, or set DUALTRAIN_CACHE "
                    "to a writable disk with 3 GB free, and export again"
                )


def _convert(python: Path, saved: Path, directory: Path) -> None:
    arguments = [
        "--input_format=tf_saved_model",
        "--output_format=tfjs_graph_model",
        "--signature_name=serving_default",
        "--saved_model_tags=serve",
        # A recurrent layer's loop stays one While op, which tfjs runs (executeAsync); lowered
        # to v1 control flow (Enter, Merge, NextIteration) over TensorLists it cannot compute
        # the outputs.
        "--control_flow_v2=True",
        str(saved),
        str(directory),
    ]
    # convert() takes the command line's arguments as a list: paths with spaces stay whole.
    code = "import json, sys; from tensorflowjs.converters.converter import convert; "
    code += "convert(json.loads(sys.argv[1]))"
    env = {**_env(), "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "-1"}
    try:
        done = subprocess.run(
            [str(python), "-I", "-c", code, json.dumps(arguments)],
            capture_output=True,
            text=True,
            timeout=CONVERT_TIMEOUT_S,
            env=env,
        )
    except subprocess.TimeoutExpired as err:
        raise ExportFailure(
            f"the TensorFlow.js converter did not finish in {CONVERT_TIMEOUT_S} s"
        ) from err
    if done.returncode != 0 or not (directory / "model.json").is_file():
        said = _error_line(done.stderr or done.stdout)
        raise ExportFailure(f"the TensorFlow.js converter failed: {said}")


# --- TensorFlow.js in Node ---------------------------------------------------------------------


def ensure_node_runtime(root: Path | None = None) -> Path:
    """The directory whose node_modules hold @tensorflow/tfjs, installed with `npm ci` on first
    use.

    Raises:
        ExportFailure: npm is missing or the install failed.
    """
    target = node_runtime_dir(root)
    if installs.complete(target):
        return target
    if shutil.which("node") is None:
        raise ExportFailure(
            "tfjs is checked with @tensorflow/tfjs in Node.js, and node is not on PATH; install "
            "Node.js with npm (20 is tested; e.g. apt-get install nodejs npm) and export again"
        )
    with installs.building(target, ExportFailure) as work:
        if work is not None:
            version = _tfjs_version()
            print(
                f"export: tfjs: installing @tensorflow/tfjs {version} (npm ci, once) into {target}",
                flush=True,
            )
            what = f"@tensorflow/tfjs {version}"
            installs.npm_ci(work, PACKAGE_JSON, LOCKFILE, what, ExportFailure)
    return target


class _NodeModel:
    """One Node process that holds the loaded graph model and runs it on each call."""

    def __init__(self, node_env: Path, model_dir: Path) -> None:
        node = shutil.which("node")
        if node is None:
            raise ExportFailure(
                "tfjs is checked in Node.js, and node is not on PATH; install Node.js (20 is "
                "tested) and export again"
            )
        version = subprocess.run(
            [node, "--version"], capture_output=True, text=True, timeout=30
        ).stdout.strip()
        self._stderr: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 (the process's life)
        self._process = subprocess.Popen(
            [node, str(RUNNER), str(node_env), str(model_dir)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            encoding="utf-8",
        )
        atexit.register(self.close)
        ready = self._read("loading model.json")
        self.runtime = (
            f"@tensorflow/tfjs {ready.get('tfjs')} (Node {version}, {ready.get('backend')} backend)"
        )

    def call(
        self,
        named: dict[str, np.ndarray],
        outputs: list[str],
        repeat: int = 0,
        timed: bool = False,
    ) -> Any:
        """Inputs by model.json key -> outputs by key; with `timed`, the `repeat` timings (ms)."""
        request = {
            "inputs": {k: _encode(v) for k, v in named.items()},
            "outputs": outputs,
            "repeat": repeat,
        }
        if self._process.stdin is None or self._process.poll() is not None:
            raise self._ended("running the model")
        try:
            self._process.stdin.write(json.dumps(request) + "\n")
            self._process.stdin.flush()
        except BrokenPipeError as err:
            raise self._ended("running the model") from err
        answer = self._read("running the model")
        if timed:
            return [float(t) for t in answer["ms"]]
        return {k: _decode(v) for k, v in answer["outputs"].items()}

    def close(self) -> None:
        if self._process.poll() is None:
            with contextlib.suppress(OSError):
                if self._process.stdin is not None:
                    self._process.stdin.close()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._process.stdout is not None:
            self._process.stdout.close()
        self._stderr.close()

    def _read(self, doing: str) -> dict[str, Any]:
        stdout = self._process.stdout
        assert stdout is not None
        ready, _, _ = select.select([stdout], [], [], NODE_TIMEOUT_S)
        if not ready:
            self._process.kill()
            raise ExportFailure(
                f"TensorFlow.js in Node gave no answer in {NODE_TIMEOUT_S} s {doing}"
            )
        line = stdout.readline()
        if not line:
            raise self._ended(doing)
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise ExportFailure(f"TensorFlow.js in Node failed {doing}: {answer['error']}")
        return answer

    def _ended(self, doing: str) -> ExportFailure:
        try:
            code = self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            code = None
        self._stderr.seek(0)
        said = _error_line(self._stderr.read().decode(errors="replace"))
        return ExportFailure(f"Node ended (exit code {code}) {doing}: {said}")


def _encode(array: np.ndarray) -> dict[str, Any]:
    array = np.ascontiguousarray(array)
    dtype = array.dtype.name
    if dtype == "bool":
        array = array.astype(np.uint8)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return {
        "dtype": dtype,
        "shape": list(array.shape),
        "data": base64.b64encode(array.tobytes()).decode("ascii"),
    }


def _decode(entry: dict[str, Any]) -> np.ndarray:
    raw = base64.b64decode(entry["data"])
    dtype = "uint8" if entry["dtype"] == "bool" else entry["dtype"]
    array = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).reshape(entry["shape"])
    return array.astype(bool) if entry["dtype"] == "bool" else array


# --- shared ------------------------------------------------------------------------------------


def _tfjs_version() -> str:
    lock = json.loads(LOCKFILE.read_text(encoding="utf-8"))
    return str(lock["packages"]["node_modules/@tensorflow/tfjs"]["version"])


def _env() -> dict[str, str]:
    """This process's environment without what points Python at dualtrain's own packages."""
    dropped = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE", "VIRTUAL_ENV")
    return {k: v for k, v in os.environ.items() if k not in dropped}


def _error_line(text: str) -> str:
    """The line that says what went wrong: a Python exception's last line, npm's `ERR!` line, or
    else the last line that is not a log line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if re.match(r"^[\w.]+(Error|Exception|Exit)\b", line):
            return line
    for line in lines:
        if "ERR!" in line and "A complete log" not in line:
            return line
    kept = [line for line in lines if not re.match(r"^[IWE]\d{4} |^\d{4}-\d\d-\d\d ", line)]
    return (kept or lines or ["no error message"])[-1][:500]
