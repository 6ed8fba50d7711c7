"""How dualtrain's training slows down when other processes compete for the cores.

    python benchmarks/shared_machine.py                 # 3 interleaved rounds, about 4-6 minutes
    python benchmarks/shared_machine.py --conditions quiet,loaded,late --backends torch
    python benchmarks/shared_machine.py --smoke         # a tiny run that checks the harness

Trains a small Conv1D classifier (written to a temporary `--config-dir` as a user's recipe, its
data generated in code) with `python -m dualtrain`, each run in a process of its own, on each
backend, with two sets of thread settings:

    old   DUALTRAIN_THREADS=off: torch and TensorFlow as they come (one thread per CPU; torch's
          OpenMP threads spin while they wait)
    new   dualtrain's defaults (dualtrain/threads.py, docs/shared-machines.md)

in these conditions (`--conditions`):

    quiet    nothing added (whatever else runs on the machine is measured and reported)
    loaded   `--load` busy-looping processes (default: two per core this process may use),
             started before the run and stopped after it: a fixed competing load
    late     the same load, started only once the run trains, after it has chosen its threads
             (not in the default set: it shows what a choice made at the start cannot see)

Rounds interleave every (condition, backend, settings) run, each round in another order. The
figure is summary.json's steady-state `train_samples_per_sec` (first epoch excluded); each run
also records the cores that other processes kept busy (besides the run and the busy loops), its
own CPU time, and what dualtrain set (from its log). Prints a Markdown table of median samples/s
and slowdowns (loaded / quiet: the ratio of the medians, and each round's ratio), new / old per
condition, and the issue's goal (torch slows down no more than tf); writes everything to
benchmarks/results/shared_machine.json (`--out`). A busy machine lengthens the run: torch's old
settings under the load train 10-100x slower.
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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from machine_load import busy_cpu_seconds  # benchmarks/ is on sys.path

REPO = Path(__file__).resolve().parents[1]
BACKENDS = ("torch", "tf")
SETTINGS = ("old", "new")
CONDITIONS = ("quiet", "loaded", "late")
RECIPE = "shared_conv1d"

# The user's recipe of the issue, in small: a Conv1D classifier on generated sequences.
RECIPE_MODULE = '''"""A Conv1D classifier on generated sequences (benchmarks/shared_machine.py)."""

import keras
import numpy as np


def load_data(seed, num_samples, length, channels, num_classes):
    """Noisy sine waves; the class sets the frequency."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, num_classes, num_samples).astype("int32")
    t = np.arange(length, dtype="float32")
    phase = rng.uniform(0, 2 * np.pi, (num_samples, 1, channels))
    x = np.sin(0.05 * (1 + y)[:, None, None] * t[None, :, None] + phase)
    x = x + rng.normal(scale=0.5, size=x.shape)
    return x.astype("float32"), y


def build_model(data, filters):
    inputs = keras.Input(data.input_shape)
    x = keras.layers.Conv1D(filters, 5, activation="relu")(inputs)
    x = keras.layers.MaxPooling1D(2)(x)
    x = keras.layers.Conv1D(filters, 5, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling1D()(x)
    return keras.Model(inputs, keras.layers.Dense(data.num_classes)(x))


def loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)
'''

RECIPE_CONFIG = f"""# @package _global_
defaults:
  - override /data: python
recipe:
  name: {RECIPE}
  module: {RECIPE}
  model:
    filters: 32
data:
  source: {RECIPE}:load_data
  num_samples: 2560
  length: 64
  channels: 4
  num_classes: 4
  batch_size: 64
optimizer:
  lr: 0.003
"""


def write_recipe(directory: Path) -> Path:
    """The recipe as a user writes one: `<directory>/recipe/<name>.yaml` beside its module."""
    (directory / "recipe").mkdir(parents=True, exist_ok=True)
    (directory / "recipe" / f"{RECIPE}.yaml").write_text(RECIPE_CONFIG)
    (directory / f"{RECIPE}.py").write_text(RECIPE_MODULE)
    return directory


# -- the competing load ----------------------------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    """User and system CPU seconds of a running process (/proc/<pid>/stat); 0 where unreadable."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class BusyLoops:
    """`count` processes that each keep a core busy, from start() to stop()."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.procs: list[subprocess.Popen[bytes]] = []
        self.cpu_at_stop = 0.0

    def start(self) -> None:
        self.procs = [
            subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(self.count)
        ]

    def cpu_seconds(self) -> float:
        """CPU seconds the running loops have used so far."""
        return sum(_cpu_seconds(p.pid) for p in self.procs)

    def stop(self) -> None:
        for proc in self.procs:
            proc.kill()
        for proc in self.procs:
            proc.wait()
        self.procs = []


@contextlib.contextmanager
def competing_load(count: int) -> Iterator[BusyLoops]:
    loops = BusyLoops(count)
    if count:
        loops.start()
        time.sleep(0.3)  # running before the run starts, as a load already there would be
    try:
        yield loops
    finally:
        loops.stop()


# -- one run ---------------------------------------------------------------------------------------


def _env(settings: str) -> dict[str, str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    # The thread settings come from dualtrain (new) or the frameworks (old), not from this shell.
    for name in (
        "OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "MKL_NUM_THREADS",
        "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "DUALTRAIN_THREADS",
    ):  # fmt: skip
        env.pop(name, None)
    if settings == "old":
        env["DUALTRAIN_THREADS"] = "off"
    return env


def _threads_line(log: Path) -> str:
    """What dualtrain set, from its log line (`threads: ...`); "" where it set nothing."""
    with contextlib.suppress(OSError):
        for line in log.read_text().splitlines():
            if "threads: " in line:
                return line.split("threads: ", 1)[1].split(" (", 1)[0]
    return ""


def _wait_for_training(proc: subprocess.Popen[bytes], log: Path) -> None:
    """Returns once the run logs that it trains (imports and thread settings done), or ends."""
    while proc.poll() is None:
        with contextlib.suppress(OSError):
            if "training " in log.read_text():
                return
        time.sleep(0.02)


def run_one(
    backend: str, settings: str, condition: str, args: argparse.Namespace, recipes: Path
) -> dict[str, Any]:
    load = args.load if condition in ("loaded", "late") else 0
    with (
        tempfile.TemporaryDirectory(prefix="dualtrain-shared-") as tmp,
        competing_load(load if condition == "loaded" else 0) as loops,
    ):
        out = Path(tmp)
        command = [
            sys.executable, "-m", "dualtrain", "--config-dir", str(recipes),
            f"recipe={RECIPE}", f"backend={backend}", f"data.num_samples={args.samples}",
            f"trainer.max_epochs={args.epochs}", "logger=[jsonl]", "logger.progress=false",
            "checkpoint.every_n_epochs=0", f"hydra.run.dir={out / 'run'}",
        ]  # fmt: skip
        busy, loops_cpu = busy_cpu_seconds(), loops.cpu_seconds()
        started = time.perf_counter()
        with open(out / "stderr.txt", "w+") as stderr:
            proc = subprocess.Popen(
                command, cwd=out, env=_env(settings), stdout=subprocess.DEVNULL, stderr=stderr
            )
            if condition == "late":  # the load comes once the run has chosen its threads
                _wait_for_training(proc, out / "run" / "dualtrain.log")
                loops.count = load
                loops.start()
            _, status, usage = os.wait4(proc.pid, 0)  # this child's own CPU time
            wall = time.perf_counter() - started
            stderr.seek(0)
            errors = stderr.read()
        loops_cpu = loops.cpu_seconds() - loops_cpu
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"{backend} {settings} {condition} failed:\n{errors[-3000:]}")
        summary = json.loads((out / "run" / "summary.json").read_text())
        own = usage.ru_utime + usage.ru_stime
        result: dict[str, Any] = {
            "backend": backend,
            "settings": settings,
            "condition": condition,
            "load_processes": load,
            "samples_per_sec": summary["train_samples_per_sec"],
            "wall_seconds": wall,
            "own_cores": own / wall,
            "load_cores": loops_cpu / wall,
            "threads": _threads_line(out / "run" / "dualtrain.log"),
        }
        after = busy_cpu_seconds()
        if busy is not None and after is not None:
            # Cores busy with neither this run nor the busy loops: the machine's own background.
            result["background_cores"] = max(0.0, (after - busy - own - loops_cpu) / wall)
        return result


# -- rounds and the report -------------------------------------------------------------------------


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    recipes = write_recipe(Path(tempfile.mkdtemp(prefix="dualtrain-shared-recipe-")))
    cases = [(c, b, s) for c in args.conditions for b in args.backends for s in SETTINGS]
    runs: list[dict[str, Any]] = []
    failures: list[dict[str, str]] = []
    for round_ in range(args.rounds):
        shift = (round_ * 3) % len(cases)  # each round in another order
        for condition, backend, settings in cases[shift:] + cases[:shift]:
            try:
                result = run_one(backend, settings, condition, args, recipes)
            except RuntimeError as err:  # one failing run must not lose the others
                failures.append({"case": f"{backend} {settings} {condition}", "error": str(err)})
                print(err, file=sys.stderr)
                continue
            result["round"] = round_
            runs.append(result)
            print(
                f"round {round_} {condition:6} {backend:5} {settings}: "
                f"{result['samples_per_sec']:,.0f} samples/s, {result['wall_seconds']:.1f} s, "
                f"set: {result['threads'] or 'nothing'}, background "
                f"{result.get('background_cores', float('nan')):.2f} cores",
                file=sys.stderr,
                flush=True,
            )
    return {"runs": runs, "failures": failures}


def _rates(runs: list[dict], backend: str, settings: str, condition: str) -> dict[int, float]:
    """samples/s by round."""
    return {
        r["round"]: r["samples_per_sec"]
        for r in runs
        if (r["backend"], r["settings"], r["condition"]) == (backend, settings, condition)
    }


def summarize(report: dict[str, Any], args: argparse.Namespace) -> list[dict[str, Any]]:
    """A row per (backend, settings): median samples/s per condition, and each loaded
    condition's slowdown against quiet (ratio of the medians, and each round's ratio)."""
    runs = report["runs"]
    rows = []
    for backend in args.backends:
        for settings in SETTINGS:
            mine = [r for r in runs if (r["backend"], r["settings"]) == (backend, settings)]
            if not mine:
                continue
            row: dict[str, Any] = {"backend": backend, "settings": settings, "conditions": {}}
            quiet = _rates(runs, backend, settings, "quiet")
            for condition in args.conditions:
                rates = _rates(runs, backend, settings, condition)
                if not rates:
                    continue
                entry: dict[str, Any] = {
                    "samples_per_sec": statistics.median(rates.values()),
                    "set_by_dualtrain": sorted(
                        {r["threads"] for r in mine if r["condition"] == condition}
                    ),
                }
                if condition != "quiet" and quiet:
                    entry["vs_quiet"] = entry["samples_per_sec"] / statistics.median(quiet.values())
                    entry["vs_quiet_per_round"] = [
                        rates[r] / quiet[r] for r in sorted(rates) if r in quiet
                    ]
                row["conditions"][condition] = entry
            background = [r.get("background_cores", 0.0) for r in mine]
            row["background_cores"] = statistics.median(background)
            row["background_cores_max"] = max(background)
            rows.append(row)
    return rows


def new_vs_old(report: dict[str, Any], args: argparse.Namespace) -> list[dict[str, Any]]:
    """new / old per backend and condition, from each round's pair; quiet: what the new settings
    cost (or gain) where nothing competes."""
    runs = report["runs"]
    found = []
    for backend in args.backends:
        for condition in args.conditions:
            new, old = (_rates(runs, backend, s, condition) for s in ("new", "old"))
            ratios = [new[r] / old[r] for r in sorted(new) if r in old]
            if ratios:
                found.append(
                    {"backend": backend, "condition": condition, "per_round": ratios,
                     "median": statistics.median(ratios)}
                )  # fmt: skip
    return found


def goal(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The issue's goal: with the new settings, torch slows down no more than tf under the
    fixed load (loaded / quiet, ratio of the medians)."""
    slowdown = {
        r["backend"]: r["conditions"]["loaded"]["vs_quiet"]
        for r in rows
        if r["settings"] == "new" and "vs_quiet" in r["conditions"].get("loaded", {})
    }
    if not {"torch", "tf"} <= set(slowdown):
        return None
    return {
        "torch": slowdown["torch"],
        "tf": slowdown["tf"],
        "met": slowdown["torch"] >= slowdown["tf"],
    }


def markdown(report: dict[str, Any], args: argparse.Namespace) -> str:
    loaded = [c for c in args.conditions if c != "quiet"]
    header = "| backend | settings | set by dualtrain |"
    rule = "|---|---|---|"
    for condition in args.conditions:
        header += f" {condition} samples/s |"
        rule += "---:|"
        if condition != "quiet":
            header += f" {condition} / quiet | per round |"
            rule += "---:|---|"
    lines = [
        f"{args.rounds} round(s); {', '.join(loaded) or 'no load'}: {args.load} busy-looping "
        f"processes on {report['environment']['allowed_cores']} core(s) (late: started once the "
        f"run trains); {args.samples} samples, {args.epochs} epochs (the first not timed)",
        "",
        header + " background cores (median, max) |",
        rule + "---|",
    ]
    for row in report["table"]:
        cells = row["conditions"]
        set_by = sorted({v or "-" for entry in cells.values() for v in entry["set_by_dualtrain"]})
        line = f"| {row['backend']} | {row['settings']} | {', '.join(set_by)} |"
        for condition in args.conditions:
            entry = cells.get(condition)
            if entry is None:
                line += " - |" + (" - | - |" if condition != "quiet" else "")
                continue
            line += f" {entry['samples_per_sec']:,.0f} |"
            if condition != "quiet":
                rounds = ", ".join(f"{r:.3f}" for r in entry.get("vs_quiet_per_round", []))
                ratio = f"{entry['vs_quiet']:.3f}" if "vs_quiet" in entry else "-"
                line += f" {ratio} | {rounds} |"
        line += f" {row['background_cores']:.2f}, {row['background_cores_max']:.2f} |"
        lines.append(line)
    if report["new_vs_old"]:
        lines += [
            "",
            "| backend | condition | new / old, per round | median |",
            "|---|---|---|---:|",
        ]
    for item in report["new_vs_old"]:
        rounds = ", ".join(f"{r:.2f}" for r in item["per_round"])
        lines.append(
            f"| {item['backend']} | {item['condition']} | {rounds} | {item['median']:.2f} |"
        )
    if report["goal"]:
        g = report["goal"]
        lines += [
            "",
            f"goal, torch slows down no more than tf under the load (new settings, loaded / "
            f"quiet): torch {g['torch']:.3f}, tf {g['tf']:.3f}: {'met' if g['met'] else 'not met'}",
        ]
    return "\n".join(lines)


def environment() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    sys.path.insert(0, str(REPO))
    from dualtrain.threads import allowed_cores, allowed_cpus, cgroup_cpu_limit

    versions = {}
    for package in ("torch", "tensorflow", "tensorflow-cpu", "keras"):
        with contextlib.suppress(PackageNotFoundError):
            versions[package] = version(package)
    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "allowed_cores": allowed_cores(allowed_cpus(), cgroup_cpu_limit()),
        "cgroup_cpu_limit": cgroup_cpu_limit(),
        "load_average_at_start": os.getloadavg(),
        "versions": versions,
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated")
    parser.add_argument(
        "--conditions",
        default="quiet,loaded",
        help="comma-separated, of quiet,loaded,late (late: the load starts once the run trains)",
    )
    parser.add_argument(
        "--load", type=int, default=None, help="busy-looping processes (default: 2 per core)"
    )
    parser.add_argument("--samples", type=int, default=2560, help="samples (a fifth for val)")
    parser.add_argument("--epochs", type=int, default=4, help="epochs; the first is not timed")
    parser.add_argument(
        "--smoke", action="store_true", help="tiny: 1 round, 320 samples, 1 busy loop"
    )
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/shared_machine.json")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    report: dict[str, Any] = {"environment": environment()}
    if args.smoke:
        args.rounds, args.samples, args.epochs = 1, 320, 2
        args.load = 1 if args.load is None else args.load
    if args.load is None:
        args.load = 2 * report["environment"]["allowed_cores"]
    args.backends, args.conditions = args.backends.split(","), args.conditions.split(",")
    unknown = set(args.backends) - set(BACKENDS) | set(args.conditions) - set(CONDITIONS)
    if unknown:
        sys.exit(f"unknown backend or condition: {', '.join(sorted(unknown))}")
    report.update(run_all(args))
    report["table"] = summarize(report, args)
    report["new_vs_old"] = new_vs_old(report, args)
    report["goal"] = goal(report["table"])
    print(markdown(report, args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, **report}, indent=2)
    )
    print(f"wrote {args.out}", file=sys.stderr)
    if report["failures"]:
        sys.exit(f"{len(report['failures'])} run(s) failed: see {args.out}")


if __name__ == "__main__":
    main()
