"""Reruns the configurations whose figures README quotes, and rewrites those figures in README.

    python scripts/readme_figures.py              # about 10 minutes on a 2-core CPU
    python scripts/readme_figures.py --dry-run    # print the new blocks, leave README as it is

Each figure sits in README between `<!-- figures:start NAME -->` and `<!-- figures:end NAME -->`;
everything between the two markers is replaced, nothing outside them. The runs are the commands
README shows, with their defaults and seed 0, each backend in a process of its own with one
thread (`OMP_NUM_THREADS=1` and TensorFlow's intra/inter-op pools of 1), one after the other so
that their throughputs do not share the CPU:

- `recipes`: the val accuracy (cnn, mlp) and val MSE (autoencoder) of each recipe on each backend;
- `run-table`: the final table of `python -m dualtrain recipe=mlp backend=tf`;
- `compare`: `comparison.md` of `python -m dualtrain -m backend=torch,tf recipe=cnn` (whose jobs
  also give the cnn's accuracies);
- `parity`: `python -m dualtrain mode=parity recipe=cnn` and `recipe=mlp`;
- `task-recipes`: each task recipe's val figure on each backend, beside a baseline fitted on the
  same split (scikit-learn's RidgeCV and one-vs-rest logistic regression, the majority class and
  the train mean, all-background masks, a unigram model), and its `mode=parity` result.

Accuracies are repeatable on one machine and library versions (seeded, deterministic CPU
kernels); throughput and wall seconds are not, and vary with what else the machine runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# The README blocks this script writes, each between its markers.
BLOCKS = ("recipes", "task-recipes", "run-table", "compare", "parity")


def one_thread_env() -> dict[str, str]:
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TF_NUM_INTRAOP_THREADS"):
        env[name] = "1"
    env["TF_NUM_INTEROP_THREADS"] = "1"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def dualtrain(*args: str, allowed: tuple[int, ...] = (0,)) -> str:
    """`python -m dualtrain ARGS` in its own process; its stdout. Fails loudly on an exit code
    not in `allowed` (a parity run that finds the backends apart exits 1: that is a result)."""
    command = [sys.executable, "-m", "dualtrain", *args, "logger.progress=false"]
    started = time.perf_counter()
    result = subprocess.run(
        command, cwd=REPO, env=one_thread_env(), capture_output=True, text=True, timeout=900
    )
    seconds = time.perf_counter() - started
    print(f"  {seconds:5.1f} s  python -m dualtrain {' '.join(args)}", file=sys.stderr)
    if result.returncode not in allowed:
        sys.exit(
            f"readme_figures: {' '.join(command)} exited {result.returncode}:\n"
            f"{result.stderr[-3000:]}"
        )
    return result.stdout


def summary(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))


def measure(work: Path) -> dict[str, str]:
    """Runs everything; returns the new text of each README block."""
    val: dict[tuple[str, str], dict[str, float]] = {}

    # The cnn, both backends, as a multirun: its comparison.md is README's example.
    sweep = work / "cnn-sweep"
    dualtrain("-m", "backend=torch,tf", "recipe=cnn", f"hydra.sweep.dir={sweep}")
    for job, backend in (("0", "torch"), ("1", "tf")):
        val["cnn", backend] = summary(sweep / job)["final"]["val"]
    comparison = (sweep / "comparison.md").read_text(encoding="utf-8").strip()

    run_table = ""
    for recipe in ("mlp", "autoencoder"):
        for backend in ("torch", "tf"):
            run_dir = work / f"{recipe}-{backend}"
            out = dualtrain(f"recipe={recipe}", f"backend={backend}", f"hydra.run.dir={run_dir}")
            val[recipe, backend] = summary(run_dir)["final"]["val"]
            if (recipe, backend) == ("mlp", "tf"):
                run_table = _final_table(out, "mlp", "tf")

    parity = {}
    for recipe in ("cnn", "mlp"):
        run_dir = work / f"parity-{recipe}"
        dualtrain("mode=parity", f"recipe={recipe}", f"hydra.run.dir={run_dir}", allowed=(0, 1))
        parity[recipe] = json.loads((run_dir / "parity.json").read_text(encoding="utf-8"))

    task_parity = {}
    for recipe in dict.fromkeys(row[0] for row in TASK_FIGURES):  # each once, in order
        for backend in ("torch", "tf"):
            run_dir = work / f"{recipe}-{backend}"
            dualtrain(f"recipe={recipe}", f"backend={backend}", f"hydra.run.dir={run_dir}")
            val[recipe, backend] = summary(run_dir)["final"]["val"]
        run_dir = work / f"parity-{recipe}"
        dualtrain("mode=parity", f"recipe={recipe}", f"hydra.run.dir={run_dir}", allowed=(0, 1))
        task_parity[recipe] = json.loads((run_dir / "parity.json").read_text(encoding="utf-8"))
    tasks = {(recipe, key): baseline(recipe, key) for recipe, _, key, _ in TASK_FIGURES}

    return {
        "recipes": _recipes_block(val),
        "task-recipes": _tasks_block(val, tasks, task_parity),
        "run-table": "```\n$ python -m dualtrain recipe=mlp backend=tf\n" + run_table + "\n```",
        "compare": "```\n" + comparison + "\n```",
        "parity": _parity_block(parity),
    }


# recipe, figure, val key, digits: the task recipes' rows (their baselines: `baseline`).
TASK_FIGURES = (
    ("regression", "R²", "r2", 3),
    ("multilabel", "micro-F1", "f1", 3),
    ("two_towers", "kind: accuracy", "kind/accuracy", 3),
    ("two_towers", "value: MAE", "value/mae", 3),
    ("segmentation", "mean IoU", "mean_iou", 3),
    ("char_lm", "bits per character", "bits_per_char", 3),
)


def baseline(recipe: str, key: str) -> str:
    """A simple model's figure on the recipe's own train/val split (seed 0), and its name."""
    import numpy as np
    from hydra import compose, initialize_config_module

    from dualtrain.cli import settings_from_config
    from dualtrain.data import load_data

    with initialize_config_module("dualtrain.configs", version_base="1.3"):
        cfg = compose("train", overrides=[f"recipe={recipe}"])
    settings = settings_from_config(cfg, Path(tempfile.gettempdir()))
    data = load_data(settings.data, settings.seed, task=settings.recipe.task)
    train, val = data.train, data.val
    if key == "r2":
        from sklearn.linear_model import RidgeCV

        fitted = RidgeCV(alphas=np.logspace(-3, 3, 13)).fit(train.x, train.y)
        return f"{fitted.score(val.x, val.y):.3f} (RidgeCV)"
    if key == "f1":
        from sklearn.linear_model import LogisticRegression
        from sklearn.metrics import f1_score
        from sklearn.multiclass import OneVsRestClassifier

        fitted = OneVsRestClassifier(LogisticRegression(max_iter=2000)).fit(train.x, train.y)
        f1 = f1_score(val.y, fitted.predict(val.x), average="micro")
        return f"{f1:.3f} (one-vs-rest logistic regression)"
    if key == "kind/accuracy":
        majority = np.bincount(train.y["kind"]).argmax()
        return f"{np.mean(val.y['kind'] == majority):.3f} (the majority class)"
    if key == "value/mae":
        mean = train.y["value"].mean()
        return f"{np.abs(val.y['value'] - mean).mean():.3f} (the train mean)"
    if key == "mean_iou":
        classes = data.info.num_classes
        ious = [float(np.mean(val.y == 0))] + [0.0] * (classes - 1)  # all background
        return f"{np.mean(ious):.3f} (every pixel background)"
    counts = np.bincount(train.y.ravel(), minlength=data.info.num_classes) + 1.0
    bits = -np.log2((counts / counts.sum())[val.y.ravel()]).mean()
    return f"{bits:.3f} (a unigram model)"


def _tasks_block(
    val: dict[tuple[str, str], dict[str, float]],
    baselines: dict[tuple[str, str], str],
    parity: dict[str, dict[str, Any]],
) -> str:
    rows = [
        "| recipe | val figure, defaults, seed 0 | torch | tf | baseline, same split | parity |",
        "|---|---|---:|---:|---|---|",
    ]
    for recipe, name, key, digits in TASK_FIGURES:
        cells = [f"{val[recipe, backend][key]:.{digits}f}" for backend in ("torch", "tf")]
        report = parity[recipe]
        agreed = f"{report['status']}, {report['max_rel_diff']:.1e} largest relative"
        rows.append(
            f"| `{recipe}` | {name} | {cells[0]} | {cells[1]} | {baselines[recipe, key]} | "
            f"{agreed} |"
        )
    return "\n".join(rows)


def _final_table(stdout: str, recipe: str, backend: str) -> str:
    lines = stdout.splitlines()
    title = f"dualtrain {recipe} on {backend}: "
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    table = [lines[start]]
    for line in lines[start + 1 :]:
        if not line.startswith("  "):
            break
        table.append(line)
    return "\n".join(table)


def _recipes_block(val: dict[tuple[str, str], dict[str, float]]) -> str:
    rows = [
        "| recipe | val figure, defaults, seed 0 | torch | tf |",
        "|---|---|---:|---:|",
    ]
    for recipe, name, key, digits in (
        ("cnn", "accuracy", "accuracy", 3),
        ("mlp", "accuracy", "accuracy", 3),
        ("autoencoder", "MSE (the val loss)", "loss", 4),
    ):
        cells = [f"{val[recipe, backend][key]:.{digits}f}" for backend in ("torch", "tf")]
        rows.append(f"| `{recipe}` | {name} | {cells[0]} | {cells[1]} |")
    return "\n".join(rows)


def _parity_block(parity: dict[str, dict[str, Any]]) -> str:
    rows = [
        "| recipe | largest relative loss difference (step) | parity | final val accuracy "
        "torch / tf | samples/s torch / tf |",
        "|---|---|---|---|---|",
    ]
    for recipe, report in parity.items():
        accuracy = " / ".join(f"{report['final_val'][b]['accuracy']:.4f}" for b in ("torch", "tf"))
        speed = " / ".join(f"{report['train_samples_per_sec'][b]:,.0f}" for b in ("torch", "tf"))
        rows.append(
            f"| `{recipe}` | {report['max_rel_diff']:.1e} (step {report['max_rel_diff_step']}) "
            f"| {report['status']} (rtol {report['rtol']:g}) | {accuracy} | {speed} |"
        )
    return "\n".join(rows)


def rewrite(readme: str, blocks: dict[str, str]) -> str:
    """README with each named block's content replaced; every block must be there once."""
    for name, content in blocks.items():
        start, end = f"<!-- figures:start {name} -->\n", f"<!-- figures:end {name} -->"
        count = min(readme.count(start), readme.count(end))
        if count != 1 or readme.count(start) != readme.count(end):
            sys.exit(f"readme_figures: README has {count} blocks named {name!r}; expected one")
        first = readme.index(start) + len(start)
        last = readme.index(end, first)
        readme = readme[:first] + (content + "\n" if content else "") + readme[last:]
    return readme


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readme", type=Path, default=REPO / "README.md")
    parser.add_argument("--dry-run", action="store_true", help="print the blocks; write nothing")
    parser.add_argument("--keep", type=Path, help="keep the runs in this directory")
    args = parser.parse_args()
    readme = args.readme.read_text(encoding="utf-8")
    rewrite(readme, dict.fromkeys(BLOCKS, ""))
    started = time.perf_counter()
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        blocks = measure(args.keep.resolve())
    else:
        with tempfile.TemporaryDirectory(prefix="readme-figures-") as work:
            blocks = measure(Path(work))
    print(f"readme_figures: measured in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    if args.dry_run:
        for name, content in blocks.items():
            print(f"<!-- {name} -->\n{content}\n")
        return
    args.readme.write_text(rewrite(readme, blocks), encoding="utf-8")
    print(f"readme_figures: rewrote {', '.join(blocks)} in {args.readme}", file=sys.stderr)


if __name__ == "__main__":
    main()
