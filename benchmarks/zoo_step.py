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

    python benchmarks/zoo_step.py --update --models gru,lstm --rounds 9 --steps 500

`--update` times the optimizer update alone, for zoo models whose steps are not one graph (a GRU
or LSTM): the update as dualtrain captures it (`CapturedUpdate`) against Keras's
`optimizer.apply` with the engine's finiteness guard, the eager update it replaces, on the same
gradients (ratio: Keras's time over the graph's).
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
    parser.add_argument("--update", action="store_true", help="the optimizer update alone")
    args = parser.parse_args()
    os.environ["KERAS_BACKEND"] = "torch"
    import torch

    torch.set_num_threads(args.threads)
    if args.update:
        print("| model | update graph ms | Keras optimizer.apply ms | Keras / graph |")
        print("|---|---:|---:|---:|")
        for name in args.models.split(","):
            graph, keras = measure_update(name, args.rounds, args.steps)
            print(f"| {name} | {graph:.4f} | {keras:.4f} | {keras / graph:.2f} |")
        return
    print("| model | dualtrain/torch ms a step | torch.nn ms a step | torch.nn / dualtrain |")
    print("|---|---:|---:|---:|")
    for name in args.models.split(","):
        dualtrain, nn = measure(name, args.rounds, args.steps)
        print(f"| {name} | {dualtrain:.3f} | {nn:.3f} | {nn / dualtrain:.2f} |")


def measure(name: str, rounds: int, steps: int) -> tuple[float, float]:
    """Median ms a step of dualtrain's engine and of the torch.nn twin for zoo model `name`."""
    import torch
    import zoo  # benchmarks/zoo.py: the models and their torch.nn twins

    if not zoo.MODELS[name].torch_nn:
        raise SystemExit(f"{name} has no torch.nn twin; the zoo's twins: {_twins(zoo)}")
    engine, job, batches = _engine(zoo, name)
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


def measure_update(name: str, rounds: int, steps: int) -> tuple[float, float]:
    """Median ms of one optimizer update of zoo model `name`'s engine: its captured update
    graph, and Keras's `optimizer.apply` with the engine's guard, on the same gradients."""
    import torch
    import zoo

    from dualtrain import compat

    engine, _, _ = _engine(zoo, name)
    (update,) = engine._update_graphs  # the zoo's models have one phase
    if not (update is not None and update.graphs and None not in update.graphs.values()):
        raise SystemExit(
            f"{name}: each step is one graph, with no update of its own to time (--update times "
            "models whose steps are not, as a GRU's or an LSTM's)"
        )
    variables = engine.state.phase_variables[0]
    optimizer, fused = engine.state.optimizers[0], engine._fused[0]
    # Small gradients, as a trained model's: the updates change the weights little.
    grads = [torch.randn_like(t) * 1e-3 for t in compat.variable_tensors(variables)]
    finite = torch.tensor(True)

    def timed(run: Any) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            run()
        return (time.perf_counter() - start) / steps * 1e3

    graph, keras = [], []
    for _ in range(rounds):
        graph.append(timed(lambda: update(grads, finite)))
        keras.append(
            timed(lambda: engine._apply_if_finite(optimizer, fused, grads, variables, finite))
        )
    return statistics.median(graph), statistics.median(keras)


def _engine(zoo: Any, name: str) -> tuple[Any, Any, list[Any]]:
    """The engine dualtrain builds for zoo model `name`, after the first steps that capture
    its graphs; the zoo's job (the recipe, data and Adam settings the run composes); the
    first epoch's batches."""
    from dualtrain.engines import engine_class

    model = zoo.MODELS[name]
    overrides = [f"recipe={model.recipe}", "backend=torch", *model.extra]
    job = zoo.load_job(model, overrides)
    settings, data = _settings(overrides)
    engine = engine_class("torch")(settings, job.recipe, data)
    batches = list(engine.train_batches(0))
    for batch in batches[:3]:  # the first steps capture the graphs
        engine.train_step([batch])
    return engine, job, batches


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
