"""mode=parity: the same recipe trained on both backends from the same start, compared step by step.

The parity run (this process, no framework) starts two one-backend runs, one after the other so
neither slows the other, each in its own process since a process holds one Keras backend:

    <run_dir>/init/      the initial weights, built once by the first backend (a checkpoint)
    <run_dir>/torch/     a train run from init/: metrics.jsonl with the loss of every step
    <run_dir>/tf/        the same on the other backend
    <run_dir>/parity.json, parity.png   the comparison

Both runs read the same batches in the same order (the seeded order of `ArrayDataset.batches`),
and switch off the layers that draw random numbers in training (dropout masks come from each
framework's own generator); the report names every layer it switched off.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shlex
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dualtrain.errors import RunError
from dualtrain.settings import BACKENDS, Settings

# Makes the command that runs one backend's side: (overrides, run dir) -> argv.
CommandFor = Callable[[list[str], Path], list[str]]

INIT = "init"


def compare_backends(settings: Settings, command_for: CommandFor) -> dict[str, Any]:
    """Runs both sides, writes parity.json and parity.png, and returns the report.

    Raises:
        RunError: when a side fails, or the losses differ by more than `parity.rtol`.
    """
    run_dir = settings.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    backends = [settings.backend.name, *(b for b in BACKENDS if b != settings.backend.name)]
    for name in (INIT, *backends):  # this run's own outputs, from an earlier parity run here
        shutil.rmtree(run_dir / name, ignore_errors=True)
    commands = {}
    environment = side_environment()
    for backend in backends:
        command = command_for(
            [f"backend={backend}", "mode=parity", "parity.worker=true"], run_dir / backend
        )
        env = environment.get(backend, {})
        commands[backend] = shlex.join([*(f"{k}={v}" for k, v in env.items()), *command])
        print(f"parity: training {settings.recipe.name} on {backend} for {settings.parity.steps} "
              f"steps ({run_dir / backend})", flush=True)  # fmt: skip
        code = subprocess.call(command, env={**os.environ, **env})
        if code != 0:
            raise RunError(
                f"parity: the {backend} run failed with exit code {code}; its error is above and "
                f"its files are in {run_dir / backend}"
            )
    report = parity_report(settings, backends, commands, environment)
    write_report(run_dir, report)
    print(format_report(report, run_dir), flush=True)
    if report["status"] != "passed":
        raise RunError(
            f"parity failed: the per-step losses differ by up to {report['max_rel_diff']:.3g} "
            f"(relative, step {report['max_rel_diff_step']}), more than parity.rtol="
            f"{settings.parity.rtol:g}, from step {report['first_step_over_rtol']} on; before "
            f"it they agreed within {report['max_rel_diff_before']:.2g}; see "
            f"{run_dir / 'parity.json'} and docs/parity.md"
        )
    return report


def run_worker(settings: Settings) -> dict[str, Any]:
    """One side: trains `parity.steps` steps from `<run_dir>/../init`, writing it first if absent.

    Imports the framework of `settings.backend`; runs in a process of its own.
    """
    from dualtrain.engines import select_backend
    from dualtrain.run import train

    # Before the initial weights' data: a data source of the user's may import Keras.
    select_backend(settings.backend.name, import_framework=False)
    init = settings.run_dir.parent / INIT
    if not (init / "trainer.json").is_file():
        _write_initial_weights(settings, init)
    steps = settings.parity.steps
    side = dataclasses.replace(
        settings,
        # max_epochs only has to be large enough: every epoch has at least one step.
        trainer=dataclasses.replace(
            settings.trainer, max_steps=steps, max_epochs=steps, log_every_n_steps=1
        ),
        logger=dataclasses.replace(
            settings.logger, loggers=("jsonl",), progress=False, histograms_every=0
        ),
        checkpoint=dataclasses.replace(
            settings.checkpoint,
            every_n_epochs=0,
            every_n_steps=0,
            resume=False,
            path=None,
            init_from=str(init),
        ),
    )
    return train(side)


def _write_initial_weights(settings: Settings, init: Path) -> None:
    """Builds the recipe's model on this backend (seeded) and saves it as a step-0 checkpoint."""
    from dualtrain.checkpoint import Checkpoint, write_checkpoint
    from dualtrain.data import load_data
    from dualtrain.engines import engine_class
    from dualtrain.loading import model_spec
    from dualtrain.recipe import load_recipe

    data = load_data(settings.data, settings.seed, task=settings.recipe.task)
    engine = engine_class(settings.backend.name)(settings, load_recipe(settings.recipe), data)
    model, optimizer = engine.state.checkpoint_arrays()
    record = {
        "backend": settings.backend.name,
        "recipe": settings.recipe.name,
        "seed": settings.seed,
        "step": 0,
        "config": settings.config_yaml,
        "model_spec": model_spec(settings.recipe, data.info),
        "made_deterministic": engine.state.made_deterministic,
        "stochastic_layers": engine.state.stochastic_layers,
    }
    write_checkpoint(init, Checkpoint(model, optimizer, record))
    # The run that follows builds the model again in this process; with Keras's name counters
    # reset it gets the same variable paths as this one (conv2d, not conv2d_2).
    import keras

    keras.utils.clear_session()


def side_environment() -> dict[str, dict[str, str]]:
    """Environment variables each side runs with, besides this process's own.

    torch runs convolutions with oneDNN on x86 CPUs; TensorFlow does only with its oneDNN custom
    ops, which dualtrain turns on (`select_backend`; TensorFlow itself does only on CPUs with
    AVX-512 VNNI/BF16 or AMX). With the same kernels on both sides the backends' float32 sums
    agree more closely, and training amplifies less: on this project's AVX2 CPU the cnn recipe
    stayed within 1e-5 over 40 steps for seeds 0-5 with them on, and failed for 3 of those 6 seeds
    (one at step 2) with them off (docs/parity.md). The report says which the tf side ran with:
    on, unless the user has set TF_ENABLE_ONEDNN_OPTS.
    """
    return {"tf": {"TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "1")}}


def parity_report(
    settings: Settings,
    backends: list[str],
    commands: dict[str, str],
    environment: dict[str, dict[str, str]],
) -> dict[str, Any]:
    """Compares the sides' per-step train losses, final val metrics and throughput."""
    run_dir = settings.run_dir
    losses = {b: _step_losses(run_dir / b / "metrics.jsonl") for b in backends}
    summaries = {b: _read_json(run_dir / b / "summary.json") for b in backends}
    init = _read_json(run_dir / INIT / "trainer.json")
    first, second = (losses[b] for b in backends)
    if len(first) != len(second):
        raise RunError(
            f"parity: the backends logged {len(first)} and {len(second)} steps; both should log "
            f"parity.steps={settings.parity.steps}; see {run_dir}"
        )
    diffs = [relative_difference(a, b) for a, b in zip(first, second, strict=True)]
    worst = max(range(len(diffs)), key=diffs.__getitem__)
    max_rel = diffs[worst]
    passed = max_rel <= settings.parity.rtol
    over = next((i for i, d in enumerate(diffs) if d > settings.parity.rtol), None)
    speed = {b: summaries[b].get("train_samples_per_sec") for b in backends}
    return {
        "status": "passed" if passed else "failed",
        "recipe": settings.recipe.name,
        "backends": backends,
        "steps": len(first),
        "seed": settings.seed,
        "batch_size": settings.data.batch_size,
        "rtol": settings.parity.rtol,
        "max_rel_diff": max_rel,
        "max_rel_diff_step": worst + 1,
        "max_abs_diff": max(abs(a - b) for a, b in zip(first, second, strict=True)),
        # Rounding differences (~1e-7) can flip a ReLU or max-pool decision; from then on the
        # runs drift apart. A jump from agreement marks such a flip, steady growth a real drift.
        "first_step_over_rtol": None if over is None else over + 1,
        "max_rel_diff_before": max(diffs[:over], default=0.0) if over is not None else max_rel,
        "initial_weights": {"built_by": init.get("backend"), "checkpoint": str(run_dir / INIT)},
        "made_deterministic": init.get("made_deterministic", []),
        "stochastic_layers": init.get("stochastic_layers", []),
        "losses": losses,
        "relative_differences": diffs,
        "final_val": {b: summaries[b]["final"]["val"] for b in backends},
        "train_samples_per_sec": speed,
        "jit_compile": {b: summaries[b].get("jit_compile") for b in backends},
        "wall_seconds": {b: summaries[b].get("wall_seconds") for b in backends},
        "environment": environment,
        "commands": commands,
    }


def relative_difference(a: float, b: float) -> float:
    """|a - b| relative to the larger magnitude; 0 when both are 0, inf when one is not finite."""
    if not (math.isfinite(a) and math.isfinite(b)):
        return 0.0 if a == b else math.inf
    scale = max(abs(a), abs(b))
    return abs(a - b) / scale if scale else 0.0


def write_report(run_dir: Path, report: dict[str, Any]) -> None:
    from dualtrain.run import write_json

    write_json(run_dir / "parity.json", report)
    plot_parity(report, run_dir / "parity.png")


def plot_parity(report: dict[str, Any], path: Path) -> None:
    """Per-step losses of both backends, and their relative difference against rtol."""
    from dualtrain.compare import plain_log_y
    from dualtrain.plots import pyplot

    plt = pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6.5), sharex=True)
    steps = range(1, report["steps"] + 1)
    for backend, style in zip(report["backends"], ("-", "--"), strict=False):
        speed = report["train_samples_per_sec"][backend]
        label = f"{backend} ({speed:,.0f} samples/s)" if speed else backend
        top.plot(steps, report["losses"][backend], style, label=label)
    plain_log_y(top)
    top.set_ylabel("train loss")
    top.legend()
    top.set_title(
        f"{report['recipe']}: parity {report['status']} - largest relative difference "
        f"{report['max_rel_diff']:.2g} (rtol {report['rtol']:g})"
    )
    # Steps where both losses are equal have no place on a log axis; they are left out.
    shown = [(s, d) for s, d in zip(steps, report["relative_differences"], strict=True) if d > 0]
    if shown:
        first, second = report["backends"]
        label = f"|{first} - {second}| / max(|{first}|, |{second}|)"
        bottom.plot(*zip(*shown, strict=True), ".-", color="tab:red", label=label)
    bottom.axhline(report["rtol"], color="black", linestyle=":", label="parity.rtol")
    bottom.set_yscale("log")
    bottom.set_xlabel("optimizer step")
    bottom.set_ylabel("relative difference")
    bottom.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def format_report(report: dict[str, Any], run_dir: Path) -> str:
    backends = report["backends"]
    lines = [
        f"parity of {report['recipe']} over {report['steps']} steps (seed {report['seed']}, "
        f"batch {report['batch_size']}): {report['status'].upper()}",
        f"  largest relative loss difference {report['max_rel_diff']:.3g} at step "
        f"{report['max_rel_diff_step']} (parity.rtol {report['rtol']:g})",
    ]
    if report["first_step_over_rtol"] is not None:
        lines.append(
            f"  above rtol from step {report['first_step_over_rtol']} on; before it within "
            f"{report['max_rel_diff_before']:.2g}"
        )
    if report["made_deterministic"]:
        switched = ", ".join(
            f"{c['layer']} ({c['class']} {k}={v:g} -> 0)"
            for c in report["made_deterministic"]
            for k, v in c.items()
            if k not in ("layer", "class")
        )
        lines.append(f"  switched off for the comparison: {switched}")
    for backend, env in report["environment"].items():
        shown = " ".join(f"{k}={v}" for k, v in env.items())
        lines.append(f"  {backend} ran with {shown} (see docs/parity.md)")
    if report["stochastic_layers"]:
        lines.append(
            "  random layers left on (they differ by backend): "
            + ", ".join(report["stochastic_layers"])
        )
    rows = [("", *backends)]
    rows.append(("last train loss", *(f"{report['losses'][b][-1]:.6g}" for b in backends)))
    names = sorted(set().union(*(report["final_val"][b] for b in backends)))
    for name in names:
        values = (report["final_val"][b].get(name, math.nan) for b in backends)
        rows.append((f"val {name}", *(f"{value:.6g}" for value in values)))
    rows.append(("samples/s", *(_speed(report["train_samples_per_sec"][b]) for b in backends)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = (cell.ljust(w) for cell, w in zip(row, widths, strict=True))
        lines.append(("  " + "  ".join(cells)).rstrip())
    lines.append(f"  report: {run_dir / 'parity.json'}, {run_dir / 'parity.png'}")
    return "\n".join(lines)


def _speed(value: float | None) -> str:
    return f"{value:,.0f}" if value else "-"


def _step_losses(path: Path) -> list[float]:
    """The train loss of every step, in step order, from a side's metrics.jsonl."""
    if not path.is_file():
        raise RunError(f"parity: {path} is missing; the run on that backend did not log")
    by_step = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record.get("split") == "train":
            by_step[int(record["step"])] = float(record["loss"])
    return [by_step[step] for step in sorted(by_step)]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise RunError(f"parity: cannot read {path}: {err}") from err
    if not isinstance(content, dict):
        raise RunError(f"parity: {path} is not a JSON object")
    return content
