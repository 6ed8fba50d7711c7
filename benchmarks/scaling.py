"""How dualtrain's cost grows, and whether its input pipeline ever bounds training.

    python benchmarks/scaling.py --threads 1                # both backends, both measurements

Rates are samples per second of the process's CPU time (see `rate`), so that other jobs on a shared
machine do not decide the figures.

- scaling: W1 (the mnist convnet) steady-state samples/s against batch size (32 to 1,024) and
  against model width (the first conv's filters, the second has twice as many), per backend;
  drawn as docs/images/scaling.png (--png).
- pipeline: the train step fed by the engine's real input pipeline (`train_batches`: a
  DataLoader on torch, eager gathers of 32 batches at a time on tf) against the same steps on
  batches already in memory as framework tensors, for W1 and W2 (`--recipes`); the goal is
  step times within 5%.

Each backend runs in a process of its own (this script with --child); the engine is built
in-process from the real configs, so the steps are exactly dualtrain's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BATCH_SIZES = (32, 64, 128, 256, 512, 1024)
WIDTHS = (8, 16, 32, 64)  # W1's first conv filters; 32 is W1 itself


def make_engine(backend: str, *overrides: str, recipe: str = "bench_cnn") -> Any:
    from hydra import compose, initialize_config_module

    from dualtrain.cli import settings_from_config
    from dualtrain.data import load_data
    from dualtrain.engines import engine_class
    from dualtrain.recipe import load_recipe

    with initialize_config_module("dualtrain.configs", version_base="1.3"):
        cfg = compose("train", overrides=[f"recipe={recipe}", f"backend={backend}", *overrides])
    settings = settings_from_config(cfg, Path("/tmp/dualtrain-scaling"))
    data = load_data(settings.data, settings.seed)
    engine = engine_class(backend)(settings, load_recipe(settings.recipe), data)
    return engine


def rate(engine: Any, batches: Any, samples: int, repeats: int = 3) -> float:
    """Samples per second of this process's CPU time (all its threads) in train steps over
    `batches()`, best of `repeats` passes after a warm-up.

    CPU time, not wall time: on a machine shared with other jobs the wall clock measures the
    others as much as this process. With one thread per framework it is the wall time the same
    work takes on a quiet core (an upper bound where threads overlap, e.g. tf.data's prefetch).
    """
    for batch in batches():
        engine.train_step([batch])
    engine.train_metrics()
    best = 0.0
    for _ in range(repeats):
        start = time.process_time()
        for batch in batches():
            engine.train_step([batch])
        engine.train_metrics()  # waits for the device
        best = max(best, samples / (time.process_time() - start))
    return best


def child(backend: str, what: str, samples: int, recipes: list[str]) -> dict[str, Any]:
    result: dict[str, Any] = {"backend": backend}
    data = [f"data.num_samples={samples * 5 // 4}"]
    if what in ("all", "pipeline"):
        result["pipeline"] = {recipe: pipeline(backend, recipe, data) for recipe in recipes}
    if what in ("all", "scaling"):
        result["batch_size"] = {}
        for size in BATCH_SIZES:
            engine = make_engine(backend, *data, f"data.batch_size={size}")
            result["batch_size"][size] = rate(
                engine, lambda e=engine: list(e.train_batches(0)), len(engine.data.train)
            )
        result["width"] = {}
        for width in WIDTHS:
            engine = make_engine(backend, *data, f"+recipe.model.filters={width}")
            result["width"][width] = rate(
                engine, lambda e=engine: list(e.train_batches(0)), len(engine.data.train)
            )
    return result


def draw(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for result in results:
        backend = result["backend"]
        sizes = sorted(int(s) for s in result["batch_size"])
        left.plot(sizes, [result["batch_size"][str(s)] for s in sizes], "o-", label=backend)
        widths = sorted(int(w) for w in result["width"])
        right.plot(widths, [result["width"][str(w)] for w in widths], "o-", label=backend)
    ylabel = "samples per CPU-second (1 thread)"
    left.set(xscale="log", xlabel="batch size", ylabel=ylabel, title="W1: batch size")
    right.set(xscale="log", xlabel="first conv filters (W1: 32)", ylabel=ylabel,
              title="W1 at batch 128: model width")  # fmt: skip
    for axis in (left, right):
        axis.set_xticks(axis.get_lines()[0].get_xdata())
        axis.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        axis.get_xaxis().set_minor_formatter(matplotlib.ticker.NullFormatter())
        axis.grid(alpha=0.3)
        axis.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def pipeline(backend: str, recipe: str, data: list[str]) -> dict[str, Any]:
    engine = make_engine(backend, *data, recipe=recipe)
    in_memory = list(engine.train_batches(0))  # materialized: framework tensors, on device
    n = len(engine.data.train)
    piped, memory = [], []
    for _ in range(7):  # interleaved, so load on the machine hits both alike
        piped.append(rate(engine, lambda: engine.train_batches(1), n, repeats=1))
        memory.append(rate(engine, lambda: in_memory, n, repeats=1))
    # Best of each: the passes least disturbed by other processes.
    return {
        "step_time_ratio_best": max(memory) / max(piped),  # pipeline / in-memory
        "step_time_ratio_median": statistics.median(memory) / statistics.median(piped),
        "samples_per_sec_pipeline": piped,
        "samples_per_sec_in_memory": memory,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="torch,tf")
    parser.add_argument("--what", choices=("all", "pipeline", "scaling"), default="all")
    parser.add_argument("--samples", type=int, default=4096, help="train samples")
    parser.add_argument("--recipes", default="bench_cnn,bench_mlp", help="for --what pipeline")
    parser.add_argument("--threads", type=int, default=0, help="threads per process (0: default)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/scaling.json")
    parser.add_argument("--png", type=Path, default=None, help="draw the scaling chart here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.what, args.samples, args.recipes.split(","))))
        return
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    if args.threads:
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TF_NUM_INTRAOP_THREADS"):
            env[name] = str(args.threads)
        env["TF_NUM_INTEROP_THREADS"] = "1"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    results = []
    for backend in args.backends.split(","):
        out = subprocess.run(
            [sys.executable, __file__, "--child", backend, "--what", args.what,
             "--samples", str(args.samples), "--recipes", args.recipes],
            env=env, cwd=REPO, capture_output=True, text=True, check=False,
        )  # fmt: skip
        if out.returncode != 0:
            sys.exit(f"{backend} failed:\n{out.stderr[-3000:]}")
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1], indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    if args.png and args.what != "pipeline":
        draw(json.loads(args.out.read_text()), args.png)
        print(f"wrote {args.png}", file=sys.stderr)


if __name__ == "__main__":
    main()
