"""backend.steps_per_execution on tf: dualtrain against Keras `fit` with the same steps per call.

    python benchmarks/steps_per_execution.py [--models ops_loss,multi_input,conv1d]
        [--per-call 1,10] [--rounds 3] [--epochs 4] [--threads 1] [--smoke]

Models of the zoo (benchmarks/zoo.py: recipes written the way a user writes one, data generated in
code). For each model and each N of --per-call, two systems, each in its own process, interleaved
over rounds (each round starts one system later):

- `dualtrain/tf`: `python -m dualtrain --config-dir benchmarks/zoo recipe=<r> backend=tf
  backend.jit_compile=false backend.steps_per_execution=N`;
- `fit/tf`: the same model, loss, train split, batch size and Adam settings (the zoo's `load_job`)
  through Keras's `model.fit(..., steps_per_execution=N)` on tf, what a Keras user sets instead.

A run's figure is its steady-state train samples/s (the first epoch, which traces, left out;
dualtrain's from summary.json, fit's from its epochs' wall time). The zoo's epochs are not
multiples of N (256 steps of 64 samples), so calls of other lengths end each epoch, as in a user's
run. Prints a markdown table (each N's median samples/s, dualtrain/fit, and each system against
its own N=1) and writes benchmarks/results/steps_per_execution.json.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import zoo  # benchmarks/ is on sys.path

REPO = Path(__file__).resolve().parents[1]
SYSTEMS = ("dualtrain/tf", "fit/tf")
DEFAULT_MODELS = "ops_loss,multi_input,conv1d"
NAME = "steps_per_execution"


def fit_child(
    model_name: str, per_call: int, epochs: int, smoke: bool, threads: int, out: Path
) -> None:
    """Keras fit with `per_call` steps per execution on the zoo model's job; writes samples/s."""
    import keras
    import tensorflow as tf

    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
    model_spec = zoo.MODELS[model_name]
    job = zoo.load_job(model_spec, zoo.config_overrides(model_spec, epochs, smoke))
    if job.recipe.has_phases:
        raise SystemExit(f"{model_name}: its own phases have no Model.fit equivalent")
    model = job.recipe.build_model(job.info)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=job.lr, **job.adam),
        loss=job.recipe.loss(),
        steps_per_execution=per_call,
        jit_compile=False,
    )
    durations: list[float] = []

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            durations.append(time.perf_counter() - self.start)

    model.fit(
        job.x, job.y, batch_size=job.batch_size, epochs=job.epochs, shuffle=True, verbose=0,
        callbacks=[EpochTimer()],
    )  # fmt: skip
    steady = durations[1:]
    out.write_text(json.dumps({"samples_per_sec": job.samples * len(steady) / sum(steady)}))


def run(system: str, model: str, per_call: int, args: argparse.Namespace) -> float:
    """One run in its own process; its steady-state samples/s."""
    spec = zoo.MODELS[model]
    with tempfile.TemporaryDirectory(prefix="dualtrain-spe-") as tmp:
        out = Path(tmp)
        if system == "dualtrain/tf":
            command = [
                sys.executable, "-m", "dualtrain", "--config-dir", str(zoo.ZOO),
                *zoo.config_overrides(spec, args.epochs, args.smoke),
                "backend=tf", "backend.jit_compile=false",
                f"backend.steps_per_execution={per_call}",
                # Log lines (and so calls' ends) at multiples of N, as the config requires.
                f"trainer.log_every_n_steps={math.lcm(10, per_call)}",
                "logger=[jsonl]", "logger.progress=false", "checkpoint.every_n_epochs=0",
                f"hydra.run.dir={out / 'run'}",
            ]  # fmt: skip
        else:
            command = [
                sys.executable, __file__, "--child", model, "--per-call", str(per_call),
                "--epochs", str(args.epochs), "--threads", str(args.threads),
                "--out", str(out / "fit.json"), *(["--smoke"] if args.smoke else []),
            ]  # fmt: skip
        env = zoo._env("dualtrain/tf" if system == "dualtrain/tf" else "tf.function", args.threads)
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{system} {model} N={per_call} failed:\n{done.stderr[-3000:]}")
        if system == "dualtrain/tf":
            summary = json.loads((out / "run" / "summary.json").read_text())
            return float(summary["train_samples_per_sec"])
        return float(json.loads((out / "fit.json").read_text())["samples_per_sec"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=DEFAULT_MODELS, help="comma-separated, of the zoo's")
    parser.add_argument("--per-call", default="1,10", help="steps per execution, comma-separated")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=4, help="per run; the first: warm-up")
    parser.add_argument("--threads", type=int, default=1, help="threads per process (0: default)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results" / f"{NAME}.json")
    parser.add_argument(
        "--smoke", action="store_true", help="tiny: 256 samples, 2 epochs, 1 round (a test's)"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.smoke:
        args.rounds, args.epochs = 1, 2
    per_calls = [int(n) for n in args.per_call.split(",")]
    if args.child:
        fit_child(args.child, per_calls[0], args.epochs, args.smoke, args.threads, args.out)
        return
    models = args.models.split(",")
    unknown = [m for m in models if m not in zoo.MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; the zoo: {', '.join(zoo.MODELS)}")
    runs = [(m, n, s) for m in models for n in per_calls for s in SYSTEMS]
    rates: dict[tuple[str, int, str], list[float]] = {run_: [] for run_ in runs}
    for round_ in range(args.rounds):
        shift = round_ % len(runs)
        for model, n, system in runs[shift:] + runs[:shift]:
            rates[(model, n, system)].append(run(system, model, n, args))
            print(f"round {round_}: {model} N={n} {system} {rates[(model, n, system)][-1]:,.0f}",
                  file=sys.stderr)  # fmt: skip
    median = {key: statistics.median(values) for key, values in rates.items()}
    base = per_calls[0]
    print(f"| model | N | dualtrain/tf | fit/tf | dualtrain / fit | dualtrain vs N={base} "
          f"| fit vs N={base} |\n|---|---:|---:|---:|---:|---:|---:|")  # fmt: skip
    for model in models:
        for n in per_calls:
            ours, theirs = median[(model, n, "dualtrain/tf")], median[(model, n, "fit/tf")]
            print(
                f"| {model} | {n} | {ours:,.0f} | {theirs:,.0f} | {ours / theirs:.2f}x "
                f"| {ours / median[(model, base, 'dualtrain/tf')]:.2f}x "
                f"| {theirs / median[(model, base, 'fit/tf')]:.2f}x |"
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows = [
        {"model": m, "per_call": n, "system": s, "samples_per_sec": rates[(m, n, s)]}
        for m, n, s in runs
    ]
    args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
