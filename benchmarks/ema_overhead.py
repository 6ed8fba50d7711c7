"""What trainer.ema (the moving average of the weights) costs a training step, on each backend.

Trains the cnn recipe with and without `trainer.ema=0.999`, each run in its own process with one
thread (OMP_NUM_THREADS=1), interleaved round-robin, and compares the steady-state throughput
(summary.json's `train_samples_per_sec`: the first epoch and validation left out, so the averaged
validation is not in it). A round's figure is step time with EMA / step time without; the report
gives each round's and their median. On a shared machine compare only figures from one run.

Usage, from the repository root:

    python benchmarks/ema_overhead.py [--repeats 3] [--epochs 4] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "ema_overhead.json"
BACKENDS = ("torch", "tf")
EMA = "0.999"


def run(backend: str, epochs: int, ema: str) -> float:
    """One training run in its own process; returns its steady-state samples/s."""
    with tempfile.TemporaryDirectory() as run_dir:
        command = [
            sys.executable, "-m", "dualtrain", "recipe=cnn", f"backend={backend}",
            f"trainer.max_epochs={epochs}", f"trainer.ema={ema}", "logger=[jsonl]",
            "checkpoint.every_n_epochs=0", f"hydra.run.dir={run_dir}",
        ]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        subprocess.run(command, cwd=REPO_ROOT, env=env, check=True, capture_output=True)
        summary: dict[str, Any] = json.loads((Path(run_dir) / "summary.json").read_text())
    return float(summary["train_samples_per_sec"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    rounds: dict[str, list[dict[str, float]]] = {b: [] for b in BACKENDS}
    for _ in range(args.repeats):
        for backend in BACKENDS:
            plain, averaged = run(backend, args.epochs, "null"), run(backend, args.epochs, EMA)
            rounds[backend].append(
                {
                    "samples_per_sec": plain,
                    "ema_samples_per_sec": averaged,
                    "ratio": plain / averaged,
                }
            )
            print(f"{backend}: {plain:,.0f} samples/s, with EMA {averaged:,.0f}", flush=True)
    report = {
        backend: {"rounds": r, "median_step_time_ratio": statistics.median(x["ratio"] for x in r)}
        for backend, r in rounds.items()
    }
    for backend, result in report.items():
        ratios = ", ".join(f"{x['ratio']:.3f}" for x in result["rounds"])
        median = result["median_step_time_ratio"]
        print(f"{backend}: step time with EMA / without: median {median:.3f} ({ratios})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
