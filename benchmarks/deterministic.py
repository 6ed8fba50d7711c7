"""What `trainer.deterministic=true` costs in speed, on each backend.

Trains each recipe with the frameworks' deterministic kernels on (`trainer.deterministic=true`:
torch.use_deterministic_algorithms, TensorFlow's op determinism) and off (`false`), each run in its
own process with one thread (OMP_NUM_THREADS=1), rounds interleaved (on, off, off, on, ...), and
reads summary.json's steady-state `train_samples_per_sec` (first epoch excluded). Prints a Markdown
table of the median samples/s and the on / off ratio per round and their median, and writes
everything to benchmarks/results/deterministic.json (`--out`).

    python benchmarks/deterministic.py                       # cnn and char_lm, 3 rounds
    python benchmarks/deterministic.py --recipes cnn --rounds 5 --epochs 4
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
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "deterministic.json"
BACKENDS = ("torch", "tf")


def run(recipe: str, backend: str, deterministic: bool, epochs: int) -> float:
    """One training run in its own process; returns its steady-state samples/s."""
    with tempfile.TemporaryDirectory() as run_dir:
        command = [
            sys.executable, "-m", "dualtrain", f"recipe={recipe}", f"backend={backend}",
            f"trainer.deterministic={str(deterministic).lower()}",
            f"trainer.max_epochs={epochs}", "checkpoint.every_n_epochs=0",
            "logger=[jsonl]", f"hydra.run.dir={run_dir}",
        ]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        subprocess.run(command, cwd=REPO_ROOT, check=True, capture_output=True, env=env)
        summary = json.loads((Path(run_dir) / "summary.json").read_text())
    return float(summary["train_samples_per_sec"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipes", default="cnn,char_lm")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()

    runs: list[dict[str, Any]] = []
    for round_ in range(args.rounds):
        for recipe in args.recipes.split(","):
            for backend in BACKENDS:
                # Alternate which goes first, so a drift in the machine's load hits both.
                for on in (True, False) if round_ % 2 == 0 else (False, True):
                    rate = run(recipe, backend, on, args.epochs)
                    runs.append({"round": round_, "recipe": recipe, "backend": backend,
                                 "deterministic": on, "samples_per_sec": rate})  # fmt: skip
                    print(json.dumps(runs[-1]), file=sys.stderr)

    rows = []
    print("| recipe | backend | samples/s, off | samples/s, on | on / off (median of rounds) |")
    print("|---|---|---:|---:|---:|")
    for recipe in args.recipes.split(","):
        for backend in BACKENDS:

            def rates(on: bool, recipe: str = recipe, backend: str = backend) -> list[float]:
                return [r["samples_per_sec"] for r in runs if (r["recipe"], r["backend"],
                        r["deterministic"]) == (recipe, backend, on)]  # fmt: skip

            ratios = [a / b for a, b in zip(rates(True), rates(False), strict=True)]
            row = {
                "recipe": recipe, "backend": backend,
                "off": statistics.median(rates(False)), "on": statistics.median(rates(True)),
                "ratio": statistics.median(ratios), "ratios": ratios,
            }  # fmt: skip
            rows.append(row)
            print(
                f"| {recipe} | {backend} | {row['off']:,.0f} | {row['on']:,.0f} | "
                f"{row['ratio']:.2f} ({', '.join(f'{r:.2f}' for r in ratios)}) |"
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "runs": runs}, indent=2) + "\n")
    print(f"\nwritten: {args.out}")


if __name__ == "__main__":
    main()
