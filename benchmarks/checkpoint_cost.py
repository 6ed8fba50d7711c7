"""What saving checkpoints costs a training run, on each backend.

Trains the cnn recipe (digits, batch 32: 45 steps per epoch) at two checkpoint intervals and
reads each run's summary.json:

- `every epoch`: the default, `checkpoint.every_n_epochs=1`.
- `every 10 steps`: a stress setting, `checkpoint.every_n_steps=10` on top of the epoch saves.

Reported per backend and interval (medians over the rounds):

- `checkpoint_seconds / train_seconds` as %. Note the two are not nested: a save after a step
  falls inside `train_seconds`, the save after each epoch (like validation) does not.
- ms per save: `checkpoint_seconds` over the number of saves, counted as `epochs` (every epoch) or
  `epochs + steps // 10` (every 10 steps; a step save that falls on an epoch end is followed by the
  epoch save of the same step, which rewrites it: both count). The final save at the end of
  training is skipped because the last step is already saved by the last epoch's save.
- the size of one checkpoint on disk (model.npz, optimizer.npz, trainer.json), and of the whole
  checkpoints/ directory (two step directories are kept).
- steady-state samples/s, and the cores other processes kept busy meanwhile (from /proc/stat less
  the run's own CPU time; Linux only). Torch's eager throughput collapses when another process
  takes a core, so rerun when "other load" is well above 0.

Each run is its own process; runs are interleaved round-robin, each round starting one system
later than the last.

Usage, from the repository root:

    python benchmarks/checkpoint_cost.py [--repeats 3] [--epochs 5] [--out PATH]
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

from machine_load import busy_cpu_seconds, children_cpu_seconds  # benchmarks/ is on sys.path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "checkpoint_cost.json"
BACKENDS = ("torch", "tf")
STRESS_EVERY_N_STEPS = 10
INTERVALS = (0, STRESS_EVERY_N_STEPS)  # checkpoint.every_n_steps; 0: only every epoch
CHILD_TIMEOUT_S = 1800


def interval_name(every_n_steps: int) -> str:
    return f"every {every_n_steps} steps" if every_n_steps else "every epoch"


def run(backend: str, epochs: int, every_n_steps: int) -> dict[str, Any]:
    """One training run in its own process; returns the figures read from its run directory."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
    with tempfile.TemporaryDirectory(prefix="checkpoint_cost_") as tmp:
        run_dir = Path(tmp) / "run"
        command = [
            sys.executable, "-m", "dualtrain", "recipe=cnn", f"backend={backend}",
            f"trainer.max_epochs={epochs}", "logger.progress=false", f"hydra.run.dir={run_dir}",
        ]  # fmt: skip
        if every_n_steps:
            command.append(f"checkpoint.every_n_steps={every_n_steps}")
        busy_before, own_before = busy_cpu_seconds(), children_cpu_seconds()
        started = time.perf_counter()
        proc = subprocess.run(
            command, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
            timeout=CHILD_TIMEOUT_S, check=False,
        )  # fmt: skip
        wall = time.perf_counter() - started
        busy_after, own_after = busy_cpu_seconds(), children_cpu_seconds()
        summary_file = run_dir / "summary.json"
        if proc.returncode != 0 or not summary_file.exists():
            raise RuntimeError(
                f"failed (exit {proc.returncode}): {' '.join(command)}\n{proc.stderr[-4000:]}"
            )
        summary: dict[str, Any] = json.loads(summary_file.read_text(encoding="utf-8"))
        if summary["status"] != "completed":
            raise RuntimeError(f"{' '.join(command)}: run ended {summary['status']!r}")
        checkpoints = run_dir / "checkpoints"
        last = (checkpoints / "last").resolve()
        last_step = json.loads((last / "trainer.json").read_text(encoding="utf-8"))["step"]
        checkpoint_bytes = _disk_bytes(last)
        all_bytes = _disk_bytes(checkpoints)
    steps = int(summary["steps"])
    saves = epochs + (steps // every_n_steps if every_n_steps else 0)
    other_load = None
    if busy_before is not None and busy_after is not None:
        other_load = max(0.0, (busy_after - busy_before) - (own_after - own_before)) / wall
    return {
        "backend": backend,
        "every_n_steps": every_n_steps,
        "steps": steps,
        "saves": saves,
        "last_checkpoint_step": last_step,  # == steps: the final save was skipped
        "checkpoint_seconds": summary["checkpoint_seconds"],
        "train_seconds": summary["train_seconds"],
        "train_samples_per_sec": summary["train_samples_per_sec"],
        "checkpoint_bytes": checkpoint_bytes,
        "checkpoints_dir_bytes": all_bytes,
        "process_seconds": wall,
        "other_load": other_load,
    }


def _disk_bytes(path: Path) -> int:
    """Bytes that the files under `path` take on disk (allocated blocks), links not followed."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.lstat().st_blocks * 512 for p in files if not p.is_symlink())


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for backend in BACKENDS:
        for every_n_steps in INTERVALS:
            group = [
                r for r in runs if r["backend"] == backend and r["every_n_steps"] == every_n_steps
            ]
            loads = [r["other_load"] for r in group if r["other_load"] is not None]
            rows.append({
                "backend": backend,
                "interval": interval_name(every_n_steps),
                "saves": statistics.median(r["saves"] for r in group),
                "checkpoint_share": statistics.median(
                    r["checkpoint_seconds"] / r["train_seconds"] for r in group
                ),
                "ms_per_save": statistics.median(
                    1000 * r["checkpoint_seconds"] / r["saves"] for r in group
                ),
                "checkpoint_mb": statistics.median(r["checkpoint_bytes"] for r in group) / 1e6,
                "checkpoints_dir_mb": statistics.median(
                    r["checkpoints_dir_bytes"] for r in group
                ) / 1e6,
                "samples_per_sec": statistics.median(r["train_samples_per_sec"] for r in group),
                "max_other_load": max(loads, default=None),
                "final_save_skipped": all(r["last_checkpoint_step"] == r["steps"] for r in group),
            })  # fmt: skip
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| backend | interval | saves/run | checkpoint / train time | ms per save | "
        "checkpoint MB (dir) | samples/s | other load |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        load = "n/a" if r["max_other_load"] is None else f"{r['max_other_load']:.2f}"
        lines.append(
            f"| {r['backend']} | {r['interval']} | {r['saves']:g} | "
            f"{100 * r['checkpoint_share']:.2f}% | {r['ms_per_save']:.1f} | "
            f"{r['checkpoint_mb']:.2f} ({r['checkpoints_dir_mb']:.2f}) | "
            f"{r['samples_per_sec']:,.0f} | {load} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()

    systems = [(backend, n) for backend in BACKENDS for n in INTERVALS]
    runs: list[dict[str, Any]] = []
    for round_ in range(args.repeats):
        shift = round_ % len(systems)
        for backend, every_n_steps in systems[shift:] + systems[:shift]:
            result = {"round": round_, **run(backend, args.epochs, every_n_steps)}
            runs.append(result)
            print(json.dumps(result), file=sys.stderr)

    rows = summarize(runs)
    print(markdown(rows))
    print(
        f"\n{args.repeats} rounds of {args.epochs} epochs, medians. Checkpoint / train time: "
        "the epoch-end saves are outside train time, the step saves inside it."
    )
    if not all(r["final_save_skipped"] for r in rows):
        print("note: some runs saved again at the end (last step not saved before)")
    busiest = max((r["max_other_load"] or 0.0 for r in rows), default=0.0)
    if busiest > 0.25:
        print(f"warning: other processes kept {busiest:.2f} cores busy during a run; rerun")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "runs": runs}, indent=2) + "\n")
    print(f"\nwritten: {args.out}")


if __name__ == "__main__":
    main()
