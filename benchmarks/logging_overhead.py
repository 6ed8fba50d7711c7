"""What logging costs a training run, on each backend.

Trains the cnn recipe with the default loggers (metrics.jsonl, console, TensorBoard) at the default
`trainer.log_every_n_steps=10` and reads two figures from each run's summary.json:

- `logging_seconds / train_seconds`: the share of train time spent reading the logged values off
  the device and writing them (the loop times exactly that). The goal is <= 2%.
- throughput against the same run logging once per epoch only (`log_every_n_steps` larger than an
  epoch), as a cross-check; on a shared 2-core machine this A/B figure is noisy (about +-25%).

Each run is its own process; runs are interleaved round-robin.

Usage, from the repository root:

    python benchmarks/logging_overhead.py [--repeats 3] [--epochs 6] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "logging_overhead.json"
BACKENDS = ("torch", "tf")
EVERY_STEP_INTERVAL = 10  # the default trainer.log_every_n_steps
EPOCH_ONLY_INTERVAL = 1_000_000  # longer than any epoch: one train line per epoch


def run(backend: str, epochs: int, interval: int) -> dict[str, Any]:
    """One training run in its own process; returns its summary.json."""
    with tempfile.TemporaryDirectory() as run_dir:
        command = [
            sys.executable, "-m", "dualtrain", "recipe=cnn", f"backend={backend}",
            f"trainer.max_epochs={epochs}", f"trainer.log_every_n_steps={interval}",
            "logger.progress=false", f"hydra.run.dir={run_dir}",
        ]  # fmt: skip
        subprocess.run(command, cwd=REPO_ROOT, check=True, capture_output=True, timeout=1800)
        summary: dict[str, Any] = json.loads((Path(run_dir) / "summary.json").read_text())
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()

    runs: list[dict[str, Any]] = []
    for round_ in range(args.repeats):
        for backend in BACKENDS:
            for interval in (EVERY_STEP_INTERVAL, EPOCH_ONLY_INTERVAL):
                summary = run(backend, args.epochs, interval)
                runs.append({
                    "round": round_, "backend": backend, "log_every_n_steps": interval,
                    "logging_seconds": summary["logging_seconds"],
                    "train_seconds": summary["train_seconds"],
                    "steps": summary["steps"],
                    "train_samples_per_sec": summary["train_samples_per_sec"],
                })  # fmt: skip
                print(json.dumps(runs[-1]), file=sys.stderr)

    rows = []
    for backend in BACKENDS:
        logged = [r for r in runs if r["backend"] == backend
                  and r["log_every_n_steps"] == EVERY_STEP_INTERVAL]  # fmt: skip
        quiet = [r for r in runs if r["backend"] == backend
                 and r["log_every_n_steps"] == EPOCH_ONLY_INTERVAL]  # fmt: skip
        share = statistics.median(r["logging_seconds"] / r["train_seconds"] for r in logged)
        logs = logged[0]["steps"] // EVERY_STEP_INTERVAL + args.epochs
        per_log_ms = statistics.median(1000 * r["logging_seconds"] / logs for r in logged)
        ratio = statistics.median(
            a["train_samples_per_sec"] / b["train_samples_per_sec"]
            for a, b in zip(logged, quiet, strict=True)
        )
        rows.append({
            "backend": backend, "logging_share": share, "ms_per_train_line": per_log_ms,
            "throughput_every_10_over_epoch_only": ratio,
        })  # fmt: skip

    print("| backend | logging share of train time | ms per train line | "
          "samples/s, every 10 steps / once per epoch |")  # fmt: skip
    print("|---|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['backend']} | {100 * row['logging_share']:.2f}% | "
            f"{row['ms_per_train_line']:.2f} | {row['throughput_every_10_over_epoch_only']:.3f} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "runs": runs}, indent=2) + "\n")
    print(f"\nwritten: {args.out}")


if __name__ == "__main__":
    main()
