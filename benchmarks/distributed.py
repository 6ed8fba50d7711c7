"""One process against two, on both backends: samples/s and how far the losses drift apart.

    python benchmarks/distributed.py          # 3 epochs of the cnn recipe, each setup once
    python benchmarks/distributed.py --epochs 5 --out /tmp/distributed.json

Four setups, each in processes of its own, on 127.0.0.1:

| setup | command |
|---|---|
| torch, 1 process | `python -m dualtrain backend=torch ...` |
| torch, torchrun x2 | `torchrun --standalone --nproc_per_node=2 -m dualtrain backend=torch ...` |
| tf, 1 process | `python -m dualtrain backend=tf ...` |
| tf, multi_worker x2 | 2 x `python -m dualtrain backend=tf backend.strategy=multi_worker` |

(the multi_worker processes get TF_CONFIG naming both, on free ports)

All train the cnn recipe with dropout off (so 1 and 2 processes can agree step by step), the same
global batch (`data.batch_size`, split across the processes), logging every 10 steps. samples/s is
summary.json's steady state (after the first epoch: no start-up or tracing in it). "loss diff" is
the largest relative difference between the logged train losses of the 2-process run and the
1-process run of the same backend. Every process gets OMP_NUM_THREADS=1: on 2 cores, two processes
with several threads each fight over them.

Prints a Markdown table and writes everything to benchmarks/results/distributed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from machine_load import busy_cpu_seconds, children_cpu_seconds  # benchmarks/ is on sys.path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "distributed.json"
CHILD_TIMEOUT_S = 1800
SETUPS = (("torch", 1), ("torch", 2), ("tf", 1), ("tf", 2))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _commands(backend: str, processes: int, args: list[str]) -> list[tuple[list[str], dict]]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    python = [sys.executable, "-m"]
    if processes == 1:
        return [([*python, "dualtrain", f"backend={backend}", *args], env)]
    if backend == "torch":
        torchrun = ["torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
        return [([*python, *torchrun, "-m", "dualtrain", "backend=torch", *args], env)]
    workers = [f"127.0.0.1:{_free_port()}" for _ in range(processes)]
    command = [*python, "dualtrain", "backend=tf", "backend.strategy=multi_worker", *args]
    return [
        (command, {**env, "TF_CONFIG": json.dumps({
            "cluster": {"worker": workers}, "task": {"type": "worker", "index": i},
        })})
        for i in range(processes)
    ]  # fmt: skip


def run(backend: str, processes: int, epochs: int, batch_size: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="distributed_") as tmp:
        run_dir = Path(tmp) / "run"
        args = [
            "recipe=cnn", "recipe.model.dropout=0", f"trainer.max_epochs={epochs}",
            f"data.batch_size={batch_size}", "trainer.log_every_n_steps=10",
            "logger.progress=false", "logger=[jsonl]", f"hydra.run.dir={run_dir}",
        ]  # fmt: skip
        commands = _commands(backend, processes, args)
        busy_before, own_before = busy_cpu_seconds(), children_cpu_seconds()
        started = time.perf_counter()
        procs = [
            subprocess.Popen(c, cwd=REPO_ROOT, env=e, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
            for c, e in commands
        ]  # fmt: skip
        try:
            errors = [p.communicate(timeout=CHILD_TIMEOUT_S)[1] for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
        wall = time.perf_counter() - started
        busy_after, own_after = busy_cpu_seconds(), children_cpu_seconds()
        if any(p.returncode for p in procs):
            raise RuntimeError(f"{backend} x{processes} failed:\n{errors[0][-4000:]}")
        summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
        lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    losses = {}
    for line in map(json.loads, lines):
        if line["split"] == "train":
            losses[line["step"]] = line["loss"]
    other_load = None
    if busy_before is not None and busy_after is not None:
        other_load = max(0.0, (busy_after - busy_before) - (own_after - own_before)) / wall
    return {
        "backend": backend,
        "processes": processes,
        "steps": summary["steps"],
        "train_samples_per_sec": summary["train_samples_per_sec"],
        "train_seconds": summary["train_seconds"],
        "process_seconds": wall,
        "final_val": summary["final"]["val"],
        "distributed": summary.get("distributed"),
        "losses": losses,
        "other_load": other_load,  # CPU cores' worth of other processes' work during the run
    }


def table(runs: list[dict[str, Any]]) -> str:
    rows = [
        "| backend | processes | samples/s | vs 1 process | loss diff (max rel.) | val accuracy "
        "| wall s | other load |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        one = next(o for o in runs if o["backend"] == r["backend"] and o["processes"] == 1)
        diff = max(
            (
                abs(r["losses"][s] - v) / abs(v)
                for s, v in one["losses"].items()
                if s in r["losses"]
            ),
            default=float("nan"),
        )
        r["loss_diff_vs_one_process"] = diff
        ratio = r["train_samples_per_sec"] / one["train_samples_per_sec"]
        cells = [
            r["backend"],
            str(r["processes"]),
            f"{r['train_samples_per_sec']:,.0f}",
            f"{ratio:.2f}x",
            f"{diff:.1e}",
            f"{r['final_val'].get('accuracy', float('nan')):.4f}",
            f"{r['process_seconds']:.1f}",
            "" if r["other_load"] is None else f"{r['other_load']:.2f} cores",
        ]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32, help="the global batch")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    options = parser.parse_args()
    runs = [run(b, n, options.epochs, options.batch_size) for b, n in SETUPS]
    print(table(runs))
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(
        json.dumps({"epochs": options.epochs, "batch_size": options.batch_size, "runs": runs},
                   indent=2) + "\n",
        encoding="utf-8",
    )  # fmt: skip
    print(f"wrote {options.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
