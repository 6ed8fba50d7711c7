"""dualtrain against what users would pick instead, side by side on the same workloads.

    python benchmarks/systems.py --threads 1 --rounds 2 --epochs 3 --workloads W1,W2,W3

Every system runs in a process of its own (Keras fixes its backend per process) on the same
synthetic data, model and optimizer (Adam 1e-3, sparse cross-entropy from logits, float32):

    dualtrain/torch     python -m dualtrain recipe=bench_* backend=torch
    dualtrain/tf        python -m dualtrain recipe=bench_* backend=tf backend.jit_compile=false
    dualtrain/tf+xla    the same with backend.jit_compile=true
    torch.nn            a hand-written PyTorch eager loop over the same architecture in torch.nn
    torch+keras         a hand-written PyTorch loop (torch.optim.Adam) over the Keras model
    tf.function         a hand-written tf.function step over the Keras model, tf.data input
    tf.function+onednn  the same with TensorFlow's oneDNN ops on (TF_ENABLE_ONEDNN_OPTS=1), as
                        dualtrain/tf runs by default; the peers run with TensorFlow's default
    fit/tf, fit/torch   Keras Model.fit (jit_compile=False on tf)

Reported per system: steady-state samples/s (first epoch excluded; median over rounds), its ratio
to torch.nn, time from process start to the end of the first step, peak RSS, and model FLOP
utilization: training FLOPs (dualtrain's count of a training step's matmuls, convolutions and
attention, forward and gradients: docs/summary.md) per second over the fp32
matmul rate that a `matmul` process measures in the same run with the same threads. Prints a
Markdown table and writes JSON (--out). --smoke: a tiny run that checks the harness works.

On a machine with a CUDA GPU the torch systems run on it (Keras and dualtrain choose it by
themselves; the hand-written loops follow), each epoch's time ends after the GPU's queued work,
and the matmul rate is the GPU's fp32 `torch.mm` rate.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from machine_load import busy_cpu_seconds  # benchmarks/ is on sys.path
from workloads import WORKLOADS, Workload, torch_model

REPO = Path(__file__).resolve().parents[1]
SYSTEMS = (
    "dualtrain/torch",
    "dualtrain/tf",
    "dualtrain/tf+xla",
    "torch.nn",
    "torch+keras",
    "tf.function",
    "tf.function+onednn",
    "fit/tf",
    "fit/torch",
)
BASELINE = "torch.nn"
# The goals: (system, against, at least this ratio of samples/s); the last is our own
# like-for-like check: against a tf.function loop on the same (oneDNN) kernels as dualtrain/tf.
GOALS = (
    ("dualtrain/tf", "tf.function", 1.0),
    ("dualtrain/torch", "fit/torch", 1.0),
    ("dualtrain/torch", "torch.nn", 0.9),
    ("dualtrain/tf", "tf.function+onednn", 1.0),
)
SMOKE_SAMPLES = 256  # train samples per epoch in --smoke: two batches of W1


# -- the children: one system, one workload, one process -------------------------------------------


def child(system: str, workload: Workload, epochs: int, samples: int, threads: int) -> dict:
    """Trains `epochs` epochs and returns per-epoch times and the end of the first step."""
    if system == "matmul":
        return matmul_rate(threads, seconds=1.5 if epochs else 0.2)
    x, y = workload.data(samples=samples)
    trainer = {
        "torch.nn": torch_nn_loop,
        "torch+keras": torch_keras_loop,
        "tf.function": tf_function_loop,
        "tf.function+onednn": tf_function_loop,
        "fit/tf": keras_fit,
        "fit/torch": keras_fit,
    }[system]
    return trainer(workload, x, y, epochs, threads)


def _set_torch_threads(threads: int) -> Any:
    import torch

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    return torch


def _torch_device() -> Any:
    """The GPU if there is one, as Keras and dualtrain choose on torch; else the CPU."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _wait_for_gpu() -> None:
    """Waits for the GPU's queued work, so that a time includes it (nothing on a CPU)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.synchronize()


def _keras_model(workload: Workload, x: Any) -> Any:
    from dualtrain.data import DataInfo
    from dualtrain.recipes.bench import build_model

    info = DataInfo.classifier(workload.shape, workload.num_classes, x)
    return build_model(info, **workload.model)


def _epochs(run_epoch: Any, epochs: int) -> dict:
    """Times each epoch; `run_epoch(epoch, on_first_step)`."""
    first: list[float] = []
    times = []
    for epoch in range(epochs):
        start = time.perf_counter()
        run_epoch(epoch, lambda: first or first.append(time.time()))
        _wait_for_gpu()
        times.append(time.perf_counter() - start)
    return {"epoch_seconds": times, "first_step_at": first[0]}


def torch_nn_loop(workload: Workload, x: Any, y: Any, epochs: int, threads: int) -> dict:
    torch = _set_torch_threads(threads)
    device = _torch_device()
    model = torch_model(workload).to(device)
    xs = torch.from_numpy(x)
    if xs.ndim == 4:  # NHWC -> NCHW, as a torch user keeps images
        xs = xs.permute(0, 3, 1, 2).contiguous()
    ys = torch.from_numpy(y)
    return _torch_loop(model, model, xs.to(device), ys.to(device), workload.batch_size, epochs)


def torch_keras_loop(workload: Workload, x: Any, y: Any, epochs: int, threads: int) -> dict:
    torch = _set_torch_threads(threads)
    model = _keras_model(workload, x)

    def forward(xb: Any) -> Any:
        return model(xb, training=True)

    device = _torch_device()
    xs, ys = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
    return _torch_loop(forward, model, xs, ys, workload.batch_size, epochs)


def _torch_loop(forward: Any, module: Any, xs: Any, ys: Any, batch: int, epochs: int) -> dict:
    """The loop a PyTorch user writes: shuffled index batches of in-memory tensors, Adam."""
    import torch

    optimizer = torch.optim.Adam(module.parameters(), lr=1e-3)
    ys = ys.long()

    def run_epoch(epoch: int, on_first_step: Any) -> None:
        order = torch.randperm(len(xs), generator=torch.Generator().manual_seed(epoch))
        order = order.to(xs.device)
        for start in range(0, len(xs), batch):
            idx = order[start : start + batch]
            loss = torch.nn.functional.cross_entropy(forward(xs[idx]), ys[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            on_first_step()

    return _epochs(run_epoch, epochs)


def tf_function_loop(workload: Workload, x: Any, y: Any, epochs: int, threads: int) -> dict:
    import keras
    import tensorflow as tf

    model = _keras_model(workload, x)
    optimizer = keras.optimizers.Adam(1e-3)
    optimizer.build(model.trainable_variables)
    data = (
        tf.data.Dataset.from_tensor_slices((x, y))
        .shuffle(len(x), seed=0)
        .batch(workload.batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )

    @tf.function
    def step(xb: Any, yb: Any) -> None:
        with tf.GradientTape() as tape:
            logits = model(xb, training=True)
            loss = tf.reduce_mean(
                tf.nn.sparse_softmax_cross_entropy_with_logits(labels=yb, logits=logits)
            )
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)

    def run_epoch(epoch: int, on_first_step: Any) -> None:
        for xb, yb in data:
            step(xb, yb)
            on_first_step()

    return _epochs(run_epoch, epochs)


def keras_fit(workload: Workload, x: Any, y: Any, epochs: int, threads: int) -> dict:
    import keras

    if keras.backend.backend() == "torch":
        _set_torch_threads(threads)
    model = _keras_model(workload, x)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=False,
    )
    times: list[float] = []
    first: list[float] = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.start = time.perf_counter()

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            if not first:
                first.append(time.time())

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            _wait_for_gpu()
            times.append(time.perf_counter() - self.start)

    model.fit(x, y, batch_size=workload.batch_size, epochs=epochs, verbose=0, callbacks=[Timer()])
    return {"epoch_seconds": times, "first_step_at": first[0]}


def matmul_rate(threads: int, size: int = 1024, seconds: float = 1.5) -> dict:
    """The machine's fp32 matmul rate (FLOP/s) with these threads, or its GPU's: the best of
    timed bursts."""
    torch = _set_torch_threads(threads)
    device = _torch_device()
    size = size if device.type == "cpu" else 8192  # a GPU needs a larger product to fill it
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    torch.mm(a, b)
    _wait_for_gpu()
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        for _ in range(4):
            torch.mm(a, b)
        _wait_for_gpu()
        best = max(best, 4 * 2 * size**3 / (time.perf_counter() - start))
    return {"flops": best}


# -- the parent: runs, rounds, the report ----------------------------------------------------------


def _env(system: str, threads: int) -> dict[str, str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    if threads:
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TF_NUM_INTRAOP_THREADS"):
            env[name] = str(threads)
        env["TF_NUM_INTEROP_THREADS"] = "1"
    # The peers run TensorFlow as it comes (oneDNN ops on only on CPUs with AVX-512 VNNI or AMX);
    # dualtrain/tf turns them on unless told otherwise (dualtrain.engines.select_backend).
    if not system.startswith("dualtrain/"):
        env.pop("TF_ENABLE_ONEDNN_OPTS", None)
    if system.startswith("tf.function") or system == "fit/tf":
        env["KERAS_BACKEND"] = "tensorflow"
    if system == "tf.function+onednn":
        env["TF_ENABLE_ONEDNN_OPTS"] = "1"
    elif system in ("torch+keras", "fit/torch"):
        env["KERAS_BACKEND"] = "torch"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def _command(
    system: str, workload: Workload, epochs: int, samples: int, threads: int, out: Path
) -> list[str]:
    if system.startswith("dualtrain/"):
        backend = "torch" if system == "dualtrain/torch" else "tf"
        overrides = [
            f"recipe={workload.recipe}",
            f"backend={backend}",
            f"trainer.max_epochs={epochs}",
            "logger=[jsonl]",
            "logger.progress=false",
            "checkpoint.every_n_epochs=0",
            f"hydra.run.dir={out}",
        ]
        if backend == "tf":
            overrides.append(f"backend.jit_compile={str(system.endswith('xla')).lower()}")
        if samples != workload.train_samples:  # --smoke: val stays a fifth of all samples
            overrides.append(f"data.num_samples={samples * 5 // 4}")
        return [sys.executable, "-m", "dualtrain", *overrides]
    return [
        sys.executable, __file__, "--child", system, "--workloads", workload.name,
        "--epochs", str(epochs), "--samples", str(samples), "--threads", str(threads),
        "--out", str(out / "result.json"),
    ]  # fmt: skip


def run_one(system: str, workload: Workload, epochs: int, samples: int, threads: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="dualtrain-bench-") as tmp:
        out = Path(tmp)
        busy = busy_cpu_seconds()
        launched = time.time()
        started = time.perf_counter()
        with open(out / "stderr.txt", "w+") as stderr:
            proc = subprocess.Popen(
                _command(system, workload, epochs, samples, threads, out),
                cwd=REPO, env=_env(system, threads), stdout=subprocess.DEVNULL, stderr=stderr,
            )  # fmt: skip
            # wait4: this child's own peak RSS and CPU time (RUSAGE_CHILDREN would mix runs).
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            wall = time.perf_counter() - started
            stderr.seek(0)
            errors = stderr.read()
        if proc.returncode != 0:
            raise RuntimeError(f"{system} on {workload.name} failed:\n{errors[-3000:]}")
        result: dict[str, Any] = {"system": system, "workload": workload.name, "wall_seconds": wall}
        if system.startswith("dualtrain/"):
            summary = json.loads((out / "summary.json").read_text())
            result["samples_per_sec"] = summary["train_samples_per_sec"]
            result["first_step_seconds"] = summary["first_step_seconds"]
            # The model summary's count (docs/summary.md): the same on both backends.
            flops = (summary.get("model") or {}).get("flops_per_sample") or {}
            result["train_flops_per_sample"] = flops.get("train_step")
        else:
            report = json.loads((out / "result.json").read_text())
            if "flops" in report:
                return {**result, **report}
            steady = report["epoch_seconds"][1:]
            result["samples_per_sec"] = samples * len(steady) / sum(steady)
            result["first_step_seconds"] = report["first_step_at"] - launched
        result["peak_rss_mb"] = usage.ru_maxrss / 1024  # Linux: kilobytes
        after = busy_cpu_seconds()
        if busy is not None and after is not None:
            own = usage.ru_utime + usage.ru_stime
            result["other_load_cores"] = max(0.0, (after - busy - own) / wall)
        return result


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    workloads = [WORKLOADS[name] for name in args.workloads.split(",")]
    systems = args.systems.split(",")
    runs: list[dict[str, Any]] = []
    failures: list[dict[str, str]] = []
    matmul = []
    for round_ in range(args.rounds):
        # --smoke: a short burst (epochs=0 tells the child).
        burst = 0 if args.smoke else 1
        matmul.append(run_one("matmul", workloads[0], burst, 0, args.threads)["flops"])
        for workload in workloads:
            samples = SMOKE_SAMPLES if args.smoke else workload.train_samples
            shift = round_ % len(systems)  # each round starts one system later
            for system in systems[shift:] + systems[:shift]:
                try:
                    result = run_one(system, workload, args.epochs, samples, args.threads)
                except RuntimeError as err:  # one failing system must not lose the others
                    failures.append(
                        {"system": system, "workload": workload.name, "error": str(err)}
                    )
                    print(err, file=sys.stderr)
                    continue
                result["round"] = round_
                runs.append(result)
                print(
                    f"round {round_} {workload.name} {system}: "
                    f"{result['samples_per_sec']:,.0f} samples/s",
                    file=sys.stderr,
                )
    return {"matmul_flops": statistics.median(matmul), "runs": runs, "failures": failures}


def summarize(report: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    table: dict[str, dict[str, Any]] = {}
    for name in args.workloads.split(","):
        workload = WORKLOADS[name]
        runs_of = [r for r in report["runs"] if r["workload"] == name]
        counted = [r["train_flops_per_sample"] for r in runs_of if r.get("train_flops_per_sample")]
        # A dualtrain run's count, else one counted for the purpose (docs/summary.md).
        train_flops = counted[0] if counted else workload.train_flops_per_sample()
        rows: dict[str, Any] = {}
        for system in args.systems.split(","):
            runs = [r for r in report["runs"] if r["workload"] == name and r["system"] == system]
            if not runs:
                continue  # it failed (report["failures"])
            rates = [r["samples_per_sec"] for r in runs]
            rss = [r["peak_rss_mb"] for r in runs if r.get("peak_rss_mb")]
            rows[system] = {
                "samples_per_sec": statistics.median(rates),
                "min": min(rates),
                "max": max(rates),
                "first_step_seconds": statistics.median(r["first_step_seconds"] for r in runs),
                "peak_rss_mb": max(rss) if rss else None,
                "mfu": statistics.median(rates) * train_flops / report["matmul_flops"],
                "other_load_cores": max(r.get("other_load_cores", 0.0) for r in runs),
            }
        base = rows.get(BASELINE)
        for system, row in rows.items():
            row["vs_torch_nn"] = row["samples_per_sec"] / base["samples_per_sec"] if base else None
            # Per-round ratios: each round's pair ran close in time, so these are less noisy.
            row["vs_torch_nn_per_round"] = _per_round(report["runs"], name, system, BASELINE)
        table[name] = rows
    return table


def goals(report: dict[str, Any], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Each goal whose two systems ran, per workload: the ratio of every round (a round's two
    runs ran minutes apart, not the whole run apart) and their median, the goal's figure."""
    rows = []
    for name in args.workloads.split(","):
        for system, base, target in GOALS:
            ratios = _per_round(report["runs"], name, system, base)
            if ratios:
                median = statistics.median(ratios)
                rows.append(
                    {"workload": name, "system": system, "against": base, "target": target,
                     "per_round": ratios, "median": median, "met": median >= target}
                )  # fmt: skip
    return rows


def _per_round(runs: list[dict], workload: str, system: str, base: str) -> list[float]:
    by = {
        (r["system"], r["round"]): r["samples_per_sec"] for r in runs if r["workload"] == workload
    }
    rounds = sorted({r for s, r in by if s == system})
    return [by[(system, r)] / by[(base, r)] for r in rounds if (base, r) in by]


def markdown(table: dict[str, Any], report: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [
        f"fp32 matmul rate: {report['matmul_flops'] / 1e9:.1f} GFLOP/s "
        f"(threads={args.threads or 'default'}); {args.rounds} round(s) of {args.epochs} epochs",
        "",
        "| workload | system | samples/s | min-max | vs torch.nn | first step s | peak RSS MB "
        "| MFU | other load |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, rows in table.items():
        for system, row in rows.items():
            ratio = f"{row['vs_torch_nn']:.2f}x" if row["vs_torch_nn"] is not None else "-"
            rss = f"{row['peak_rss_mb']:,.0f}" if row["peak_rss_mb"] else "-"
            lines.append(
                f"| {name} | {system} | {row['samples_per_sec']:,.0f} | "
                f"{row['min']:,.0f}-{row['max']:,.0f} | {ratio} | "
                f"{row['first_step_seconds']:.1f} | {rss} | {100 * row['mfu']:.1f}% | "
                f"{row['other_load_cores']:.2f} |"
            )
    goal_rows = goals(report, args)
    if goal_rows:
        lines += ["", "| workload | goal | per round | median | met |", "|---|---|---|---:|---|"]
    for goal in goal_rows:
        rounds = ", ".join(f"{r:.2f}" for r in goal["per_round"])
        lines.append(
            f"| {goal['workload']} | {goal['system']} >= {goal['target']:.1f}x {goal['against']} "
            f"| {rounds} | {goal['median']:.2f}x | {'yes' if goal['met'] else 'no'} |"
        )
    return "\n".join(lines)


def environment() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for package in ("torch", "tensorflow", "tensorflow-cpu", "keras"):
        with contextlib.suppress(PackageNotFoundError):
            versions[package] = version(package)
    return {"python": platform.python_version(), "cpus": os.cpu_count(), "versions": versions}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", default="W1,W2,W3", help="comma-separated: W1,W2,W3")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    parser.add_argument(
        "--epochs", type=int, default=3, help="epochs per run; the first is warm-up"
    )
    parser.add_argument("--threads", type=int, default=0, help="threads per process (0: default)")
    parser.add_argument(
        "--smoke", action="store_true", help="tiny: 256 samples, 2 epochs, 1 round: checks it runs"
    )
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/systems.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--samples", type=int, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        result = child(
            args.child, WORKLOADS[args.workloads], args.epochs, args.samples, args.threads
        )
        args.out.write_text(json.dumps(result))
        return
    if args.smoke:
        args.rounds, args.epochs = 1, 2
    report = run_all(args)
    table = summarize(report, args)
    print(markdown(table, report, args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    everything = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "environment": environment(),
        "table": table,
        "goals": goals(report, args),
        **report,
    }
    args.out.write_text(json.dumps(everything, indent=2))
    print(f"wrote {args.out}", file=sys.stderr)
    if report["failures"]:
        sys.exit(f"{len(report['failures'])} run(s) failed: see {args.out}")


if __name__ == "__main__":
    main()
