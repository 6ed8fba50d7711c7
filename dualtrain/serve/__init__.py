"""A prediction server over a run's exports, on LitServe, speaking TF Serving's REST API and
KServe's v2 protocol (docs/serving.md).

    python -m dualtrain.serve RUN_DIR [--format onnx|torch|saved_model|tflite] [--port 8501]

RUN_DIR is a directory with `export/report.json` (a `mode=export` run, or a training run with
`export.formats=[...]`). The model's inputs and outputs, by name, come from that report; the
chosen format is loaded in its own runtime, imported only in the inference worker.
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import multiprocessing
import os
import re
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

from dualtrain.errors import ConfigError

# The formats served, in the order the default is picked from (the first one report.json says ok).
FORMATS = ("onnx", "torch", "saved_model", "tflite")
HOSTS = ("127.0.0.1", "0.0.0.0", "::")  # what LitServe binds to
DEFAULT_PORT = 8501  # TF Serving's REST port
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
DEFAULT_MAX_ANSWER_VALUES = 1024 * 1024
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # a model name, as it goes in the URLs
PROG = "python -m dualtrain.serve"
READY_WAIT_SECONDS = 600  # how long the start-up line waits for the server to answer


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2
        _exit(f"{message}; see {PROG} --help", 2)


def main(argv: list[str] | None = None) -> None:
    signal.signal(signal.SIGTERM, _stopped_early)  # before any process is started
    args = _parser().parse_args(argv)
    try:
        model, options = _configure(args)
    except ConfigError as err:
        _exit(str(err), err.exit_code)
    _serve(model, options)


def _stopped_early(signum: int, frame: FrameType | None) -> NoReturn:
    print("dualtrain.serve: stopped (SIGTERM)", flush=True)
    sys.exit(0)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Serve a run's exported model over TF Serving's REST API and KServe's v2 "
        "protocol, with dynamic batching (LitServe).",
    )
    parser.add_argument(
        "run_dir", metavar="RUN_DIR", type=Path, help="a directory with export/report.json"
    )
    parser.add_argument(
        "--format",
        help=f"one of {', '.join(FORMATS)}; default: the first of them report.json says is ok",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"default {DEFAULT_PORT} (TF Serving's REST port)",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help=f"one of {', '.join(HOSTS)}; default 127.0.0.1 (this machine only)",
    )
    parser.add_argument(
        "--name", help="the model name in the URLs; default: the recipe's name in report.json"
    )
    parser.add_argument(
        "--max-batch-size",
        type=int,
        default=8,
        help="requests run together by the model (default 8; 1: no batching)",
    )
    parser.add_argument(
        "--batch-timeout",
        type=float,
        default=0.002,
        help="seconds the worker waits to fill a batch (default 0.002)",
    )
    parser.add_argument(
        "--max-body-bytes",
        type=int,
        default=DEFAULT_MAX_BODY_BYTES,
        help=f"larger request bodies get 400 (default {DEFAULT_MAX_BODY_BYTES:,})",
    )
    parser.add_argument(
        "--max-answer-values",
        type=int,
        default=DEFAULT_MAX_ANSWER_VALUES,
        help="requests whose answer would hold more output values get 400 "
        f"(default {DEFAULT_MAX_ANSWER_VALUES:,})",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        help="seconds a request may wait in the queue before it gets 504 (default 30)",
    )
    parser.add_argument(
        "--log-level",
        default="warning",
        choices=["debug", "info", "warning", "error"],
        help="LitServe's and uvicorn's log level (default warning; info logs every request)",
    )
    return parser


def _configure(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """Checks everything that can be checked before a process starts; returns the model to serve."""
    from dualtrain.serve.protocol import Model, tensors
    from dualtrain.serve.runtimes import missing_runtime

    run_dir: Path = args.run_dir
    report_path = run_dir / "export" / "report.json"
    if (
        not report_path.is_file()
        and (run_dir / "report.json").is_file()
        and run_dir.name == "export"
    ):
        run_dir, report_path = run_dir.parent, run_dir / "report.json"
    if not report_path.is_file():
        recipe = _recipe_of(run_dir)
        raise ConfigError(
            f"{run_dir} has no export/report.json; export the run first: python -m dualtrain "
            f"mode=export recipe={recipe} checkpoint.path={run_dir} export.formats=[onnx] "
            f"hydra.run.dir={run_dir}-export, then serve {run_dir}-export"
        )
    try:
        # A report is data: nothing in it is evaluated or imported, and every field used is
        # checked here (a crafted one is refused in one line, not with a traceback).
        report = json.loads(report_path.read_text(encoding="utf-8"))
        formats: dict[str, Any] = report["formats"]
        recipe = str(report["recipe"])
        if not isinstance(formats, dict) or not all(isinstance(e, dict) for e in formats.values()):
            raise ValueError("formats is not an object of objects by format")
        tensors(report["inputs"], "inputs")
        tensors(report["outputs"], "outputs")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise ConfigError(
            f"{report_path} is not an export report ({type(err).__name__}: {err}); export again: "
            f"python -m dualtrain mode=export recipe=... checkpoint.path=... export.formats=[onnx]"
        ) from err
    export_again = (
        f"python -m dualtrain mode=export recipe={recipe} "
        f"checkpoint.path={report.get('checkpoint', '...')} export.formats=[{{fmt}}] "
        "hydra.run.dir=NEW_DIR"
    )
    ok = [f for f in FORMATS if formats.get(f, {}).get("status") == "ok"]
    if args.format is None:
        usable = [f for f in ok if missing_runtime(f) is None]
        if not usable:
            if ok:
                raise ConfigError(
                    f"no runtime is installed for the exported formats ({', '.join(ok)}): "
                    f"{missing_runtime(ok[0])}"
                )
            raise ConfigError(
                f"{report_path} has no format that can be served ({', '.join(FORMATS)}: none ok); "
                f"export one: {export_again.format(fmt='onnx')}"
            )
        fmt = usable[0]
    else:
        fmt = args.format
        if fmt not in FORMATS:
            raise ConfigError(f"--format {fmt} is not served; use one of {', '.join(FORMATS)}")
        entry = formats.get(fmt)
        others = f" or serve one that is: --format {ok[0]}" if ok else ""
        if entry is None:
            raise ConfigError(
                f"{run_dir} has no {fmt} export; export it: {export_again.format(fmt=fmt)}{others}"
            )
        if entry.get("status") != "ok":
            raise ConfigError(
                f"the {fmt} export in {run_dir} failed "
                f"({entry.get('error', 'no cause recorded')}); "
                f"export it again: {export_again.format(fmt=fmt)}{others}"
            )
        missing = missing_runtime(fmt)
        if missing:
            raise ConfigError(missing)
    given = formats[fmt].get("path")
    inside = isinstance(given, str) and given and not Path(given).is_absolute()
    if not inside or ".." in Path(given).parts:
        raise ConfigError(
            f"{report_path} gives the {fmt} export's path as {given!r}; it must be a path inside "
            f"{run_dir} (export/{fmt}/...); export again: {export_again.format(fmt=fmt)}"
        )
    path = run_dir / given
    if not path.exists():
        raise ConfigError(
            f"{path} is missing (report.json lists it); export again: "
            f"{export_again.format(fmt=fmt)}"
        )
    try:
        import litserve  # noqa: F401
    except ImportError as err:
        raise ConfigError(
            f"serving needs LitServe: pip install -c constraints.txt 'dualtrain[serve]' ({err})"
        ) from err
    if args.host not in HOSTS:
        raise ConfigError(f"--host {args.host} cannot be served; use one of {', '.join(HOSTS)}")
    if not 1024 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port} cannot be served; use a port from 1024 to 65535")
    if args.max_batch_size < 1:
        raise ConfigError(
            f"--max-batch-size {args.max_batch_size} must be 1 or more (1: no batching)"
        )
    if args.batch_timeout < 0 or args.batch_timeout >= args.timeout:
        raise ConfigError(
            f"--batch-timeout {args.batch_timeout} must be from 0 to less than --timeout "
            f"({args.timeout})"
        )
    if args.max_body_bytes < 1:
        raise ConfigError(f"--max-body-bytes {args.max_body_bytes} must be 1 or more")
    if args.timeout <= 0:
        raise ConfigError(f"--timeout {args.timeout} must be more than 0 seconds")
    if args.max_answer_values < 1:
        raise ConfigError(f"--max-answer-values {args.max_answer_values} must be 1 or more")
    name = args.name or recipe
    if not NAME.fullmatch(name):
        raise ConfigError(
            f"--name {name!r} cannot be a model name in a URL; use letters, digits, '-', '_' or '.'"
        )
    _check_port(args.host, args.port)
    model = Model.from_report(report, name, fmt, path.resolve())
    options = {
        "host": args.host,
        "port": args.port,
        "max_batch_size": args.max_batch_size,
        "batch_timeout": args.batch_timeout,
        "max_body_bytes": args.max_body_bytes,
        "max_answer_values": args.max_answer_values,
        "timeout": args.timeout,
        "log_level": args.log_level,
    }
    return model, options


def _recipe_of(run_dir: Path) -> str:
    try:
        return str(json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))["recipe"])
    except (OSError, ValueError, KeyError, TypeError):
        return "RECIPE"


def _check_port(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as err:
            raise ConfigError(
                f"cannot listen on {host}:{port} ({err.strerror}); choose another --port"
            ) from err


class _Stopped(KeyboardInterrupt):
    """SIGTERM or SIGINT, raised in the main thread: LitServe shuts down as for Ctrl-C."""


def _serve(model: Any, options: dict[str, Any]) -> None:
    import litserve as ls
    from starlette.exceptions import HTTPException

    from dualtrain.serve.server import ServedModel, forks_die_with, http_errors

    api = ServedModel(
        model,
        options["max_batch_size"],
        options["batch_timeout"],
        options["max_body_bytes"],
        options["max_answer_values"],
    )
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1, timeout=options["timeout"])
    server.app.add_exception_handler(HTTPException, http_errors(model))
    server.app.add_exception_handler(Exception, http_errors(model))
    stopped_by: list[str] = []
    main_pid = os.getpid()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if os.getpid() != main_pid:
            # LitServe's HTTP server is forked from this process and inherits this handler;
            # uvicorn raises the signal again once it has shut down: the process ends there.
            raise SystemExit(0)
        if not stopped_by:
            stopped_by.append(signal.Signals(signum).name)
            _quiet_shutdown()
            raise _Stopped

    signal.signal(signal.SIGTERM, on_signal)
    # LitServe's HTTP server and manager are forked from this process, its worker spawned (set
    # in its setup): each ends with this process, also when it is killed with SIGKILL.
    forks_die_with(main_pid)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not where it is ignored
        signal.signal(signal.SIGINT, on_signal)
    host, port = options["host"], options["port"]
    shown_host = "127.0.0.1" if host == "0.0.0.0" else ("[::1]" if host == "::" else host)
    url = f"http://{shown_host}:{port}"
    announcer = threading.Thread(target=_announce, args=(url, model, options), daemon=True)
    announcer.start()
    code, message = 0, None
    try:
        server.run(
            host=host,
            port=port,
            num_api_servers=1,
            log_level=options["log_level"],
            generate_client_file=False,
        )
    except KeyboardInterrupt:  # a signal before LitServe's own shutdown could take over
        if not stopped_by:
            stopped_by.append("SIGINT")
        _quiet_shutdown()
    except RuntimeError as err:  # LitServe's "One or more workers failed to start"
        code = 1
        message = (
            f"the {model.format} model at {model.path} could not be loaded in "
            f"{model.runtime} ({err}); its error is above"
        )
    except Exception as err:
        code = 1
        message = f"the server stopped: {type(err).__name__}: {err}"
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):  # the children are ended first
            signal.signal(signum, signal.SIG_IGN)
        _end_children()
    if message:
        _exit(message, code)
    print(f"dualtrain.serve: stopped ({stopped_by[0] if stopped_by else 'shut down'})", flush=True)
    sys.exit(code)


def _announce(url: str, model: Any, options: dict[str, Any]) -> None:
    """Prints the start-up line once the server answers (LitServe starts its HTTP server after the
    inference worker has loaded the model)."""
    deadline = time.monotonic() + READY_WAIT_SECONDS
    host = url.split("//", 1)[1].rsplit(":", 1)[0].strip("[]")
    while time.monotonic() < deadline:
        try:
            connection = http.client.HTTPConnection(host, options["port"], timeout=2)
            connection.request("GET", "/v2/health/ready")
            ready = connection.getresponse().status == 200
            connection.close()
        except OSError:
            ready = False
        if ready:
            size = options["max_batch_size"]
            batching = (
                f"batches of up to {size} requests, waiting up to {options['batch_timeout']} s"
                if size > 1
                else "no batching"
            )
            print(
                f"dualtrain.serve: {url} serves {model.name!r} ({model.format}, {model.runtime}): "
                f"POST {url}/v1/models/{model.name}:predict (TF Serving) or "
                f"{url}/v2/models/{model.name}/infer (KServe v2); {batching}",
                flush=True,
            )
            return
        time.sleep(0.1)


class _ShutdownNoise(logging.Filter):
    """LitServe's worker-monitoring thread polls the shutdown event on its manager process every
    2 s; once the manager is shut down the poll fails and the thread logs a traceback. After a
    stop was asked for, that line says nothing: dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Monitoring worker crashed" not in record.getMessage()


def _quiet_shutdown() -> None:
    logging.getLogger("litserve.server").addFilter(_ShutdownNoise())


def _end_children() -> None:
    """Whatever LitServe left running (a worker still starting when the signal came) is ended."""
    children = multiprocessing.active_children()
    for child in children:
        child.terminate()
    for child in children:
        child.join(timeout=5)
        if child.is_alive():
            child.kill()
            child.join(timeout=5)


def _exit(message: str, code: int) -> NoReturn:
    print(f"dualtrain.serve: error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


__all__ = ["FORMATS", "main"]
