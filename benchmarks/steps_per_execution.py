"""backend.steps_per_execution on tf: throughput of a small model with 1, 8 and 32 steps per call.

    python benchmarks/steps_per_execution.py [--rounds 3] [--epochs 10]

Each configuration is a `python -m dualtrain` run in its own process (mlp recipe on synthetic
8x8 data, batch 64, 32 steps per epoch), interleaved over rounds; the figure is summary.json's
steady-state train_samples_per_sec (first epoch excluded). Prints a table and writes
benchmarks/results/steps_per_execution.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PER_CALL = (1, 8, 32)


def run(per_call: int, epochs: int, run_dir: Path) -> float:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "dualtrain",
            "recipe=mlp",
            "backend=tf",
            "data=synthetic",
            "data.num_samples=2560",
            "data.batch_size=64",
            f"trainer.max_epochs={epochs}",
            "trainer.log_every_n_steps=32",
            f"backend.steps_per_execution={per_call}",
            "checkpoint.every_n_epochs=0",
            "logger=[jsonl]",
            f"hydra.run.dir={run_dir}",
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    return float(json.loads((run_dir / "summary.json").read_text())["train_samples_per_sec"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    speeds: dict[int, list[float]] = {n: [] for n in PER_CALL}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for n in PER_CALL:
                speeds[n].append(run(n, args.epochs, Path(tmp) / f"{round_}-{n}"))
    base = statistics.median(speeds[1])
    print("| steps_per_execution | samples/s (median) | vs 1 |\n|---:|---:|---:|")
    for n in PER_CALL:
        median = statistics.median(speeds[n])
        print(f"| {n} | {median:,.0f} | {median / base:.2f}x |")
    out = ROOT / "benchmarks" / "results" / "steps_per_execution.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({str(n): v for n, v in speeds.items()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
