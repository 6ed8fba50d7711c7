"""Requests per second, latency and memory of `python -m dualtrain.serve`, format by format.

    python benchmarks/serving.py RUN_DIR            # every format RUN_DIR's export has
    python benchmarks/serving.py                    # trains and exports a 1-epoch mlp run first
    python benchmarks/serving.py RUN_DIR --formats onnx --requests 500 --clients 4
    python benchmarks/serving.py RUN_DIR --smoke    # a tiny run that checks the harness

For each format: starts the server (its own process tree, on a free port), waits until it answers,
sends `--warmup` requests, then `--requests` TF Serving predict requests (`{"instances": [...]}`
of `--instances` samples each) from `--clients` threads, each on its own keep-alive connection
(stdlib http.client), and stops the server with SIGTERM. Reports requests/s (over the wall time of
the timed requests), p50 and p99 latency, the peak RSS of the server's process tree (the command,
LitServe's HTTP server and inference worker, its manager; sampled from /proc every 50 ms) and the
time from start to the first answer. Prints a Markdown table and writes everything to
benchmarks/results/serving.json (`--out`). The clients run on the same machine as the server and
take CPU from it: on a 2-core machine the figures are the pair's, not the server's alone.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
FORMATS = ("onnx", "torch", "saved_model", "tflite")
READY_SECONDS = 180


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", nargs="?", type=Path, help="a run with export/report.json")
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--instances", type=int, default=1, help="samples per request")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--batch-timeout", type=float, default=0.002)
    parser.add_argument("--smoke", action="store_true", help="40 requests from 2 clients")
    parser.add_argument(
        "--out", type=Path, default=REPO / "benchmarks" / "results" / "serving.json"
    )
    args = parser.parse_args()
    if args.smoke:
        args.requests, args.clients, args.warmup = 40, 2, 4
    with tempfile.TemporaryDirectory() as scratch:
        run_dir = args.run_dir or _train(Path(scratch) / "mlp")
        report = json.loads((run_dir / "export" / "report.json").read_text())
        formats = [
            f for f in args.formats.split(",") if report["formats"].get(f, {}).get("status") == "ok"
        ]
        if not formats:
            sys.exit(f"serving.py: {run_dir} has none of {args.formats} exported")
        rows = []
        for fmt in formats:
            row = _measure(run_dir, fmt, report, args)
            rows.append(row)
            print(
                f"{fmt}: {row['requests_per_sec']:.0f} requests/s, p50 {row['p50_ms']:.2f} ms, "
                f"p99 {row['p99_ms']:.2f} ms, peak RSS {row['peak_rss_mb']:.0f} MB",
                file=sys.stderr,
                flush=True,
            )
    table = _table(rows, args)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "settings": {
            "requests": args.requests,
            "clients": args.clients,
            "instances_per_request": args.instances,
            "warmup": args.warmup,
            "max_batch_size": args.max_batch_size,
            "batch_timeout": args.batch_timeout,
        },
        "recipe": report["recipe"],
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "rows": rows,
        "table": table,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")


def _train(run_dir: Path) -> Path:
    """A 1-epoch mlp run on torch with every format exported at its end."""
    command = [
        sys.executable, "-m", "dualtrain", "recipe=mlp", "backend=torch", "trainer.max_epochs=1",
        "logger.progress=false", "export.formats=[onnx,torch,saved_model,tflite]",
        f"hydra.run.dir={run_dir}",
    ]  # fmt: skip
    print("serving.py: training and exporting a 1-epoch mlp run", file=sys.stderr, flush=True)
    subprocess.run(command, cwd=REPO, check=True, capture_output=True)
    return run_dir


def _bodies(report: dict[str, Any], instances: int, count: int = 16) -> list[bytes]:
    """TF Serving row-format bodies of random samples (ids: zeros)."""
    rng = np.random.default_rng(0)
    bodies = []
    for _ in range(count):
        rows: list[Any] = []
        for _ in range(instances):
            sample = {}
            for spec in report["inputs"]:
                shape = [d or 1 for d in spec["shape"][1:]]
                if spec["dtype"].startswith(("int", "uint")):
                    sample[spec["name"]] = np.zeros(shape, int).tolist()
                else:
                    sample[spec["name"]] = rng.normal(size=shape).round(4).tolist()
            rows.append(sample if len(sample) > 1 else next(iter(sample.values())))
        bodies.append(json.dumps({"instances": rows}).encode())
    return bodies


def _measure(run_dir: Path, fmt: str, report: dict[str, Any], args: argparse.Namespace) -> dict:
    port = _free_port()
    command = [
        sys.executable, "-m", "dualtrain.serve", str(run_dir), "--format", fmt,
        "--port", str(port), "--max-batch-size", str(args.max_batch_size),
        "--batch-timeout", str(args.batch_timeout),
    ]  # fmt: skip
    started = time.monotonic()
    server = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    peak = [0]
    sampling = threading.Event()
    sampler = threading.Thread(target=_sample_rss, args=(server.pid, peak, sampling), daemon=True)
    sampler.start()
    try:
        _wait_ready(server, port)
        startup = time.monotonic() - started
        path = f"/v1/models/{report['recipe']}:predict"
        bodies = _bodies(report, args.instances)
        _load(port, path, bodies, args.warmup, min(args.clients, args.warmup))
        latencies, errors, wall = _load(port, path, bodies, args.requests, args.clients)
    finally:
        sampling.set()
        sampler.join()
        _stop(server)
    ordered = sorted(latencies)
    return {
        "format": fmt,
        "runtime": report["formats"][fmt].get("runtime", fmt),
        "requests": args.requests,
        "errors": errors,
        "requests_per_sec": args.requests / wall,
        "p50_ms": 1000 * statistics.median(ordered),
        "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        "peak_rss_mb": peak[0] / 1e6,
        "startup_seconds": startup,
        "server_exit_code": server.returncode,
    }


def _load(
    port: int, path: str, bodies: list[bytes], requests: int, clients: int
) -> tuple[list[float], int, float]:
    """`requests` POSTs from `clients` threads; each latency, the errors and the wall time."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    counter = iter(range(requests))

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        headers = {"Content-Type": "application/json"}
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                break
            begun = time.perf_counter()
            connection.request("POST", path, bodies[i % len(bodies)], headers)
            response = connection.getresponse()
            response.read()
            took = time.perf_counter() - begun
            with lock:
                latencies.append(took)
                errors[0] += response.status != 200
        connection.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    begun = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, errors[0], time.perf_counter() - begun


def _tree_rss(root: int) -> int:
    """Bytes of RSS of `root` and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
        except (OSError, IndexError, ValueError):
            continue
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def _sample_rss(pid: int, peak: list[int], stop: threading.Event) -> None:
    while not stop.wait(0.05):
        peak[0] = max(peak[0], _tree_rss(pid))


def _wait_ready(server: subprocess.Popen, port: int) -> None:
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(
                f"the server exited ({server.returncode}): {server.stderr.read()[-2000:]!r}"
            )
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/v2/health/ready")
            if connection.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the server did not answer within {READY_SECONDS} s")


def _stop(server: subprocess.Popen) -> None:
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGKILL)  # anything the server left behind


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _table(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        f"{args.requests:,} requests of {args.instances} sample(s) from {args.clients} clients; "
        f"--max-batch-size {args.max_batch_size} --batch-timeout {args.batch_timeout}",
        "",
        "| format | runtime | requests/s | p50 ms | p99 ms | peak RSS (server tree) | start-up "
        "| errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['format']} | {r['runtime']} | {r['requests_per_sec']:,.0f} | "
            f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['peak_rss_mb']:,.0f} MB | "
            f"{r['startup_seconds']:.1f} s | {r['errors']} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
