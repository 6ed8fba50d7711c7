"""The model zoo: how fast dualtrain trains users' own models on each backend.

    python benchmarks/zoo.py --threads 1 --rounds 2 --epochs 3
    python benchmarks/zoo.py --smoke --models gru,mlp_dropout     # a tiny check (the tests)

Each model is a recipe as a user writes one (benchmarks/zoo/recipe/*.yaml and
benchmarks/zoo/zoo_recipes.py, data generated in code), or one of dualtrain's shipped recipes
(autoencoder, gan). Every system runs in a process of its own (Keras fixes its backend per
process), one after another, rounds interleaved (each round starts one system later), on the same
train split, batch size and Adam settings:

    dualtrain/torch  python -m dualtrain --config-dir benchmarks/zoo recipe=<r> backend=torch
    dualtrain/tf     the same with backend=tf backend.jit_compile=false
    torch+keras      a hand-written PyTorch loop over the same Keras model (KERAS_BACKEND=torch):
                     torch.autograd, torch.optim.Adam, shuffled index batches of in-memory tensors
    torch.nn         the same loop over the architecture written in torch.nn (some models only)
    tf.function      a hand-written tf.function step (GradientTape, Keras Adam) over the same Keras
                     model on tf, fed by tf.data; TensorFlow's kernels as it comes
    tf.function+onednn  the same with TF_ENABLE_ONEDNN_OPTS=1, the kernels dualtrain/tf runs on
                     x86 (not run unless --systems names it)

The loops get the model, loss (or the recipe's phases: autoencoder, gan) and the train split from
the recipe and dualtrain's data loading, composed from the same config as the dualtrain run.

Reported per model: steady-state samples/s of each system (the first epoch excluded; median over
rounds), the ratios dualtrain/torch : torch+keras (goal >= 1.0), dualtrain/torch : torch.nn
(>= 0.9) and dualtrain/tf : tf.function (>= 1.0) as the median of per-round ratios, and how
dualtrain ran its steps (summary.json's step record, or its log where the summary has none): every
run whose steps did not run as a graph is listed with the reason dualtrain gave. Prints a Markdown
table and writes JSON (--out).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from machine_load import busy_cpu_seconds  # benchmarks/ is on sys.path

REPO = Path(__file__).resolve().parents[1]
ZOO = Path(__file__).resolve().parent / "zoo"  # the user-style recipes: --config-dir


@dataclass(frozen=True)
class Model:
    name: str
    recipe: str  # recipe=<this>
    what: str
    torch_nn: bool = False  # a hand-written torch.nn twin exists (torch_nn_model)
    shipped: bool = False  # one of dualtrain's recipes (digits data), not benchmarks/zoo's
    extra: tuple[str, ...] = ()  # overrides for every system's config
    epoch_factor: int = 1  # runs --epochs times this (a short epoch: too little to time)

    def smoke_overrides(self) -> list[str]:
        """Tiny sizes for --smoke: 256 train samples, or 8 batches of the shipped digits."""
        return ["trainer.limit_train_batches=8"] if self.shipped else ["data.num_samples=256"]


MODELS = {
    m.name: m
    for m in (
        Model("cnn_bn", "zoo_cnn_bn", "CNN with BatchNormalization, 16x16x1", torch_nn=True),
        Model("resnet", "zoo_resnet", "small ResNet: residual adds, BatchNormalization, 16x16x3"),
        Model("gru", "zoo_gru", "GRU(32) over 24x8 float sequences", torch_nn=True),
        Model("lstm", "zoo_lstm", "Embedding + LSTM(32) over 32 token ids"),
        Model("conv1d", "zoo_conv1d", "Conv1D x2 over 64x4 sequences"),
        Model(
            "transformer", "zoo_transformer",
            "Transformer encoder: 2 blocks of MultiHeadAttention + LayerNorm, 32x16", torch_nn=True,
        ),
        Model("mlp_dropout", "zoo_mlp_dropout", "MLP with Dropout(0.3, seed=1)"),
        Model("subclassed", "zoo_subclassed", "subclassed keras.Model with its own call"),
        Model("custom_layer", "zoo_custom_layer", "a user's keras.layers.Layer (gated dense)"),
        Model("multi_input", "zoo_multi_input", "two named inputs: numbers, token ids"),
        Model("ops_loss", "zoo_ops_loss", "MLP, loss in keras.ops with one_hot (README's)"),
        # 1,437 digits an epoch take about 0.1 s: three times the epochs, to time enough steps.
        Model("autoencoder", "autoencoder", "shipped autoencoder: its own step, digits",
              shipped=True, epoch_factor=3),
        # The gan's per-epoch PNG of samples is not timed; left out to save wall time.
        Model("gan", "gan", "shipped DCGAN: two phases, digits", shipped=True,
              extra=("~callbacks.gan_samples",)),
    )
}  # fmt: skip

SYSTEMS = ("dualtrain/torch", "torch+keras", "torch.nn", "dualtrain/tf", "tf.function")
OPTIONAL_SYSTEMS = ("tf.function+onednn",)
# (system, against, goal): the ratio of samples/s, median of the per-round ratios.
RATIOS = (
    ("dualtrain/torch", "torch+keras", 1.0),
    ("dualtrain/torch", "torch.nn", 0.9),
    ("dualtrain/tf", "tf.function", 1.0),
)


# -- the children: one system, one model, one process ------------------------------------------


@dataclass
class Job:
    """What a hand-written loop trains: the recipe's model and loss (or phases), the train split,
    the batch size and Adam's settings, from the config the dualtrain run composes."""

    model: Model
    x: Any  # the train split's x: an array or a dict of arrays
    y: Any
    info: Any  # dualtrain.data.DataInfo
    recipe: Any  # dualtrain.recipe.Recipe
    batch_size: int
    batches_per_epoch: int
    epochs: int
    lr: float
    adam: dict[str, Any] = field(default_factory=dict)  # optimizer.params: beta_1, ...

    @property
    def samples(self) -> int:
        """Samples per epoch: trainer.limit_train_batches may leave some out."""
        return min(len(self.y), self.batches_per_epoch * self.batch_size)

    def phase_adam(self, phase: Any) -> tuple[float, dict[str, Any]]:
        """A phase's learning rate and Adam options: its own over the config's."""
        options = {**self.adam, **phase.optimizer}
        return float(options.pop("lr", self.lr)), options


def load_job(model: Model, overrides: list[str]) -> Job:
    from hydra import compose, initialize_config_module

    from dualtrain.cli import settings_from_config
    from dualtrain.data import load_data
    from dualtrain.data.dataset import ArrayDataset
    from dualtrain.recipe import load_recipe

    sys.path.insert(0, str(ZOO))  # what --config-dir does for the dualtrain run
    with initialize_config_module("dualtrain.configs", version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, f"hydra.searchpath=[file://{ZOO}]"])
    with tempfile.TemporaryDirectory() as unused:
        settings = settings_from_config(cfg, Path(unused))
    data = load_data(settings.data, settings.seed, task=settings.recipe.task)
    train = data.train
    if not isinstance(train, ArrayDataset):
        raise ValueError(f"{model.name}: the loops train on arrays in memory; got {train}")
    recipe = load_recipe(settings.recipe)
    batch = settings.data.batch_size
    batches = math.ceil(len(train) / batch)
    limit = settings.trainer.limit_train_batches
    batches = min(batches, limit) if isinstance(limit, int) else max(1, int(batches * limit))
    if settings.optimizer.name != "adam":
        raise ValueError(f"{model.name}: the loops run Adam; the recipe uses {settings.optimizer}")
    return Job(
        model, train.x, train.y, data.info, recipe, batch, batches,
        settings.trainer.max_epochs, settings.optimizer.lr, dict(settings.optimizer.params),
    )  # fmt: skip


def child(system: str, model: Model, overrides: list[str], threads: int) -> dict[str, Any]:
    if system in ("torch+keras", "torch.nn"):
        import torch

        if threads:
            torch.set_num_threads(threads)
        torch.manual_seed(0)
    job = load_job(model, overrides)
    loop = {
        "torch+keras": torch_keras_loop,
        "torch.nn": torch_nn_loop,
        "tf.function": tf_function_loop,
        "tf.function+onednn": tf_function_loop,
    }[system]
    return {**loop(job), "samples_per_epoch": job.samples}


def _epochs(run_epoch: Callable[[int, Callable[[], Any]], None], epochs: int) -> dict[str, Any]:
    """Times each epoch; `run_epoch(epoch, on_first_step)`; samples counted by the caller."""
    first: list[float] = []
    times, cpu_times = [], []

    def on_first_step() -> None:
        if not first:
            first.append(time.time())

    for epoch in range(epochs):
        start, cpu = time.perf_counter(), time.process_time()
        run_epoch(epoch, on_first_step)
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu)
    return {"epoch_seconds": times, "epoch_cpu_seconds": cpu_times, "first_step_at": first[0]}


def _scalar(value: Any) -> float:
    """A framework scalar as a float (torch: detached from the graph first)."""
    return float(value.detach() if hasattr(value, "detach") else value)


def _take(x: Any, idx: Any) -> Any:
    return {k: v[idx] for k, v in x.items()} if isinstance(x, dict) else x[idx]


def _torch_batches(job: Job, xs: Any, ys: Any, epoch: int) -> Any:
    """Shuffled index batches of in-memory tensors, as a PyTorch user writes them."""
    import torch

    order = torch.randperm(len(ys), generator=torch.Generator().manual_seed(epoch))
    for b in range(job.batches_per_epoch):
        idx = order[b * job.batch_size : (b + 1) * job.batch_size]
        yield _take(xs, idx), ys[idx]


def _torch_tensors(x: Any) -> Any:
    import numpy as np
    import torch

    if isinstance(x, dict):
        return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in x.items()}
    return torch.from_numpy(np.ascontiguousarray(x))


def torch_keras_loop(job: Job) -> dict[str, Any]:
    """A PyTorch loop over the Keras model (Keras on torch): autograd and torch.optim.Adam."""
    import torch

    model = job.recipe.build_model(job.info)
    xs, ys = _torch_tensors(job.x), _torch_tensors(job.y)
    last: list[Any] = [None]  # the last step's loss, read once at the end (a check it trains)
    if not job.recipe.has_phases:
        loss_fn = job.recipe.loss()
        beta_1, beta_2 = job.adam.get("beta_1", 0.9), job.adam.get("beta_2", 0.999)
        params = [v.value for v in model.trainable_variables]
        optimizer = torch.optim.Adam(params, lr=job.lr, betas=(beta_1, beta_2))

        def run_epoch(epoch: int, on_first_step: Callable[[], Any]) -> None:
            for xb, yb in _torch_batches(job, xs, ys, epoch):
                loss = loss_fn(yb, model(xb, training=True))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                last[0] = loss
                on_first_step()

        return {**_epochs(run_epoch, job.epochs), "final_loss": _scalar(last[0])}

    # The recipe's own step (autoencoder, gan): each phase's loss, its variables, its own Adam.
    steps = []
    for phase in job.recipe.phases(model):
        variables = phase.variables(model) if phase.variables else model.trainable_variables
        params = [v.value for v in variables]
        lr, options = job.phase_adam(phase)
        betas = (options.get("beta_1", 0.9), options.get("beta_2", 0.999))
        steps.append((phase.loss, params, torch.optim.Adam(params, lr=lr, betas=betas)))

    def run_phases(epoch: int, on_first_step: Callable[[], Any]) -> None:
        for xb, yb in _torch_batches(job, xs, ys, epoch):
            for loss_of, params, optimizer in steps:
                loss = loss_of(model, xb, yb, True)
                for p, g in zip(params, torch.autograd.grad(loss, params), strict=True):
                    p.grad = g
                optimizer.step()
            last[0] = loss
            on_first_step()

    return {**_epochs(run_phases, job.epochs), "final_loss": _scalar(last[0])}


def torch_nn_loop(job: Job) -> dict[str, Any]:
    """The same loop over the architecture written in torch.nn (images NCHW)."""
    import torch

    module = torch_nn_model(job.model.name, job.info)
    # The twin must be the same model: as many trainable parameters as the Keras model.
    params = sum(p.numel() for p in module.parameters())
    keras_model = job.recipe.build_model(job.info)
    keras_params = sum(math.prod(v.shape) for v in keras_model.trainable_variables)
    if params != keras_params:
        raise ValueError(
            f"{job.model.name}: the torch.nn twin has {params} trainable parameters, the Keras "
            f"model {keras_params}"
        )
    del keras_model
    xs, ys = _torch_tensors(job.x), _torch_tensors(job.y).long()
    if xs.ndim == 4:  # NHWC -> NCHW, as a torch user keeps images
        xs = xs.permute(0, 3, 1, 2).contiguous()
    optimizer = torch.optim.Adam(module.parameters(), lr=job.lr)
    module.train()
    last: list[Any] = [None]

    def run_epoch(epoch: int, on_first_step: Callable[[], Any]) -> None:
        for xb, yb in _torch_batches(job, xs, ys, epoch):
            loss = torch.nn.functional.cross_entropy(module(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            last[0] = loss
            on_first_step()

    result = _epochs(run_epoch, job.epochs)
    return {**result, "final_loss": _scalar(last[0]), "parameters": params}


def torch_nn_model(name: str, info: Any) -> Any:
    """The zoo model `name` in torch.nn, as a PyTorch user writes it; the builders' defaults in
    benchmarks/zoo/zoo_recipes.py (Keras's BatchNormalization momentum 0.99 is torch's 0.01)."""
    from torch import nn

    classes = info.num_classes
    if name == "cnn_bn":
        channels, f = info.input_shape[-1], 16
        size = info.input_shape[0] // 4
        return nn.Sequential(
            nn.Conv2d(channels, f, 3, padding=1, bias=False),
            nn.BatchNorm2d(f, eps=1e-3, momentum=0.01), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(f, 2 * f, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * f, eps=1e-3, momentum=0.01), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(2 * f * size * size, 64), nn.ReLU(), nn.Linear(64, classes),
        )  # fmt: skip
    if name == "gru":

        class GRU(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.gru = nn.GRU(info.input_shape[-1], 32, batch_first=True)
                self.logits = nn.Linear(32, classes)

            def forward(self, x: Any) -> Any:
                _, last = self.gru(x)
                return self.logits(last[0])

        return GRU()
    if name == "transformer":
        width = 64

        class Encoder(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.embed = nn.Linear(info.input_shape[-1], width)
                layer = nn.TransformerEncoderLayer(
                    width, 4, 128, dropout=0.0, batch_first=True, layer_norm_eps=1e-3
                )
                self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
                self.logits = nn.Linear(width, classes)

            def forward(self, x: Any) -> Any:
                return self.logits(self.encoder(self.embed(x)).mean(dim=1))

        return Encoder()
    raise ValueError(f"no torch.nn twin of {name}")


def tf_function_loop(job: Job) -> dict[str, Any]:
    """A tf.function step over the Keras model on tf: GradientTape, Keras Adam, tf.data input."""
    import keras
    import tensorflow as tf

    model = job.recipe.build_model(job.info)
    if job.recipe.has_phases:
        phases = [(p.loss, p) for p in job.recipe.phases(model)]
    else:
        loss_fn = job.recipe.loss()
        phases = [(lambda m, x, y, training: loss_fn(y, m(x, training=training)), None)]
    steps = []
    for loss_of, phase in phases:
        variables = (
            phase.variables(model) if phase and phase.variables else model.trainable_variables
        )
        lr, options = job.phase_adam(phase) if phase else (job.lr, dict(job.adam))
        optimizer = keras.optimizers.Adam(learning_rate=lr, **options)
        optimizer.build(variables)
        steps.append((loss_of, variables, optimizer))
    data = (
        tf.data.Dataset.from_tensor_slices((job.x, job.y))
        .shuffle(len(job.y), seed=0)
        .batch(job.batch_size)
        .take(job.batches_per_epoch)
        .prefetch(tf.data.AUTOTUNE)
    )

    @tf.function
    def step(xb: Any, yb: Any) -> Any:
        for loss_of, variables, optimizer in steps:
            with tf.GradientTape() as tape:
                loss = loss_of(model, xb, yb, True)
            optimizer.apply(tape.gradient(loss, variables), variables)
        return loss

    last: list[Any] = [None]

    def run_epoch(epoch: int, on_first_step: Callable[[], Any]) -> None:
        for xb, yb in data:
            last[0] = step(xb, yb)
            on_first_step()

    return {**_epochs(run_epoch, job.epochs), "final_loss": _scalar(last[0])}


# -- how dualtrain ran its steps ------------------------------------------------------------------

# dualtrain's log lines (dualtrain/engines): "<backend> steps run <mode>", and, where capture
# fails or is refused, "backend.capture_forward: <what> runs eagerly, as plain Keras on torch
# [(same results, slower steps)]: <reason>".
_STEPS_RUN = re.compile(r"\] - (?:torch|tf) steps run (?P<mode>.+)$")
_NOT_CAPTURED = re.compile(
    r"backend\.capture_forward: (?P<what>.+?) runs eagerly, as plain Keras on torch"
    r"(?: \([^)]*\))?: (?P<reason>.+)$"
)


def step_record(summary: dict[str, Any], log_text: str) -> dict[str, Any]:
    """How a dualtrain run ran its steps: {mode, captured, not_captured_because, source}, and
    on torch, where the summary says, whether each optimizer step ran as one graph
    (`whole_step`, `whole_step_not_captured_because`) and, where not, whether its optimizer
    update did (`update_graph`).

    From summary.json's record where it has one (`step_capture`, or `steps` when that is a dict
    rather than the step count), else from the run's log lines; `captured` None where neither
    says (shown as "?").
    """
    record = summary.get("step_capture")
    if not isinstance(record, dict) and isinstance(summary.get("steps"), dict):
        record = summary.get("steps")
    if isinstance(record, dict):
        given = {
            "mode": record.get("mode"),
            "captured": record.get("captured"),
            "not_captured_because": record.get("not_captured_because"),
            "source": "summary.json",
        }
        for key in ("whole_step", "whole_step_not_captured_because", "update_graph"):
            if key in record:
                given[key] = record.get(key)
        return given
    mode, reasons = None, []
    for line in log_text.splitlines():
        if (said := _STEPS_RUN.search(line)) is not None:
            mode = said["mode"]
        elif (failed := _NOT_CAPTURED.search(line)) is not None and (
            # The eval forward pass runs at validation only: not the timed train steps.
            failed["what"] != "the eval forward pass"
        ):
            reasons.append(failed["reason"])
    if mode is None and not reasons:
        return {"mode": None, "captured": None, "not_captured_because": None, "source": None}
    captured = not reasons and mode is not None and not mode.startswith("eagerly")
    reason = "; ".join(dict.fromkeys(reasons)) or None
    return {"mode": mode, "captured": captured, "not_captured_because": reason, "source": "log"}


def describe_steps(record: dict[str, Any] | None) -> str:
    """The table's words for a step record: `graph` (torch: `whole step` where each optimizer
    step ran as one graph, `forward graph` where only the forward pass and loss did, with why,
    `forward and update graphs` where the optimizer's update was a graph of its own), `eager:
    <reason>`, or `?` where the run did not say."""
    if not record or record.get("captured") is None:
        return "?"
    if not record["captured"]:
        return f"eager: {record.get('not_captured_because') or 'NO REASON GIVEN'}"
    if "whole_step" not in record:
        return "graph"
    if record["whole_step"]:
        return "whole step"
    why = record.get("whole_step_not_captured_because") or "no reason given"
    graphs = "forward and update graphs" if record.get("update_graph") else "forward graph"
    return f"{graphs} (whole step: {why})"


# -- the parent: runs, rounds, the report -------------------------------------------------------


def _env(system: str, threads: int) -> dict[str, str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    if threads:
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TF_NUM_INTRAOP_THREADS"):
            env[name] = str(threads)
        env["TF_NUM_INTEROP_THREADS"] = "1"
    # The peers run TensorFlow as it comes; dualtrain/tf turns oneDNN's ops on by itself.
    if not system.startswith("dualtrain/"):
        env.pop("TF_ENABLE_ONEDNN_OPTS", None)
        env["KERAS_BACKEND"] = "tensorflow" if system.startswith("tf.") else "torch"
    if system == "tf.function+onednn":
        env["TF_ENABLE_ONEDNN_OPTS"] = "1"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def config_overrides(
    model: Model, epochs: int, smoke: bool, more: list[str] | None = None
) -> list[str]:
    """The config every system of `model` composes: the dualtrain run's, less where it writes;
    `more`: --override's."""
    return [
        f"recipe={model.recipe}",
        f"trainer.max_epochs={epochs if smoke else epochs * model.epoch_factor}",
        *model.extra,
        *(model.smoke_overrides() if smoke else []),
        *(more or []),
    ]


def _command(system: str, model: Model, args: argparse.Namespace, out: Path) -> list[str]:
    overrides = config_overrides(model, args.epochs, args.smoke, args.override)
    if system.startswith("dualtrain/"):
        backend = system.split("/")[1]
        return [
            sys.executable, "-m", "dualtrain", "--config-dir", str(ZOO), *overrides,
            f"backend={backend}", "logger=[jsonl]", "logger.progress=false",
            "checkpoint.every_n_epochs=0", f"hydra.run.dir={out / 'run'}",
            "callbacks=[zoo_timing]",  # zoo/callbacks: the CPU time of each epoch's steps
            *(["backend.jit_compile=false"] if backend == "tf" else []),
        ]  # fmt: skip
    return [
        sys.executable, __file__, "--child", system, "--models", model.name,
        "--epochs", str(args.epochs), "--threads", str(args.threads),
        "--out", str(out / "result.json"), *(["--smoke"] if args.smoke else []),
        *[f"--override={o}" for o in args.override],
    ]  # fmt: skip


def run_one(system: str, model: Model, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="dualtrain-zoo-") as tmp:
        out = Path(tmp)
        busy = busy_cpu_seconds()
        launched = time.time()
        started = time.perf_counter()
        with open(out / "stderr.txt", "w+") as stderr:
            proc = subprocess.Popen(
                _command(system, model, args, out),
                cwd=REPO, env=_env(system, args.threads), stdout=subprocess.DEVNULL, stderr=stderr,
            )  # fmt: skip
            _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak RSS and CPU time
            proc.returncode = os.waitstatus_to_exitcode(status)
            wall = time.perf_counter() - started
            stderr.seek(0)
            errors = stderr.read()
        result: dict[str, Any] = {"system": system, "model": model.name, "wall_seconds": wall}
        if system.startswith("dualtrain/"):
            run = out / "run"
            summary_file = run / "summary.json"
            summary = json.loads(summary_file.read_text()) if summary_file.exists() else {}
            log_file = run / "dualtrain.log"
            log_text = log_file.read_text() if log_file.exists() else ""
            result["steps"] = step_record(summary, log_text)
            if proc.returncode != 0 or summary.get("status") != "completed":
                raise RunFailed(system, model.name, errors, result["steps"])
            result["samples_per_sec"] = summary["train_samples_per_sec"]
            result["first_step_seconds"] = summary["first_step_seconds"]
            timing_file = run / "zoo_timing.json"  # zoo/zoo_timing.py
            if timing_file.exists():
                timing = json.loads(timing_file.read_text())
                cpu = sum(e["cpu_seconds"] for e in timing["epochs"][1:])
                if cpu > 0:
                    result["samples_per_cpu_sec"] = timing["steady_samples"] / cpu
            result["final_loss"] = (summary.get("final") or {}).get("train", {}).get("loss")
        else:
            if proc.returncode != 0:
                raise RunFailed(system, model.name, errors)
            report = json.loads((out / "result.json").read_text())
            steady = report["epoch_seconds"][1:]
            result["samples_per_sec"] = report["samples_per_epoch"] * len(steady) / sum(steady)
            cpu = report["epoch_cpu_seconds"][1:]
            result["samples_per_cpu_sec"] = report["samples_per_epoch"] * len(cpu) / sum(cpu)
            result["first_step_seconds"] = report["first_step_at"] - launched
            for key in ("parameters", "final_loss"):
                if key in report:
                    result[key] = report[key]
        result["peak_rss_mb"] = usage.ru_maxrss / 1024  # Linux: kilobytes
        after = busy_cpu_seconds()
        if busy is not None and after is not None:
            own = usage.ru_utime + usage.ru_stime
            result["other_load_cores"] = max(0.0, (after - busy - own) / wall)
        return result


class RunFailed(RuntimeError):
    def __init__(
        self, system: str, model: str, errors: str, steps: dict[str, Any] | None = None
    ) -> None:
        lines = [line for line in errors.strip().splitlines() if line.strip()]
        self.last_line = lines[-1] if lines else "no output"
        self.steps = steps
        super().__init__(f"{system} on {model} failed: {self.last_line}\n{errors[-3000:]}")


def systems_of(model: Model, systems: list[str]) -> list[str]:
    return [s for s in systems if s != "torch.nn" or model.torch_nn]


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    models = [MODELS[name] for name in args.models.split(",")]
    systems = args.systems.split(",")
    runs: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []
    for round_ in range(args.rounds):
        for model in models:
            mine = systems_of(model, systems)
            shift = round_ % len(mine)  # each round starts one system later
            for system in mine[shift:] + mine[:shift]:
                try:
                    result = run_one(system, model, args)
                except RunFailed as err:  # one failing run must not lose the others
                    failures.append(
                        {"system": system, "model": model.name, "round": round_,
                         "error": str(err), "last_line": err.last_line, "steps": err.steps}
                    )  # fmt: skip
                    print(err, file=sys.stderr)
                    continue
                result["round"] = round_
                runs.append(result)
                steps = f" ({describe_steps(result['steps'])})" if "steps" in result else ""
                print(
                    f"round {round_} {model.name} {system}: "
                    f"{result['samples_per_sec']:,.0f} samples/s{steps}",
                    file=sys.stderr,
                )
    return {"runs": runs, "failures": failures}


def per_round(
    runs: list[dict[str, Any]], model: str, system: str, base: str, rate: str = "samples_per_sec"
) -> list[float]:
    """system : base, each round's pair of runs (the same round: close in time)."""
    by = {(r["system"], r["round"]): r[rate] for r in runs if r["model"] == model and rate in r}
    rounds = sorted({r for s, r in by if s == system})
    return [by[(system, r)] / by[(base, r)] for r in rounds if (base, r) in by]


def summarize(report: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for name in args.models.split(","):
        systems: dict[str, Any] = {}
        for system in args.systems.split(","):
            runs = [r for r in report["runs"] if r["model"] == name and r["system"] == system]
            if not runs:
                continue
            rates = [r["samples_per_sec"] for r in runs]
            systems[system] = {
                "samples_per_sec": statistics.median(rates),
                "min": min(rates),
                "max": max(rates),
                "first_step_seconds": statistics.median(r["first_step_seconds"] for r in runs),
                "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
                "other_load_cores": max(r.get("other_load_cores", 0.0) for r in runs),
            }
            cpu_rates = [r["samples_per_cpu_sec"] for r in runs if "samples_per_cpu_sec" in r]
            if cpu_rates:
                systems[system]["samples_per_cpu_sec"] = statistics.median(cpu_rates)
        ratios = {}
        for system, base, goal in RATIOS:
            rounds = per_round(report["runs"], name, system, base)
            if rounds:
                median = statistics.median(rounds)
                ratios[f"{system} : {base}"] = {
                    "system": system, "against": base, "goal": goal, "per_round": rounds,
                    "median": median, "met": median >= goal,
                }  # fmt: skip
                cpu = per_round(report["runs"], name, system, base, "samples_per_cpu_sec")
                if cpu:  # the same from CPU time: less sensitive to other processes
                    ratios[f"{system} : {base}"]["cpu_per_round"] = cpu
                    ratios[f"{system} : {base}"]["cpu_median"] = statistics.median(cpu)
        steps = {}
        for system in ("dualtrain/torch", "dualtrain/tf"):
            records = [
                r["steps"] for r in report["runs"] if r["model"] == name and r["system"] == system
            ]
            if records:
                # Every round's record; the runs of one model normally agree.
                distinct = {json.dumps(r, sort_keys=True): r for r in records}
                steps[system] = list(distinct.values())
        failed = [
            f"{f['system']}: {f['last_line']}" for f in report["failures"] if f["model"] == name
        ]
        table[name] = {
            "what": MODELS[name].what,
            "recipe": MODELS[name].recipe,
            "systems": systems,
            "ratios": ratios,
            "steps": steps,
            "failed": list(dict.fromkeys(failed)),
        }
    return table


def fallbacks(table: dict[str, Any]) -> list[dict[str, Any]]:
    """Every dualtrain run whose steps did not run as a graph, or that did not say: with the
    reason dualtrain gave (none left out)."""
    found = []
    for name, row in table.items():
        for system, records in row["steps"].items():
            for record in records:
                if record.get("captured") is not True:
                    found.append({"model": name, "system": system, **record})
    return found


def _rate(row: dict[str, Any], system: str) -> str:
    entry = row["systems"].get(system)
    return f"{entry['samples_per_sec']:,.0f}" if entry else "-"


def _ratio(row: dict[str, Any], system: str, base: str, key: str = "median") -> str:
    entry = row["ratios"].get(f"{system} : {base}")
    return f"{entry[key]:.2f}x" if entry and key in entry else "-"


def markdown(
    table: dict[str, Any], args: argparse.Namespace, runs: list[dict[str, Any]] | None = None
) -> str:
    lines = [
        f"threads={args.threads or 'default'}; {args.rounds} round(s) of {args.epochs} epochs; "
        "samples/s: steady state (first epoch excluded), median over rounds; ratios: median of "
        "the per-round ratios",
        "",
        "| model | dt/torch : torch+keras (>= 1.0) | dt/torch : torch.nn (>= 0.9) "
        "| dt/tf : tf.function (>= 1.0) | dualtrain/torch | torch+keras | torch.nn "
        "| dualtrain/tf | tf.function | dualtrain/torch steps |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, row in table.items():
        records = row["steps"].get("dualtrain/torch", [])
        steps = "; ".join(dict.fromkeys(describe_steps(r) for r in records)) or "-"
        failed = sorted({line.split(":")[0] for line in row["failed"]})
        if failed:  # the errors are listed below the table
            steps += f" (failed: {', '.join(failed)})"
        lines.append(
            f"| {name} | {_ratio(row, 'dualtrain/torch', 'torch+keras')} "
            f"| {_ratio(row, 'dualtrain/torch', 'torch.nn')} "
            f"| {_ratio(row, 'dualtrain/tf', 'tf.function')} "
            + "".join(f"| {_rate(row, s)} " for s in SYSTEMS)
            + f"| {steps.replace('|', '/')} |"
        )
    lines += [
        "",
        "The same ratios from the CPU time of each process over the same epochs (samples per "
        "CPU-second; less sensitive to other processes on the machine):",
        "",
        "| model | dt/torch : torch+keras | dt/torch : torch.nn | dt/tf : tf.function |",
        "|---|---:|---:|---:|",
    ]
    for name, row in table.items():
        lines.append(
            f"| {name} | "
            + " | ".join(_ratio(row, s, b, "cpu_median") for s, b, _ in RATIOS)
            + " |"
        )
    extra = [s for s in args.systems.split(",") if s not in SYSTEMS]
    for system in extra:  # e.g. tf.function+onednn
        rates = ", ".join(f"{n} {_rate(row, system)}" for n, row in table.items())
        lines += ["", f"{system} samples/s: {rates}"]
    found = fallbacks(table)
    lines += ["", f"dualtrain runs not run as a graph, or that did not say how: {len(found)}"]
    for f in found:
        said = f"from {f['source']}" if f.get("source") else "no step record, no log line"
        lines.append(f"- {f['model']}, {f['system']}: {describe_steps(f)} ({said})")
    partial = [
        (name, record)
        for name, row in table.items()
        for record in row["steps"].get("dualtrain/torch", [])
        if record.get("captured") and record.get("whole_step") is False
    ]
    if partial:
        lines += ["", f"dualtrain/torch runs graphed but not as one graph a step: {len(partial)}"]
        lines += [f"- {name}: {describe_steps(record)}" for name, record in partial]
    loads = sorted(r["other_load_cores"] for r in runs or [] if "other_load_cores" in r)
    if loads:
        lines += [
            "",
            f"Other load (cores other processes kept busy during a run; the machine has "
            f"{os.cpu_count()}): median {statistics.median(loads):.2f}, max {loads[-1]:.2f}"
            + (": a busy machine, rerun for figures to quote" if loads[-1] > 0.25 else ""),
        ]
    failed = [(name, line) for name, row in table.items() for line in row["failed"]]
    if failed:
        lines += ["", f"Failed: {len(failed)}"]
        lines += [f"- {name}, {line}" for name, line in failed]
    return "\n".join(lines)


def cpu() -> dict[str, Any]:
    """The CPU's name, and whether TensorFlow turns its oneDNN ops on by itself on it (on CPUs
    with AVX-512 VNNI or BF16, AVX-VNNI or AMX; dualtrain/tf turns them on on any x86)."""
    info: dict[str, Any] = {"machine": platform.machine()}
    with contextlib.suppress(OSError):
        text = Path("/proc/cpuinfo").read_text()
        names = re.findall(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
        flags = set((re.findall(r"^flags\s*:\s*(.+)$", text, re.MULTILINE) or [""])[0].split())
        info["model"] = names[0] if names else None
        wanted = {"avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile"}
        info["tf_onednn_by_default"] = bool(flags & wanted)
        info["flags"] = sorted(flags & (wanted | {"avx2", "avx512f"}))
    return info


def environment() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for package in ("torch", "tensorflow", "tensorflow-cpu", "keras"):
        with contextlib.suppress(PackageNotFoundError):
            versions[package] = version(package)
    git: dict[str, Any] = {}
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        git["commit"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "dualtrain"],
            cwd=REPO, capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        git["dualtrain_changed_files"] = [line[3:] for line in status.splitlines()]
    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "cpu": cpu(),
        "versions": versions,
        "git": git,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated")
    parser.add_argument(
        "--systems",
        default=",".join(SYSTEMS),
        help=f"comma-separated, of {', '.join(SYSTEMS + OPTIONAL_SYSTEMS)}",
    )
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (median)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run; the first: warm-up")
    parser.add_argument("--threads", type=int, default=1, help="threads per process (0: default)")
    parser.add_argument(
        "--smoke", action="store_true",
        help="tiny: 256 samples (8 batches of the shipped recipes), 2 epochs, 1 round",
    )  # fmt: skip
    parser.add_argument(
        "--override", action="append", default=[], metavar="KEY=VALUE",
        help="a config override for every run, e.g. backend.capture_forward=false (repeatable)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/zoo.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    unknown = [m for m in args.models.split(",") if m not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; the zoo: {', '.join(MODELS)}")
    unknown = [s for s in args.systems.split(",") if s not in SYSTEMS + OPTIONAL_SYSTEMS]
    if unknown:
        parser.error(f"unknown system(s) {unknown}; of {', '.join(SYSTEMS + OPTIONAL_SYSTEMS)}")
    if args.smoke:
        args.rounds, args.epochs = 1, 2
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        model = MODELS[args.models]
        overrides = config_overrides(model, args.epochs, args.smoke, args.override)
        result = child(args.child, model, overrides, args.threads)
        args.out.write_text(json.dumps(result))
        return
    report = run_all(args)
    table = summarize(report, args)
    print(markdown(table, args, report["runs"]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    everything = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "environment": environment(),
        "table": table,
        "fallbacks": fallbacks(table),
        **report,
    }
    args.out.write_text(json.dumps(everything, indent=2))
    print(f"wrote {args.out}", file=sys.stderr)
    if report["failures"]:
        sys.exit(f"{len(report['failures'])} run(s) failed: see {args.out}")


if __name__ == "__main__":
    main()
