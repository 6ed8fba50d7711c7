"""dualtrain's own training loop against Keras `Model.fit`, on the same cnn workload.

Each system trains the cnn recipe (scikit-learn digits, batch size 32, Adam lr 0.002) in its own
subprocess, because Keras fixes its backend once per process. The systems run interleaved,
round-robin, for `--repeats` rounds of `--epochs` epochs each; a run's figure is its steady-state
train throughput (samples per second with the first epoch, which traces and compiles, left out,
and validation left out). The report gives the median per system and the ratios between them.

Other processes on the machine distort the figures, torch's most of all (its OpenMP threads wait on
each other when a core is taken), so each run also records how many cores the rest of the machine
kept busy meanwhile ("other load", from /proc/stat less the run's own CPU time; Linux only).

Usage, from the repository root:

    python benchmarks/loop_vs_fit.py [--repeats 3] [--epochs 6] [--batch-size 32] [--out PATH]

The script re-runs itself with the hidden `--fit-child` flag for the `Model.fit` systems.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from machine_load import busy_cpu_seconds, children_cpu_seconds  # benchmarks/ is on sys.path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "loop_vs_fit.json"
KERAS_BACKENDS = {"torch": "torch", "tf": "tensorflow"}
CHILD_TIMEOUT_S = 1800
BUSY_MACHINE_CORES = 0.25  # other processes' load above which the report warns

# The cnn recipe's settings (dualtrain/configs/recipe/cnn.yaml and data/digits.yaml), for Model.fit.
CNN_MODEL_KWARGS: dict[str, Any] = {"filters": [32, 64], "dense_units": 128, "dropout": 0.25}
LEARNING_RATE = 0.002
VAL_FRACTION = 0.2
SEED = 0


@dataclass(frozen=True)
class System:
    """One way of training the workload: a runner on a backend with a jit_compile choice."""

    name: str
    runner: str  # "dualtrain" (python -m dualtrain) or "fit" (keras Model.fit)
    backend: str  # dualtrain's backend name: "torch" or "tf"
    jit_compile: str  # "auto", "true" or "false", as the runner's own option takes it


SYSTEMS: tuple[System, ...] = (
    System("dualtrain/torch", "dualtrain", "torch", "auto"),  # auto: eager, dualtrain's default
    System("dualtrain/tf", "dualtrain", "tf", "false"),  # plain tf.function (the CPU default)
    System("dualtrain/tf+xla", "dualtrain", "tf", "true"),
    System("fit/torch", "fit", "torch", "auto"),  # auto: eager on torch
    System("fit/tf auto", "fit", "tf", "auto"),  # whatever Keras chooses; recorded per run
    System("fit/tf", "fit", "tf", "false"),
    System("fit/tf+xla", "fit", "tf", "true"),
)

# (label, numerator, denominator): each ratio divides one system's samples/s by another's.
RATIOS: tuple[tuple[str, str, str], ...] = (
    ("torch: dualtrain / fit", "dualtrain/torch", "fit/torch"),
    ("tf: dualtrain / fit (no XLA)", "dualtrain/tf", "fit/tf"),
    ("tf: dualtrain / fit (XLA)", "dualtrain/tf+xla", "fit/tf+xla"),
    ("tf: dualtrain / fit (both defaults)", "dualtrain/tf", "fit/tf auto"),
    ("dualtrain tf: XLA / no XLA", "dualtrain/tf+xla", "dualtrain/tf"),
    ("fit tf: XLA / no XLA", "fit/tf+xla", "fit/tf"),
)


@dataclass(frozen=True)
class RunResult:
    """One run of one system: its steady-state throughput and what it resolved jit_compile to."""

    system: str
    round: int
    samples_per_sec: float
    jit_compile: bool | None  # the resolved choice, as the run reported it
    wall_seconds: float  # the whole subprocess: imports, data, tracing/compiling, every epoch
    other_load: float | None  # cores kept busy by other processes meanwhile (None off Linux)


# -- the Model.fit child ---------------------------------------------------------------------------


def fit_child(backend: str, jit_compile: str, epochs: int, batch_size: int, result: Path) -> None:
    """Trains the cnn with Keras `Model.fit` in this process and writes its figures to `result`.

    Runs with KERAS_BACKEND already set by the parent, before anything imports Keras.
    """
    import random

    import numpy as np

    random.seed(SEED)
    np.random.seed(SEED)
    if backend == "torch":
        import torch

        torch.manual_seed(SEED)
    else:
        import tensorflow as tf

        tf.random.set_seed(SEED)

    import keras

    from dualtrain.data import DataInfo, stratified_split
    from dualtrain.data.sources import digits
    from dualtrain.recipes.cnn import build_model

    if keras.backend.backend() != KERAS_BACKENDS[backend]:
        raise RuntimeError(f"Keras runs on {keras.backend.backend()}, expected {backend}")

    x, y = digits()
    train, _ = stratified_split(x, y, VAL_FRACTION, seed=SEED)
    info = DataInfo.classifier(tuple(train.x.shape[1:]), int(y.max()) + 1, x_train=train.x)
    model = build_model(info, **CNN_MODEL_KWARGS)
    # No metrics: dualtrain's train step tracks only the loss, which fit tracks too.
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=LEARNING_RATE),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile={"auto": "auto", "true": True, "false": False}[jit_compile],
    )
    durations: list[float] = []

    class EpochTimer(keras.callbacks.Callback):
        """Times each epoch from on_epoch_begin to on_epoch_end; fit is given no validation data."""

        def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            durations.append(time.perf_counter() - self.start)

    model.fit(
        train.x,
        train.y,
        batch_size=batch_size,
        epochs=epochs,
        shuffle=True,
        verbose=0,
        callbacks=[EpochTimer()],
    )
    steady = durations[1:]  # the first epoch traces (and compiles): left out
    report = {
        "train_samples_per_sec": len(train) * len(steady) / sum(steady),
        "jit_compile": bool(model.jit_compile),
        "epoch_seconds": durations,
    }
    result.write_text(json.dumps(report), encoding="utf-8")


# -- the parent: one subprocess per run ------------------------------------------------------------


def run_system(system: System, round_: int, epochs: int, batch_size: int) -> RunResult:
    """Runs one system once in a fresh subprocess and reads back its steady-state throughput."""
    env = dict(os.environ)
    env["KERAS_BACKEND"] = KERAS_BACKENDS[system.backend]
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with tempfile.TemporaryDirectory(prefix="loop_vs_fit_") as tmp:
        tmpdir = Path(tmp)
        if system.runner == "dualtrain":
            command = [
                sys.executable,
                "-m",
                "dualtrain",
                "recipe=cnn",
                f"backend={system.backend}",
                f"backend.jit_compile={system.jit_compile}",
                "logger.progress=false",
                f"trainer.max_epochs={epochs}",
                f"data.batch_size={batch_size}",
                f"hydra.run.dir={tmpdir / 'run'}",
            ]
            result_file = tmpdir / "run" / "summary.json"
        else:
            result_file = tmpdir / "fit.json"
            command = [
                sys.executable,
                str(Path(__file__).resolve()),
                "--fit-child",
                f"--backend={system.backend}",
                f"--jit-compile={system.jit_compile}",
                f"--epochs={epochs}",
                f"--batch-size={batch_size}",
                f"--result={result_file}",
            ]
        busy_before, own_before = busy_cpu_seconds(), children_cpu_seconds()
        started = time.perf_counter()
        proc = subprocess.run(
            command,
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=CHILD_TIMEOUT_S,
            check=False,
        )
        wall = time.perf_counter() - started
        busy_after, own_after = busy_cpu_seconds(), children_cpu_seconds()
        if proc.returncode != 0 or not result_file.exists():
            raise RuntimeError(
                f"{system.name} failed (exit {proc.returncode}): {' '.join(command)}\n"
                f"{proc.stderr[-4000:]}"
            )
        report = json.loads(result_file.read_text(encoding="utf-8"))
    if system.runner == "dualtrain" and report.get("status") != "completed":
        raise RuntimeError(f"{system.name}: dualtrain run ended {report.get('status')!r}")
    other_load = None
    if busy_before is not None and busy_after is not None:
        others = (busy_after - busy_before) - (own_after - own_before)
        other_load = max(0.0, others) / wall
    return RunResult(
        system=system.name,
        round=round_,
        samples_per_sec=float(report["train_samples_per_sec"]),
        jit_compile=report.get("jit_compile"),
        wall_seconds=wall,
        other_load=other_load,
    )


def run_all(repeats: int, epochs: int, batch_size: int) -> list[RunResult]:
    """Runs every system once per round; each round starts one system later than the last."""
    results: list[RunResult] = []
    for round_ in range(repeats):
        shift = round_ % len(SYSTEMS)
        for system in SYSTEMS[shift:] + SYSTEMS[:shift]:
            result = run_system(system, round_, epochs, batch_size)
            results.append(result)
            print(
                f"[round {round_ + 1}/{repeats}] {system.name:<18} "
                f"{result.samples_per_sec:8.0f} samples/s  jit_compile={result.jit_compile}  "
                f"(process {result.wall_seconds:.1f} s, other load {_cores(result.other_load)})",
                file=sys.stderr,
                flush=True,
            )
    return results


# -- summary -------------------------------------------------------------------------------------


def summarize(results: list[RunResult]) -> dict[str, Any]:
    """Median, spread and resolved jit_compile per system; ratios of medians and paired ratios."""
    systems: dict[str, Any] = {}
    for system in SYSTEMS:
        runs = [r for r in results if r.system == system.name]
        rates = [r.samples_per_sec for r in runs]
        loads = [r.other_load for r in runs if r.other_load is not None]
        systems[system.name] = {
            **asdict(system),
            "median_samples_per_sec": statistics.median(rates),
            "min_samples_per_sec": min(rates),
            "max_samples_per_sec": max(rates),
            "median_process_seconds": statistics.median(r.wall_seconds for r in runs),
            "resolved_jit_compile": sorted({str(r.jit_compile) for r in runs}),
            "max_other_load": max(loads, default=None),
        }
    ratios: dict[str, Any] = {}
    for label, num, den in RATIOS:
        by_round = {r.round: r.samples_per_sec for r in results if r.system == den}
        paired = [r.samples_per_sec / by_round[r.round] for r in results if r.system == num]
        ratios[label] = {
            "numerator": num,
            "denominator": den,
            "ratio_of_medians": systems[num]["median_samples_per_sec"]
            / systems[den]["median_samples_per_sec"],
            "paired_median": statistics.median(paired),
            "paired_min": min(paired),
            "paired_max": max(paired),
        }
    return {"systems": systems, "ratios": ratios}


def _cores(load: float | None) -> str:
    return "n/a" if load is None else f"{load:.2f} cores"


def markdown(summary: dict[str, Any], repeats: int) -> str:
    """The summary as two Markdown tables: throughput per system, then the ratios."""
    lines = [
        f"| system | jit_compile (asked → resolved) | median samples/s | min–max ({repeats} runs) "
        "| process s | max other load |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, s in summary["systems"].items():
        resolved = "/".join(s["resolved_jit_compile"])
        lines.append(
            f"| {name} | {s['jit_compile']} → {resolved} | {s['median_samples_per_sec']:.0f} "
            f"| {s['min_samples_per_sec']:.0f}–{s['max_samples_per_sec']:.0f} "
            f"| {s['median_process_seconds']:.1f} | {_cores(s['max_other_load'])} |"
        )
    lines += [
        "",
        "| ratio | of medians | per round: median (min–max) |",
        "|---|---:|---:|",
    ]
    for label, r in summary["ratios"].items():
        lines.append(
            f"| {label} | {r['ratio_of_medians']:.2f} "
            f"| {r['paired_median']:.2f} ({r['paired_min']:.2f}–{r['paired_max']:.2f}) |"
        )
    return "\n".join(lines)


def environment() -> dict[str, Any]:
    """Versions and machine, read without importing Keras or either framework in this process."""
    from importlib.metadata import PackageNotFoundError, version

    packages: dict[str, str | None] = {}
    for name in ("dualtrain", "keras", "torch", "tensorflow-cpu", "tensorflow", "numpy"):
        try:
            packages[name] = version(name)
        except PackageNotFoundError:
            packages[name] = None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "packages": {k: v for k, v in packages.items() if v is not None},
    }


# -- command line --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Steady-state train throughput of dualtrain's loop against Keras Model.fit on the cnn "
            "recipe, torch and tf, each run in its own subprocess, interleaved."
        )
    )
    parser.add_argument("--repeats", type=int, default=3, help="rounds over all systems (3)")
    parser.add_argument(
        "--epochs", type=int, default=6, help="epochs per run, the first not timed (6)"
    )
    parser.add_argument("--batch-size", type=int, default=32, help="batch size (32, the cnn's)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    # The Model.fit child: this script re-run in a fresh process with KERAS_BACKEND set.
    parser.add_argument("--fit-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--backend", choices=sorted(KERAS_BACKENDS), help=argparse.SUPPRESS)
    parser.add_argument("--jit-compile", choices=["auto", "true", "false"], help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: the first epoch is not timed")
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    if args.fit_child and (args.backend is None or args.jit_compile is None or not args.result):
        parser.error("--fit-child needs --backend, --jit-compile and --result")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.fit_child:
        fit_child(args.backend, args.jit_compile, args.epochs, args.batch_size, args.result)
        return
    flags = sys.argv[1:] if argv is None else argv
    command = shlex.join(["python", "benchmarks/loop_vs_fit.py", *flags])
    print(
        f"{len(SYSTEMS)} systems x {args.repeats} rounds, {args.epochs} epochs each, "
        f"batch size {args.batch_size}",
        file=sys.stderr,
        flush=True,
    )
    started = time.perf_counter()
    results = run_all(args.repeats, args.epochs, args.batch_size)
    summary = summarize(results)
    table = markdown(summary, args.repeats)
    print(table)
    busiest = max((r.other_load or 0.0 for r in results), default=0.0)
    if busiest > BUSY_MACHINE_CORES:
        print(
            f"\nwarning: other processes kept up to {busiest:.2f} cores busy during a run; "
            "the figures are distorted (torch's most); rerun on a quiet machine",
            file=sys.stderr,
        )
    payload = {
        "benchmark": "loop_vs_fit",
        "command": command,
        "settings": {
            "recipe": "cnn",
            "repeats": args.repeats,
            "epochs": args.epochs,
            "timed_epochs": args.epochs - 1,
            "batch_size": args.batch_size,
            "learning_rate": LEARNING_RATE,
            "model": CNN_MODEL_KWARGS,
        },
        "environment": environment(),
        "total_seconds": time.perf_counter() - started,
        **summary,
        "runs": [asdict(r) for r in results],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
