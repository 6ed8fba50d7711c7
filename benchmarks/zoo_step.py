"""One step of dualtrain's torch engine against one step of the torch.nn twin, in one process.

    python benchmarks/zoo_step.py --models gru,cnn_bn,transformer --rounds 7 --steps 60

The zoo harness (benchmarks/zoo.py) times whole runs, each in its own process, and moves by
about 15% from run to run on a shared 2-core machine. This times the two steps side by side in
one process, interleaved, on the same batches, which shows a change of a few percent in
dualtrain's step: for each model of the zoo that has a torch.nn twin, the engine dualtrain
builds for `python -m dualtrain --config-dir benchmarks/zoo recipe=<r> backend=torch` (its first
steps capture the graphs) and the twin with torch.optim.Adam at the recipe's settings, each
`--steps` steps a pass, `--rounds` passes each, alternating. Prints the median ms a step of
each and their ratio (torch.nn's time over dualtrain's: the zoo's dualtrain/torch : torch.nn).
One thread, unless --threads says otherwise. No data loading, logging or callbacks: only the
step (`engine.train_step`) against `forward, backward, optimizer.step()`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="gru,cnn_bn,transformer")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    os.environ["KERAS_BACKEND"] = "torch"
    import torch

    torch.set_num_threads(args.threads)
    print("| model | dualtrain/torch ms a step | torch.nn ms a step | torch.nn / dualtrain |")
    print("|---|---:|---:|---:|")
    for name in args.models.split(","):
        dualtrain, nn = measure(name, args.rounds, args.steps)
        print(f"| {name} | {dualtrain:.3f} | {nn:.3f} | {nn / dualtrain:.2f} |")


def measure(name: str, rounds: int, steps: int) -> tuple[float, float]:
    """Median ms a step of dualtrain's engine and of the torch.nn twin for zoo model `name`."""
    import torch
    import zoo  # benchmarks/zoo.py: the models and their torch.nn twins

    from dualtrain.engines import engine_class

    model = zoo.MODELS[name]
    if not model.torch_nn:
        raise SystemExit(f"{name} has no torch.nn twin; the zoo's twins: {_twins(zoo)}")
    overrides = [f"recipe={model.recipe}", "backend=torch", *model.extra]
    job = zoo.load_job(model, overrides)  # the recipe, data and Adam settings the run composes
    settings, data = _settings(overrides)
    engine = engine_class("torch")(settings, job.recipe, data)
    batches = list(engine.train_batches(0))
    for batch in batches[:3]:  # the first steps capture the graphs
        engine.train_step([batch])
    engine.train_metrics()

    torch.manual_seed(0)
    twin = zoo.torch_nn_model(name, job.info)
    optimizer = torch.optim.Adam(twin.parameters(), lr=job.lr)  # as zoo.torch_nn_loop
    # the same batches, images NCHW and labels int64 as a torch user keeps them (zoo.py's loop)
    twin_batches = [
        (x.permute(0, 3, 1, 2).contiguous() if x.ndim == 4 else x, y.long()) for x, y in batches
    ]

    def twin_step(batch: Any) -> None:
        x, y = batch
        loss = torch.nn.functional.cross_entropy(twin(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def timed(step: Any, batches: list[Any]) -> float:
        start = time.perf_counter()
        for i in range(steps):
            step(batches[i % len(batches)])
        return (time.perf_counter() - start) / steps * 1e3

    for batch in twin_batches[:3]:
        twin_step(batch)
    ours, theirs = [], []
    for _ in range(rounds):
        ours.append(timed(lambda batch: engine.train_step([batch]), batches))
        theirs.append(timed(twin_step, twin_batches))
    engine.train_metrics()
    return statistics.median(ours), statistics.median(theirs)


def _settings(overrides: list[str]) -> tuple[Any, Any]:
    """The settings and data of the dualtrain run (as zoo.load_job composes them)."""
    from hydra import compose, initialize_config_module

    from dualtrain.cli import settings_from_config
    from dualtrain.data import load_data

    with initialize_config_module("dualtrain.configs", version_base="1.3"):
        cfg = compose(
            "train", overrides=[*overrides, f"hydra.searchpath=[file://{BENCHMARKS}/zoo]"]
        )
    with tempfile.TemporaryDirectory() as run_dir:
        settings = settings_from_config(cfg, Path(run_dir))
    return settings, load_data(settings.data, settings.seed, task=settings.recipe.task)


def _twins(zoo: Any) -> str:
    return ", ".join(name for name, model in zoo.MODELS.items() if model.torch_nn)


if __name__ == "__main__":
    main()
