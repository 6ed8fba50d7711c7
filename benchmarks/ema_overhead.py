"""What trainer.ema (the moving average of the weights) costs a training step, on each backend.

For each backend, one process (OMP_NUM_THREADS=1) builds the cnn recipe's engine twice, without
and with `trainer.ema=0.999`, and trains them in alternation: a block of `--steps` steps on one,
then the same batches on the other, `--rounds` times, after a warm-up block each (tracing and
capture). Each block is timed in wall-clock and in CPU time (this process's, all its threads): on
a machine shared with other processes the wall-clock figures swing with their load, the CPU time
much less. A round's figure is the time with EMA / without; the report gives their medians.
Validation is not timed (the averaged weights' swap costs two copies of the weights per epoch).

Usage, from the repository root:

    python benchmarks/ema_overhead.py [--rounds 7] [--steps 40] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "ema_overhead.json"
BACKENDS = ("torch", "tf")
EMA = "0.999"


def measure(backend: str, rounds: int, steps: int) -> dict[str, Any]:
    """In a process of `backend`: the alternating blocks; returns the per-round ratios."""
    from dualtrain.engines import engine_class, select_backend

    select_backend(backend)  # before Keras is imported: it fixes its backend then
    import keras
    from hydra import compose, initialize_config_module

    from dualtrain.cli import settings_from_config
    from dualtrain.data import load_data
    from dualtrain.recipe import load_recipe

    def engine(ema: str, run_dir: str) -> Any:
        with initialize_config_module("dualtrain.configs", version_base="1.3"):
            cfg = compose("train", overrides=[f"backend={backend}", f"trainer.ema={ema}"])
        settings = settings_from_config(cfg, Path(run_dir))
        return engine_class(backend)(
            settings, load_recipe(settings.recipe), load_data(settings.data, settings.seed)
        )

    def block(e: Any, batches: list[Any]) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        for batch in batches:
            e.train_step([batch])
        keras.ops.convert_to_numpy(e.state.steps_run.value)  # waits for the device
        return time.perf_counter() - wall, time.process_time() - cpu

    with tempfile.TemporaryDirectory() as run_dir:
        plain, averaged = engine("null", run_dir), engine(EMA, run_dir)
        batches = list(plain.train_batches(0))[:steps]
        block(plain, batches), block(averaged, batches)  # warm-up: traces and captures
        results = []
        for _ in range(rounds):
            (wall_off, cpu_off), (wall_on, cpu_on) = block(plain, batches), block(averaged, batches)
            results.append({"wall_ratio": wall_on / wall_off, "cpu_ratio": cpu_on / cpu_off,
                            "ms_per_step": 1e3 * cpu_off / steps})  # fmt: skip
    return {
        "rounds": results,
        "median_wall_ratio": statistics.median(r["wall_ratio"] for r in results),
        "median_cpu_ratio": statistics.median(r["cpu_ratio"] for r in results),
        "cpu_ms_per_step_without": statistics.median(r["ms_per_step"] for r in results),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--child", choices=BACKENDS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.rounds, args.steps)))
        return
    report = {}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for backend in BACKENDS:
        command = [sys.executable, __file__, "--child", backend, "--rounds", str(args.rounds),
                   "--steps", str(args.steps)]  # fmt: skip
        done = subprocess.run(command, cwd=REPO_ROOT, env=env, check=True, capture_output=True)
        report[backend] = json.loads(done.stdout.decode().strip().splitlines()[-1])
        result = report[backend]
        print(
            f"{backend}: step time with EMA / without, median of {args.rounds} rounds: "
            f"CPU {result['median_cpu_ratio']:.3f}, wall {result['median_wall_ratio']:.3f} "
            f"({result['cpu_ms_per_step_without']:.1f} CPU ms a step without)",
            flush=True,
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
