"""Screenshot of TensorBoard comparing a torch run and a tf run of the cnn recipe.

Produces `docs/images/tensorboard.png`: TensorBoard's Scalars dashboard, served by the real
TensorBoard server and rendered by headless Chromium, with a `torch` run and a `tf` run of the same
recipe laid over each other in every chart (train/loss, train/lr, train/samples_per_sec, val/loss,
val/accuracy).

Steps:

1. Unless `--logdir` holds them already, train the cnn recipe on each backend, one process each:
   `python -m dualtrain recipe=cnn backend=<b> trainer.max_epochs=<N> logger.progress=false
   hydra.run.dir=<logdir>/<b>` (about a minute per backend on a 2-core CPU).
2. Start `python -m tensorboard.main` on a free local port, over a directory of symlinks named
   `torch` and `tf` (so those are the run names), and wait until it serves both runs' scalars.
3. Take the screenshot with headless Chromium (`--screenshot`, `--virtual-time-budget`), then stop
   the server.

Needs Debian's Chromium (`apt-get install chromium`, at /usr/bin/chromium); this script installs
nothing. It writes only under `--logdir` (default: a temporary directory, removed at the end) and
`--out`; Chromium's profile and the symlinks live in a temporary directory removed at the end.

Usage, from the repository root:

    python docs/tensorboard_screenshot.py [--logdir DIR] [--out docs/images/tensorboard.png]
        [--epochs 15] [--chromium /usr/bin/chromium]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "docs" / "images" / "tensorboard.png"
DEFAULT_CHROMIUM = Path("/usr/bin/chromium")
BACKENDS = ("torch", "tf")
RECIPE = "cnn"
# A tag every run logs; the server is ready once this series is complete for every run.
PROBE_TAG = "train/loss"
SERVER_TIMEOUT_S = 90.0
CHROMIUM_TIMEOUT_S = 180.0
# The legacy Scalars dashboard lays out every tag, grouped by prefix (train/, val/), with the runs
# overlaid and named in the sidebar; the Time Series dashboard opens with a settings pane that only
# localStorage can close. Window size and scale put all five charts in a ~1600x950 picture.
DASHBOARD = "?darkMode=false#scalars"
WINDOW_SIZE = (1440, 860)
DEVICE_SCALE = 1.1
# Virtual time Chromium lets the page run (fetches, timers, chart rendering) before the shot.
VIRTUAL_TIME_BUDGET_MS = 15_000


def has_events(run_dir: Path) -> bool:
    """True if `run_dir/tensorboard/` holds a TensorBoard event file."""
    return any((run_dir / "tensorboard").glob("events.out.tfevents.*"))


def train(backend: str, run_dir: Path, epochs: int) -> None:
    """Train the cnn recipe on `backend` into `run_dir`, in its own process."""
    cmd = [
        sys.executable,
        "-m",
        "dualtrain",
        f"recipe={RECIPE}",
        f"backend={backend}",
        f"trainer.max_epochs={epochs}",
        "logger.progress=false",
        f"hydra.run.dir={run_dir}",
    ]
    print(f"training {RECIPE} on {backend} ({epochs} epochs) into {run_dir}", flush=True)
    subprocess.run(cmd, check=True, cwd=REPO_ROOT)
    if not has_events(run_dir):
        raise RuntimeError(f"{backend} run wrote no TensorBoard event file under {run_dir}")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fetch_json(url: str) -> object:
    """GET `url` and decode its JSON body."""
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def series_lengths(base_url: str, runs: tuple[str, ...]) -> tuple[int, ...]:
    """How many points of PROBE_TAG the server holds for each run (0 before it has loaded it)."""
    tags = fetch_json(f"{base_url}/data/plugin/scalars/tags")
    if not isinstance(tags, dict) or not all(PROBE_TAG in tags.get(run, {}) for run in runs):
        return tuple(0 for _ in runs)
    lengths = []
    for run in runs:
        query = urllib.parse.urlencode({"run": run, "tag": PROBE_TAG})
        points = fetch_json(f"{base_url}/data/plugin/scalars/scalars?{query}")
        lengths.append(len(points) if isinstance(points, list) else 0)
    return tuple(lengths)


def tail(path: Path, lines: int = 20) -> str:
    """The last `lines` lines of a text file."""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@contextlib.contextmanager
def tensorboard_server(view_dir: Path, log_path: Path) -> Iterator[str]:
    """Run TensorBoard over `view_dir` until the block ends; yield its base URL once it is ready.

    Ready means the scalars plugin lists every run of `view_dir` with PROBE_TAG, and two polls a
    second apart see the same number of points (the event files are fully loaded).
    """
    runs = tuple(sorted(p.name for p in view_dir.iterdir()))
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    cmd = [
        sys.executable,
        "-m",
        "tensorboard.main",
        f"--logdir={view_dir}",
        "--host=127.0.0.1",
        f"--port={port}",
        "--load_fast=false",
    ]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    with log_path.open("wb") as log:
        server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + SERVER_TIMEOUT_S
        previous: tuple[int, ...] = ()
        while True:
            if server.poll() is not None:
                raise RuntimeError(
                    f"TensorBoard exited with {server.returncode}:\n{tail(log_path)}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"TensorBoard did not serve runs {runs} within {SERVER_TIMEOUT_S:.0f} s:\n"
                    f"{tail(log_path)}"
                )
            try:
                lengths = series_lengths(base_url, runs)
            except (OSError, ValueError):  # not listening yet, or a half-written answer
                lengths = ()
            if lengths and all(lengths) and lengths == previous:
                break
            previous = lengths
            time.sleep(1.0)
        yield base_url
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def screenshot(chromium: Path, url: str, out: Path, profile_dir: Path) -> None:
    """Render `url` in headless Chromium and save a PNG of the window to `out`."""
    width, height = WINDOW_SIZE
    cmd = [
        str(chromium),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile_dir}",
        "--hide-scrollbars",
        f"--window-size={width},{height}",
        f"--force-device-scale-factor={DEVICE_SCALE}",
        f"--virtual-time-budget={VIRTUAL_TIME_BUDGET_MS}",
        f"--screenshot={out}",
        url,
    ]
    out.unlink(missing_ok=True)
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT_S)
    if result.returncode != 0 or not out.is_file():
        output = "\n".join((result.stdout + result.stderr).splitlines()[-20:])
        raise RuntimeError(f"Chromium exited with {result.returncode}, no {out}:\n{output}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Screenshot of TensorBoard comparing a torch and a tf run of the cnn recipe."
    )
    parser.add_argument(
        "--logdir",
        type=Path,
        help="holds (or receives) the runs in <logdir>/torch and <logdir>/tf; default: a "
        "temporary directory, removed at the end",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="PNG to write")
    parser.add_argument("--epochs", type=int, default=15, help="epochs per training run")
    parser.add_argument("--chromium", type=Path, default=DEFAULT_CHROMIUM, help="Chromium binary")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not (args.chromium.is_file() and os.access(args.chromium, os.X_OK)):
        sys.exit(
            f"error: no Chromium at {args.chromium}; install it with `apt-get install chromium` "
            "(Debian) or pass --chromium PATH"
        )
    if args.epochs < 1:
        sys.exit("error: --epochs must be at least 1")
    started = time.monotonic()
    out = args.out.resolve()
    with contextlib.ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tb-screenshot-")))
        if args.logdir is None:
            logdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dualtrain-")))
        else:
            logdir = args.logdir.resolve()
            logdir.mkdir(parents=True, exist_ok=True)
        view_dir = scratch / "runs"
        view_dir.mkdir()
        for backend in BACKENDS:
            run_dir = logdir / backend
            if has_events(run_dir):
                print(f"using the {backend} run in {run_dir}", flush=True)
            else:
                train(backend, run_dir, args.epochs)
            (view_dir / backend).symlink_to(run_dir / "tensorboard", target_is_directory=True)
        with tensorboard_server(view_dir, scratch / "tensorboard.log") as base_url:
            url = f"{base_url}/{DASHBOARD}"
            print(f"TensorBoard ready at {base_url}; taking the screenshot", flush=True)
            out.parent.mkdir(parents=True, exist_ok=True)
            screenshot(args.chromium, url, out, scratch / "chromium-profile")
    print(f"wrote {out} ({out.stat().st_size // 1024} KiB) in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
