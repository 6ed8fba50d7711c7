"""Typed run settings built from the composed config: a schema of frozen dataclasses.

Only `cli` sees Hydra. It hands the composed config to `Settings.from_config` as a plain dict, and
everything below works with these frozen dataclasses.

The dataclasses are the schema and the one source of defaults:

- each field that is a config key declares its check in its metadata (`key(check)`): a small
  vocabulary of checks (`integer`, `number`, `choice`, `boolean`, `text`, `existing_path`,
  `optional`) that raise one-line `ConfigError`s naming the key, the value and what is right;
  `_build` runs them for a section, taking a field's default where the section lacks its key;
- the field defaults are the defaults. `config_defaults()` renders them as one config, which
  `dualtrain/configs/__init__.py` stores in Hydra's ConfigStore and `train.yaml` composes first,
  so `--cfg job` and `--help` still show every key. The YAML files under `configs/` hold only what
  an option or a recipe changes;
- the rules that tie several keys together are stated once, in `_check_rules`;
- a data source checks its own keys: a shipped source module's `CONFIG_KEYS` table (source
  function -> key -> check, e.g. `dualtrain/data/images.py`) is looked up from `data.source` and
  run here, before any framework is imported. A module of the user's is not imported here.

Why not Hydra structured configs (typed dataclasses in the ConfigStore): OmegaConf would then
check the types itself while composing, with its own multi-line messages and without ranges,
choices or the rules between keys, which would all stay here; the node stored here is untyped
(plain values), so all checking stays in one place with one style of message, and no schema
library is needed for a dozen kinds of check.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import importlib.util
import math
from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from dualtrain.errors import ConfigError

BACKENDS = ("torch", "tf")
MODES = ("train", "eval", "export", "parity", "lr_find", "summary")
JIT_CHOICES = ("auto", "true", "false")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("constant", "step", "cosine", "warmup_cosine")
ON_NONFINITE = ("stop", "skip")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
# recipe.task: what the recipe's outputs predict ("none": no targets, e.g. an autoencoder's own
# loss); None infers it from the labels.
TASKS = ("classification", "multilabel", "regression", "none")
# tf.distribute strategies; for torch, torchrun's environment makes a run distributed.
STRATEGIES = {"tf": ("none", "mirrored", "multi_worker"), "torch": ("none",)}
LOGGERS = ("jsonl", "csv", "console", "tensorboard", "mlflow")  # the options of configs/logger/
EXPORT_FORMATS = ("saved_model", "tflite", "onnx", "torch", "tfjs", "executorch")
TFLITE_QUANTIZE = ("none", "dynamic", "float16", "int8")
# Keys of a data config that the loader uses itself; all other keys go to the data source function.
# (`num_classes`, where set, is also the number of classes the labels are checked against.)
DATA_LOADER_KEYS = ("source", "batch_size", "val_fraction", "num_workers", "augmentation")
# data.augmentation keys: Keras preprocessing layers, applied to training batches only.
AUGMENTATIONS = ("flip", "rotation", "zoom", "translation", "contrast", "brightness")
FLIP_MODES = ("horizontal", "vertical", "horizontal_and_vertical")
# The keyword arguments of each optimizer's Keras class (Keras 3) that a config may set, as
# optimizer.<name>: checked here, so that a misspelt one fails before any framework is imported.
# A test compares them with the classes' signatures.
OPTIMIZER_KWARGS = {
    "adam": ("beta_1", "beta_2", "epsilon", "amsgrad", "weight_decay", "clipnorm", "use_ema",
             "ema_momentum", "ema_overwrite_frequency", "loss_scale_factor"),
    "adamw": ("beta_1", "beta_2", "epsilon", "amsgrad", "weight_decay", "clipnorm", "use_ema",
              "ema_momentum", "ema_overwrite_frequency", "loss_scale_factor"),
    "sgd": ("momentum", "nesterov", "weight_decay", "clipnorm", "use_ema", "ema_momentum",
            "ema_overwrite_frequency", "loss_scale_factor"),
}  # fmt: skip
# The other arguments of those classes: dualtrain passes them itself, from these keys.
OPTIMIZER_KWARGS_SET_BY = {
    "learning_rate": "optimizer.lr",
    "global_clipnorm": "trainer.grad_clip_norm",
    "clipvalue": "trainer.grad_clip_value",
    # dualtrain accumulates gradients itself; Keras's accumulation inside would compound it
    "gradient_accumulation_steps": "trainer.grad_accum_steps",
    "name": "optimizer=<option>",
}

# -- the checks: (value, the key's label) -> the value to keep; a bad value raises ConfigError --

Check = Callable[[Any, str], Any]


def integer(minimum: int) -> Check:
    def check(value: Any, label: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
            raise ConfigError(f"{label} must be {kind}; got {value!r}")
        return value

    return check


def number(ok: Callable[[float], bool], what: str) -> Check:
    """A real number (not a bool or a string) for which `ok` holds, as a float; `what` says
    which, e.g. "a number in (0, 1]"."""

    def check(value: Any, label: str) -> float:
        real = _number(value)
        if real is None or not ok(real):
            raise ConfigError(f"{label} must be {what}; got {value!r}")
        return real

    return check


positive = number(lambda v: math.isfinite(v) and v > 0, "a positive number such as 0.001")


def choice(choices: tuple[str, ...]) -> Check:
    def check(value: Any, label: str) -> str:
        if value not in choices:
            raise ConfigError(f"{label} must be one of {', '.join(choices)}; got {value!r}")
        return str(value)

    return check


def boolean(value: Any, label: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{label} must be true or false; got {value!r}")
    return value


def text(value: Any, label: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{label} must be a non-empty string; got {value!r}")
    return value


def optional(inner: Check) -> Check:
    """None, or what `inner` accepts."""
    return lambda value, label: None if value is None else inner(value, label)


def existing_path(give: str, placeholder: str | None = None) -> Check:
    """A file or directory that exists; None only without a `placeholder` (which names what to
    set instead)."""

    def check(value: Any, label: str) -> str | None:
        if value is None and placeholder is None:
            return None
        if value is None:
            raise ConfigError(f"{label} has no value; set it with {label}=<{placeholder}>")
        if not isinstance(value, str) or not Path(value).exists():
            raise ConfigError(f"{label}={value} does not exist; give {give}")
        return value

    return check


def _as_given(value: Any, label: str) -> Any:
    """No check of its own: a rule between keys checks it (`_check_rules`)."""
    return value


def key(check: Check, label: str | None = None, shown: Any = MISSING) -> dict[str, Any]:
    """A dataclass field's metadata: the field is a config key, checked by `check`. `label`
    names it in messages (default: section.key); `shown` is its default as the config shows it,
    where that differs from the field's."""
    return {"check": check, "label": label, "shown": shown}


def check_section(values: Mapping[str, Any], section: str, checks: Mapping[str, Check]) -> None:
    """Runs `checks` (key -> check) on those keys that config section `section` has."""
    for name, check in checks.items():
        if name in values:
            check(values[name], f"{section}.{name}")


# -- the schema ----------------------------------------------------------------------------------


def _auto_true_false(value: Any, label: str) -> str:
    value = {True: "true", False: "false"}.get(value, value) if isinstance(value, bool) else value
    return choice(JIT_CHOICES)(value, label)


@dataclass(frozen=True)
class BackendSettings:
    name: str = field(metadata=key(choice(BACKENDS), "backend"))
    # auto | true | false: XLA for tf, torch.compile for torch (auto: XLA on GPU, torch off)
    jit_compile: str = field(default="auto", metadata=key(_auto_true_false))
    # optimizer steps per compiled call (tf; torch runs them eagerly, one by one)
    steps_per_execution: int = field(default=1, metadata=key(integer(1)))
    # float32 | mixed_float16 | mixed_bfloat16 (Keras dtype policies: layers compute in 16 bits,
    # variables stay float32)
    precision: str = field(default="float32", metadata=key(choice(PRECISIONS)))
    # tf: none | mirrored (this machine's devices) | multi_worker (the cluster in TF_CONFIG);
    # torch: none (torchrun's environment makes a run distributed); see _check_rules
    strategy: str = field(default="none", metadata=key(_as_given))
    # a collective waiting longer on a rank (one that died or hangs) fails the run
    collective_timeout_s: float = field(default=300.0, metadata=key(positive))
    # tf mirrored on a CPU: this many logical CPU devices, one replica each
    cpu_replicas: int = field(default=1, metadata=key(integer(1)))
    # torch: run the forward pass and loss as an ATen graph captured once per batch shape
    capture_forward: bool = field(default=True, metadata=key(boolean))
    # torch: each optimizer step (forward, backward, update) as one graph, where the model and
    # the optimizer (Adam, AdamW) allow it, else the update alone as one; needs capture_forward
    capture_step: bool = field(default=True, metadata=key(boolean))
    # auto | true | false: in-memory data sets go to the device once and batches are gathered
    # there (auto: those that take at most a quarter of the device memory; on a CPU, all)
    data_on_device: str = field(default="auto", metadata=key(_auto_true_false))
    # torch on glibc: host memory the steps free stays with the process for the next step
    keep_host_memory: bool = field(default=True, metadata=key(boolean))
    # every step op by op, for a debugger: no captured graph (torch), no tf.function (tf);
    # debug=eager sets it, and a run under a debugger (pdb, an IDE's) gets it by itself
    eager: bool = field(default=False, metadata=key(boolean))


def _recipe_module(value: Any, label: str) -> str:
    module = text(value, label)
    _check_importable(module, label)
    return module


def _model(value: Any, label: str) -> dict[str, Any]:
    model = value or {}
    if not isinstance(model, Mapping):
        raise ConfigError(f"{label} must be a mapping of keyword arguments; got {model!r}")
    return dict(model)


def _task(value: Any, label: str) -> str | dict[str, str] | None:
    if value is None or (isinstance(value, str) and value in TASKS):
        return value
    if not isinstance(value, Mapping) or not value:
        raise ConfigError(
            f"{label} must be one of {', '.join(TASKS)}, or a mapping of output name to one of "
            f"them, e.g. {label}={{label:classification,box:regression}}; got {value!r}"
        )
    return {str(name): choice(TASKS)(task, f"{label}.{name}") for name, task in value.items()}


def _loss_weights(value: Any, label: str) -> dict[str, float] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or not value:
        raise ConfigError(
            f"{label} must be a mapping of output name to a weight >= 0, e.g. "
            f"{label}={{label:1.0,box:0.5}}; got {value!r}"
        )
    weight = number(lambda v: math.isfinite(v) and v >= 0, "a number >= 0 such as 0.5")
    return {str(name): weight(w, f"{label}.{name}") for name, w in value.items()}


@dataclass(frozen=True)
class RecipeSettings:
    name: str = field(metadata=key(text))
    module: str = field(metadata=key(_recipe_module))  # the recipe's Python module
    model: dict[str, Any] = field(default_factory=dict, metadata=key(_model))  # to build_model
    # classification | multilabel | regression | none, or one of them per output name; None:
    # inferred from the labels
    task: str | dict[str, str] | None = field(default=None, metadata=key(_task))
    # output name -> weight of its loss in the total (None: 1 each)
    loss_weights: dict[str, float] | None = field(default=None, metadata=key(_loss_weights))


def _data_source(value: Any, label: str) -> str:
    source = text(value, label)
    _check_importable(source.split(":")[0], label)
    return source


def _augmentation(value: Any, label: str) -> dict[str, Any]:
    if value is None:
        return {}
    example = "e.g. data.augmentation={flip:horizontal,rotation:0.1,zoom:0.1}"
    if not isinstance(value, Mapping):
        raise ConfigError(f"{label} must be a mapping, {example}; got {value!r}")
    chosen = {}
    for name, factor in value.items():
        if name not in AUGMENTATIONS:
            raise ConfigError(
                f"{label} has no {name!r}; choose from {', '.join(AUGMENTATIONS)}, {example}"
            )
        if factor is None or factor is False:
            continue  # switched off, e.g. data.augmentation.flip=null
        if name == "flip":
            choice(FLIP_MODES)(factor, f"{label}.flip")
        else:
            number(lambda v: 0 < v < 1, "a factor in (0, 1) such as 0.1")(factor, f"{label}.{name}")
        chosen[str(name)] = factor
    return chosen


@dataclass(frozen=True)
class DataSettings:
    source: str = field(metadata=key(_data_source))  # "package.module:function"
    batch_size: int = field(default=32, metadata=key(integer(1)))
    # the val split where the source gives none: a seeded stratified share of the samples
    val_fraction: float = field(
        default=0.2,
        metadata=key(number(lambda v: 0 < v < 1, "a number between 0 and 1 such as 0.2")),
    )
    # torch DataLoader worker processes (in-memory arrays need none)
    num_workers: int = field(default=0, metadata=key(integer(0)))
    params: dict[str, Any] = field(default_factory=dict)  # keyword arguments of the source
    # AUGMENTATIONS key -> its factor: Keras preprocessing layers on training batches only, e.g.
    # data.augmentation='{flip: horizontal, rotation: 0.1}'; null: none
    augmentation: dict[str, Any] = field(
        default_factory=dict, metadata=key(_augmentation, shown=None)
    )


def _lr(value: Any, label: str) -> float | str:
    if value == "auto":
        return "auto"
    if _number(value) is None:  # not a number at all: say that auto is one of the choices
        raise ConfigError(
            f"{label} must be a positive number such as 0.001, or auto; got {value!r}"
        )
    return float(positive(value, label))


@dataclass(frozen=True)
class OptimizerSettings:
    name: str = field(metadata=key(choice(OPTIMIZERS), "optimizer"))
    # or auto: the learning-rate finder's suggestion (lr_find.*), found before training
    lr: float | str = field(metadata=key(_lr))
    params: dict[str, Any] = field(default_factory=dict)  # other keyword arguments of the optimizer


@dataclass(frozen=True)
class SchedulerSettings:
    """How the learning rate moves from `optimizer.lr`, counted in optimizer steps."""

    # constant | step | cosine | warmup_cosine
    name: str = field(default="constant", metadata=key(choice(SCHEDULERS), "scheduler"))
    # step: multiply the lr by `gamma` every `step_size` steps
    step_size: int = field(default=1000, metadata=key(integer(1)))
    gamma: float = field(
        default=0.1, metadata=key(number(lambda v: 0 < v <= 1, "a number in (0, 1]"))
    )
    # warmup_cosine: linear from 0 to lr over these steps
    warmup_steps: int = field(default=0, metadata=key(integer(0)))
    # cosine, warmup_cosine: the steps of the decay; null: the rest of the run
    decay_steps: int | None = field(default=None, metadata=key(optional(integer(1))))
    # cosine floor, as a fraction of lr
    alpha: float = field(
        default=0.0, metadata=key(number(lambda v: 0 <= v <= 1, "a number in [0, 1]"))
    )


def _max_steps(value: Any, label: str) -> int:
    steps: int = integer(-1)(value, label)
    if steps == 0:
        raise ConfigError(f"{label} must be -1 (no limit) or a positive integer; got 0")
    return steps


def _batch_limit(value: Any, label: str) -> int | float:
    if isinstance(value, bool) or not (
        (isinstance(value, int) and value >= 1) or (isinstance(value, float) and 0 < value <= 1)
    ):
        raise ConfigError(
            f"{label} must be a number of batches (an integer >= 1) or a share of them (a number "
            f"in (0, 1], e.g. 0.25); got {value!r}"
        )
    return value


_ema_momentum = number(lambda v: 0 < v < 1, "a momentum in (0, 1) such as 0.999")


@dataclass(frozen=True)
class TrainerSettings:
    max_epochs: int = field(default=10, metadata=key(integer(1)))
    # -1: no limit; otherwise stop after this many optimizer steps
    max_steps: int = field(default=-1, metadata=key(_max_steps))
    # train values leave the device (and reach the logs) this often
    log_every_n_steps: int = field(default=10, metadata=key(integer(1)))
    # batches whose summed gradients make one optimizer step (batch x N)
    grad_accum_steps: int = field(default=1, metadata=key(integer(1)))
    # clip the gradients' global norm to this
    grad_clip_norm: float | None = field(default=None, metadata=key(optional(positive)))
    # or clip each gradient element to [-v, v]
    grad_clip_value: float | None = field(default=None, metadata=key(optional(positive)))
    # stop | skip: a step whose loss is NaN or Inf stops the run, or is skipped
    on_nonfinite: str = field(default="stop", metadata=key(choice(ON_NONFINITE)))
    # per epoch: a count of batches (int, e.g. 20) or a share of them (float, e.g. 0.25)
    limit_train_batches: int | float = field(default=1.0, metadata=key(_batch_limit))
    # per validation: a count (int) or a share (float)
    limit_val_batches: int | float = field(default=1.0, metadata=key(_batch_limit))
    # > 0: the same first N batches every epoch (debug=overfit)
    overfit_batches: int = field(default=0, metadata=key(integer(0)))
    # write nothing: no checkpoints, logs or summary (debug=fast_dev_run)
    fast_dev_run: bool = field(default=False, metadata=key(boolean))
    # weight averaging: keep avg = m*avg + (1-m)*weight after each step, m in (0, 1) (null: off)
    ema: float | None = field(default=None, metadata=key(optional(_ema_momentum)))
    # with trainer.ema: validate (and mode=eval) with the averaged weights
    ema_eval: bool = field(default=True, metadata=key(boolean))
    # true: the frameworks' deterministic kernels (torch.use_deterministic_algorithms, TensorFlow's
    # op determinism); false: turned off; null: left as the process has them
    deterministic: bool | None = field(default=None, metadata=key(optional(boolean)))


@dataclass(frozen=True)
class MlflowSettings:
    """logger.mlflow.*: the keys configs/logger/mlflow.yaml sets, null for these defaults."""

    # http(s)://host:port of a tracking server, or a store URI such as sqlite:///mlflow.db; null:
    # MLflow's own choice (MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working directory)
    tracking_uri: str | None = field(default=None, metadata=key(optional(text)))
    # the MLflow experiment; null: the recipe's name
    experiment: str | None = field(default=None, metadata=key(optional(text)))


@dataclass(frozen=True)
class LoggerSettings:
    # the options chosen from configs/logger/, e.g. ("jsonl", "console"); each sets `<name>: true`
    # (mlflow: its mapping of keys)
    loggers: tuple[str, ...]
    # console: tqdm bars, drawn only when stdout is a terminal
    progress: bool = field(default=True, metadata=key(boolean))
    # tensorboard: weight and gradient histograms every N steps (0: off)
    histograms_every: int = field(default=0, metadata=key(integer(0)))
    # logger.mlflow.*: the mlflow logger's keys
    mlflow: MlflowSettings = field(default_factory=MlflowSettings)
    # a user's own loggers: name -> {"_target_": "package.module.Class", **keyword arguments}
    targets: dict[str, dict[str, Any]] = field(default_factory=dict)


def _monitor(value: Any, label: str) -> str:
    if not isinstance(value, str) or value.partition("/")[0] not in ("val", "train"):
        raise ConfigError(
            f"{label} must name a logged value such as val/loss or val/accuracy; got {value!r}"
        )
    return value


def _resume(value: Any, label: str) -> bool:
    if value not in (None, False, "auto"):
        raise ConfigError(f"{label} must be auto or null; got {value!r}")
    return value == "auto"


_RUN_OR_CHECKPOINT = existing_path("a run directory or a checkpoint directory")


@dataclass(frozen=True)
class CheckpointSettings:
    """Checkpoints go to <run_dir>/checkpoints/: step-<N>/ directories and `last`, the newest."""

    # save after every N epochs (0: never)
    every_n_epochs: int = field(default=1, metadata=key(integer(0)))
    # also save every N optimizer steps (0: never)
    every_n_steps: int = field(default=0, metadata=key(integer(0)))
    # "val/<name>" or "train/<name>": ranks checkpoints for save_top_k
    monitor: str = field(default="val/loss", metadata=key(_monitor))
    # min | max: whether lower or higher monitored values are better
    mode: str = field(default="min", metadata=key(choice(("min", "max"))))
    # keep the k best (-1: all, 0: none besides the newest)
    save_top_k: int = field(default=1, metadata=key(integer(-1)))
    # `last` links the newest; the newest two are always kept
    save_last: bool = field(default=True, metadata=key(boolean))
    # checkpoint.resume=auto: continue from the newest checkpoint of hydra.run.dir
    resume: bool = field(default=False, metadata=key(_resume, shown=None))
    # resume from this checkpoint directory or run directory
    path: str | None = field(default=None, metadata=key(_RUN_OR_CHECKPOINT))
    # the top-level key init_from: warm-start from this checkpoint's weights, counters from zero
    init_from: str | None = field(default=None, metadata=key(_RUN_OR_CHECKPOINT, "init_from"))


@dataclass(frozen=True)
class ParitySettings:
    """mode=parity: both backends train from the same initial weights on the same batches, each in
    its own process; the run fails when their per-step losses differ by more than rtol."""

    steps: int = field(default=100, metadata=key(integer(1)))  # optimizer steps on each backend
    # the largest relative difference of per-step losses that passes (float32: about 1e-6 over
    # 100 Adam steps)
    rtol: float = field(
        default=1e-5,
        metadata=key(number(lambda v: 0 <= v < 1, "a number >= 0 and < 1 such as 1e-5")),
    )
    # internal: set by parity mode for the one-backend runs it starts
    worker: bool = field(default=False, metadata=key(boolean))


def _formats(value: Any, label: str) -> tuple[str, ...]:
    formats = [value] if isinstance(value, str) else value
    if not isinstance(formats, list) or any(f not in EXPORT_FORMATS for f in formats):
        raise ConfigError(
            f"{label} must be a list of {', '.join(EXPORT_FORMATS)}, e.g. "
            f"{label}=[saved_model,onnx]; got {formats!r}"
        )
    return tuple(dict.fromkeys(formats))


@dataclass(frozen=True)
class ExportSettings:
    """Deployable models in <run_dir>/export/<format>/, each checked in its own runtime against
    the Keras model: with mode=export (and checkpoint.path), or at the end of a training run."""

    # of EXPORT_FORMATS
    formats: tuple[str, ...] = field(default=(), metadata=key(_formats))
    # none | dynamic | float16 | int8 (full integer, calibrated on training samples)
    tflite_quantize: str = field(default="none", metadata=key(choice(TFLITE_QUANTIZE)))
    # with tflite_quantize=int8: int8 inputs and outputs too (float32 where false)
    tflite_int8_io: bool = field(default=False, metadata=key(boolean))
    # internal: set by export for the one-backend processes it starts
    worker: bool = field(default=False, metadata=key(boolean))


def _profile_steps(value: Any, label: str) -> tuple[int, int] | None:
    if value is None:
        return None
    steps = tuple(value) if isinstance(value, (list, tuple)) else ()
    if (
        len(steps) != 2
        or any(isinstance(s, bool) or not isinstance(s, int) for s in steps)
        or not 1 <= steps[0] <= steps[1]
    ):
        raise ConfigError(
            f"{label} must be [first, last], two optimizer step numbers counted from 1 (as "
            f"metrics.jsonl counts them) with first <= last, e.g. {label}=[10,15]; got {value!r}"
        )
    return steps[0], steps[1]


@dataclass(frozen=True)
class ProfileSettings:
    """Profiler traces of some training steps and <run_dir>/profile.md (docs/profiling.md)."""

    # [first, last]: the optimizer steps to record, both included, counted from 1 (None: off)
    steps: tuple[int, int] | None = field(default=None, metadata=key(_profile_steps))


@dataclass(frozen=True)
class LrFindSettings:
    """mode=lr_find and optimizer.lr=auto: a learning-rate range test, one optimizer step per
    rate, from min_lr to max_lr in equal ratios (docs/training.md, "Finding a learning rate")."""

    min_lr: float = field(default=1e-7, metadata=key(positive))
    max_lr: float = field(default=1.0, metadata=key(positive))
    # optimizer steps (rates) in the sweep; the suggestion skips the first tenth
    steps: int = field(default=300, metadata=key(integer(20)))
    # the loss is smoothed by an exponential moving average with this factor
    smoothing: float = field(
        default=0.98, metadata=key(number(lambda v: 0 <= v < 1, "a number in [0, 1)"))
    )
    # stop once the smoothed loss exceeds this many times its lowest value (null: never)
    stop_factor: float | None = field(
        default=4.0, metadata=key(optional(number(lambda v: v > 1, "a number > 1 such as 4")))
    )


_T = TypeVar("_T")


@dataclass(frozen=True)
class Settings:
    """A run's whole config, validated: one frozen dataclass per section of the composed config.

    Made by `from_config` from the config Hydra composed; the command line does that for you.
    """

    backend: BackendSettings
    recipe: RecipeSettings
    data: DataSettings
    optimizer: OptimizerSettings
    trainer: TrainerSettings
    logger: LoggerSettings
    checkpoint: CheckpointSettings
    run_dir: Path
    # train | eval | export | parity | lr_find | summary (the model's parameters, layers, FLOPs)
    mode: str = field(default="train", metadata=key(choice(MODES)))
    seed: int = field(default=0, metadata=key(integer(0)))
    config_yaml: str = ""  # the composed config, kept for checkpoints and logs
    parity: ParitySettings = field(default_factory=ParitySettings)
    scheduler: SchedulerSettings = field(default_factory=SchedulerSettings)
    # name -> {"_target_": "package.module.Class", **keyword arguments}
    callbacks: dict[str, dict[str, Any]] = field(default_factory=dict)
    export: ExportSettings = field(default_factory=ExportSettings)
    profile: ProfileSettings = field(default_factory=ProfileSettings)
    lr_find: LrFindSettings = field(default_factory=LrFindSettings)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], run_dir: Path, config_yaml: str = "") -> Settings:
        """Validates a composed config and returns the settings.

        Args:
            cfg: the composed config as a plain dict (`OmegaConf.to_container(cfg, resolve=True)`).
            run_dir: where the run writes its files.
            config_yaml: the composed config as YAML, kept for checkpoints and logs.

        Returns:
            The settings.

        Raises:
            ConfigError: naming the first bad key, its value and what would be right.
        """
        check_keys("", cfg)
        top = _checked(cls, cfg, "")  # mode, seed
        backend = _section(cfg, "backend")
        recipe = _section(cfg, "recipe")
        data = _section(cfg, "data")
        optimizer = _section(cfg, "optimizer")
        trainer = _section(cfg, "trainer")
        # A user's logger is a mapping with _target_, like a callback; the others are keys.
        targets = {
            str(name): dict(spec)
            for name, spec in _section(cfg, "logger").items()
            if isinstance(spec, Mapping) and "_target_" in spec
        }
        logger = {k: v for k, v in _section(cfg, "logger").items() if k not in targets}
        for name in (
            "backend", "recipe", "trainer", "logger", "checkpoint", "parity", "export", "lr_find"
        ):  # fmt: skip
            check_keys(name, logger if name == "logger" else _section(cfg, name))
        check_keys("profile", _section(cfg, "profile"))
        # Each option of the logger group sets `<name>: true` (mlflow: its keys); several at once.
        loggers = tuple(
            n for n in LOGGERS if logger.get(n) is True or isinstance(logger.get(n), Mapping)
        )
        checkpoint = {**_section(cfg, "checkpoint"), "init_from": cfg.get("init_from")}
        settings = cls(
            **top,
            backend=_build(BackendSettings, backend, "backend"),
            recipe=_build(RecipeSettings, recipe, "recipe"),
            data=_data_settings(data),
            optimizer=_named(OptimizerSettings, optimizer, "optimizer"),
            trainer=_build(TrainerSettings, trainer, "trainer"),
            scheduler=_named(SchedulerSettings, _section(cfg, "scheduler"), "scheduler"),
            callbacks=_callback_specs(cfg.get("callbacks") or {}),
            logger=_build(
                LoggerSettings,
                logger,
                "logger",
                loggers=loggers,
                targets=targets,
                mlflow=_mlflow(logger.get("mlflow"), str(recipe.get("name"))),
            ),
            checkpoint=_build(CheckpointSettings, checkpoint, "checkpoint"),
            run_dir=Path(run_dir),
            config_yaml=config_yaml,
            parity=_build(ParitySettings, _section(cfg, "parity"), "parity"),
            export=_build(ExportSettings, _section(cfg, "export"), "export"),
            profile=_build(ProfileSettings, _section(cfg, "profile"), "profile"),
            lr_find=_build(LrFindSettings, _section(cfg, "lr_find"), "lr_find"),
        )
        _check_rules(settings)
        return settings


# -- building the settings -----------------------------------------------------------------------


def _check(f: Field[Any], values: Mapping[str, Any], section: str) -> Any:
    """The checked value of config key `f.name` of section `section` ("" for the top level); a
    key the section lacks has the field's default."""
    label = f.metadata["label"] or (f"{section}.{f.name}" if section else f.name)
    return f.metadata["check"](values.get(f.name, _default(f)), label)


def _checked(cls: type, values: Mapping[str, Any], section: str, skip: Any = ()) -> dict[str, Any]:
    """The checked values of the config keys among `cls`'s fields, but those in `skip`."""
    return {
        f.name: _check(f, values, section)
        for f in fields(cls)
        if "check" in f.metadata and f.name not in skip
    }


def _check_field(cls: type, name: str, values: Mapping[str, Any], section: str) -> Any:
    return _check(next(f for f in fields(cls) if f.name == name), values, section)


def _build(cls: type[_T], values: Mapping[str, Any], section: str, **given: Any) -> _T:
    """`cls` from config section `section`: the fields in `given` as given, the others checked."""
    return cls(**_checked(cls, values, section, skip=given), **given)


def _default(f: Field[Any]) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return None  # required: the check says that None is not a value


def _named(cls: type[_T], values: Mapping[str, Any], section: str) -> _T:
    """A section chosen by name from a config group (optimizer=..., scheduler=...): its keys are
    checked against that option's (for an optimizer, the Keras class's arguments), and the keys
    that are not fields are the `params` passed on."""
    name = _check_field(cls, "name", values, section)
    check_keys(section, values, f"{section}={name}", name if section == "optimizer" else None)
    own = _field_names(cls)
    given: dict[str, Any] = {"name": name}
    if "params" in own:
        given["params"] = {k: v for k, v in values.items() if k not in own}
    return _build(cls, values, section, **given)


def _field_names(cls: type) -> set[str]:
    return {f.name for f in fields(cls)}


def _data_settings(data: Mapping[str, Any]) -> DataSettings:
    source = _check_field(DataSettings, "source", data, "data")
    check_section(data, "data", _source_keys(source))
    return _build(
        DataSettings,
        data,
        "data",
        source=source,
        params={k: v for k, v in data.items() if k not in DATA_LOADER_KEYS},
    )


def _source_keys(source: str) -> Mapping[str, Check]:
    """The checks a data source declares for its own config keys: the `CONFIG_KEYS` table of a
    source module that ships with dualtrain (`dualtrain.data.*`), imported here (no framework);
    a module of the user's is not imported before the run."""
    module, _, function = source.partition(":")
    if not module.startswith("dualtrain.data."):
        return {}
    table = getattr(importlib.import_module(module), "CONFIG_KEYS", {})
    checks: Mapping[str, Check] = table.get(function, {})
    return checks


def _check_rules(s: Settings) -> None:
    """The rules between keys, each stated once."""
    if s.mode in ("eval", "export") and s.checkpoint.path is None:
        raise ConfigError(
            f"mode={s.mode} needs checkpoint.path=<run directory or checkpoint directory>"
        )
    if s.mode == "export" and not s.export.formats:
        raise ConfigError(
            "mode=export needs export.formats, e.g. export.formats=[saved_model,tflite,onnx,torch]"
        )
    if s.mode == "parity" and not s.parity.worker and (s.checkpoint.path or s.checkpoint.init_from):
        raise ConfigError(
            "mode=parity builds its own initial weights and gives them to both backends; "
            "drop checkpoint.path and init_from"
        )
    _check_lr_find_rules(s)
    if s.checkpoint.path and s.checkpoint.init_from:
        raise ConfigError(
            "checkpoint.path (resume everything) and init_from (weights only) exclude each other"
        )
    if s.trainer.ema is not None and s.optimizer.params.get("use_ema"):
        raise ConfigError(
            "trainer.ema and optimizer.use_ema both average the weights; keep trainer.ema (its "
            "average is checkpointed, validated and exported) and drop optimizer.use_ema"
        )
    backend = s.backend
    strategies = STRATEGIES[backend.name]
    if backend.strategy not in strategies:
        hint = (
            "; torch runs distributed when launched with torchrun "
            "(torchrun --nproc_per_node=N -m dualtrain backend=torch)"
            if backend.name == "torch"
            else ""
        )
        raise ConfigError(
            f"backend.strategy must be one of {', '.join(strategies)} for backend={backend.name}; "
            f"got {backend.strategy!r}{hint}"
        )
    if backend.cpu_replicas > 1 and backend.strategy != "mirrored":
        raise ConfigError(
            f"backend.cpu_replicas={backend.cpu_replicas} needs backend.strategy=mirrored (one "
            "replica per logical CPU device); set it back to 1"
        )
    # With several steps per call, what happens every N steps must fall on a call's end.
    per_call = backend.steps_per_execution
    for label, every in (
        ("trainer.log_every_n_steps", s.trainer.log_every_n_steps),
        ("checkpoint.every_n_steps", s.checkpoint.every_n_steps),
        ("logger.histograms_every", s.logger.histograms_every),
    ):
        if every % per_call:
            raise ConfigError(
                f"{label}={every} must be a multiple of backend.steps_per_execution={per_call}: "
                "values are read and saved only between calls"
            )
    if s.trainer.grad_clip_norm is not None and s.trainer.grad_clip_value is not None:
        raise ConfigError(
            "trainer.grad_clip_norm and trainer.grad_clip_value exclude each other; set one"
        )
    if s.logger.histograms_every and "tensorboard" not in s.logger.loggers:
        raise ConfigError(
            "logger.histograms_every needs the tensorboard logger; choose it too, e.g. "
            "logger=[jsonl,console,tensorboard]"
        )


def _check_lr_find_rules(s: Settings) -> None:
    finds = s.mode == "lr_find" or (s.optimizer.lr == "auto" and s.mode == "train")
    if s.lr_find.min_lr >= s.lr_find.max_lr:
        raise ConfigError(
            f"lr_find.min_lr={s.lr_find.min_lr:g} must be below lr_find.max_lr={s.lr_find.max_lr:g}"
        )
    if s.mode == "parity" and s.optimizer.lr == "auto":
        raise ConfigError(
            "mode=parity compares both backends at one learning rate, and optimizer.lr=auto would "
            "find one per backend; find it with mode=lr_find and set optimizer.lr=<suggestion>"
        )
    if finds and (s.checkpoint.path or s.checkpoint.resume):
        what = "mode=lr_find" if s.mode == "lr_find" else "optimizer.lr=auto"
        raise ConfigError(
            f"{what} starts from fresh (or init_from) weights, not from checkpoint.path or "
            "checkpoint.resume; to continue a run, set optimizer.lr to the rate it trained with"
        )
    if finds and s.backend.strategy != "none":
        raise ConfigError(
            "the learning-rate finder runs in one process; drop backend.strategy, or find the "
            "rate with mode=lr_find first and set optimizer.lr=<suggestion>"
        )


def _callback_specs(callbacks: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(callbacks, Mapping):
        raise ConfigError(
            f"callbacks must be a mapping of name: {{_target_: ...}}; got {callbacks!r}"
        )
    specs = {}
    for name, spec in callbacks.items():
        if not isinstance(spec, Mapping) or not isinstance(spec.get("_target_"), str):
            raise ConfigError(
                f"callbacks.{name} must have _target_: <package.module.Class>; got {spec!r}"
            )
        specs[str(name)] = dict(spec)
    return specs


def _mlflow(values: Any, recipe: str) -> MlflowSettings:
    """logger.mlflow's keys (absent or `true`: the defaults); the experiment defaults to the
    recipe's name."""
    values = values if isinstance(values, Mapping) else {}
    known = [f.name for f in fields(MlflowSettings)]
    for name in values:
        if name not in known:
            raise ConfigError(f"logger.mlflow has no key {name}; its keys: {', '.join(known)}")
    settings = _build(MlflowSettings, values, "logger.mlflow")
    return settings if settings.experiment else dataclasses.replace(settings, experiment=recipe)


def _section(cfg: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = cfg.get(key)
    if not isinstance(value, Mapping):
        raise ConfigError(f"the config has no '{key}' section; choose one with {key}=<option>")
    return value


def _number(value: Any) -> float | None:
    """A real number from YAML (bools and strings are not numbers), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _check_importable(module: str, label: str) -> None:
    """Fails early, without importing it, when a configured module cannot be found."""
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise ConfigError(
            f"{label}: cannot find the Python module {module!r}; put it next to your recipe YAML "
            "in the --config-dir directory, or make it importable"
        )


# -- the keys each section has, and the defaults as one config ----------------------------------

# Config sections that become a dataclass: (the dataclass, its fields that are not keys of the
# section, the section's keys that are not fields). The fields are the one list of allowed keys.
# Sections not here pass their other keys on and are checked where they are used: data (to the
# source function), recipe.model (to build_model), callbacks.<name> (to the callback's class),
# hydra (Hydra's own).
_SECTIONS: dict[str, tuple[type, tuple[str, ...], tuple[str, ...]]] = {
    # The composed config holds Hydra's own section only when composed with it.
    "": (Settings, ("run_dir", "config_yaml"), ("init_from", "hydra")),
    "backend": (BackendSettings, (), ()),
    "recipe": (RecipeSettings, (), ()),
    "optimizer": (OptimizerSettings, ("params",), ()),
    "scheduler": (SchedulerSettings, (), ()),
    "trainer": (TrainerSettings, (), ()),
    "logger": (LoggerSettings, ("loggers", "targets"), LOGGERS),
    "checkpoint": (CheckpointSettings, ("init_from",), ()),
    "parity": (ParitySettings, (), ()),
    "export": (ExportSettings, (), ()),
    "profile": (ProfileSettings, (), ()),
    "lr_find": (LrFindSettings, (), ()),
}


def section_keys(section: str, optimizer: str | None = None) -> tuple[str, ...] | None:
    """The keys config section `section` ("" for the top level) may have, sorted; None where its
    keys are free-form. The optimizer section's depend on the optimizer (None: any of them)."""
    if section not in _SECTIONS:
        return None
    cls, not_keys, extra = _SECTIONS[section]
    keys = {f.name for f in fields(cls)} - set(not_keys) | set(extra)
    if section == "optimizer":
        chosen = [optimizer] if optimizer in OPTIMIZER_KWARGS else list(OPTIMIZER_KWARGS)
        keys |= {k for name in chosen for k in OPTIMIZER_KWARGS[str(name)]}
    return tuple(sorted(keys))


def config_defaults() -> dict[str, Any]:
    """Every key that has a default, with it, as the composed config holds it: the first config
    that train.yaml composes (stored in Hydra's ConfigStore by dualtrain/configs/__init__.py), so
    that a group option or recipe sets only what it changes and `--cfg job` still shows all."""
    config = _defaults_of(Settings)
    for section, cls in (
        ("backend", BackendSettings),
        ("recipe", RecipeSettings),
        ("data", DataSettings),
        ("optimizer", OptimizerSettings),
        ("scheduler", SchedulerSettings),
        ("trainer", TrainerSettings),
        ("logger", LoggerSettings),
        ("checkpoint", CheckpointSettings),
    ):
        config[section] = _defaults_of(cls, section_keys(section))
    config["init_from"] = _defaults_of(CheckpointSettings)["init_from"]
    config["parity"] = _defaults_of(ParitySettings)
    config["export"] = _defaults_of(ExportSettings)
    config["profile"] = _defaults_of(ProfileSettings)
    config["lr_find"] = _defaults_of(LrFindSettings)
    return config


def _defaults_of(cls: type, keys: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The defaults of `cls`'s config keys (those among `keys`, where given); a key without one
    is ??? (Hydra's "must be set"), which the option chosen sets."""
    shown = {}
    for f in fields(cls):
        if "check" not in f.metadata or (keys is not None and f.name not in keys):
            continue
        value = f.metadata["shown"]
        if f.default is MISSING and f.default_factory is MISSING:
            value = "???"
        elif value is MISSING:
            value = _default(f)
        shown[f.name] = list(value) if isinstance(value, tuple) else value
    return shown


def unknown_key_error(
    key: str, label: str = "", optimizer: str | None = None
) -> ConfigError | None:
    """The error for dotted config key `key` if no section takes it, else None (a known key, or
    one of a free-form section). `label` names the section in the message."""
    section, _, name = key.partition(".")
    if not name:
        section, name = "", key
    name = name.split(".")[0]
    if section and section not in (section_keys("") or ()):
        section, name = "", section  # foo.bar where the config has no foo
    known = section_keys(section, optimizer)
    if known is None or name in known:
        return None
    if section == "optimizer" and name in OPTIMIZER_KWARGS_SET_BY:
        return ConfigError(
            f"optimizer.{name} is set from {OPTIMIZER_KWARGS_SET_BY[name]}; set that instead"
        )
    label = label or section or "the config"
    prefix = f"{section}." if section else ""
    message = f"{label} has no key {name}; its keys: {', '.join(known)}"
    scores = {k: _likeness(name, k) for k in known}
    near = sorted((k for k, score in scores.items() if score >= 0.6), key=lambda k: -scores[k])
    near = [k for k in near if scores[k] > scores[near[0]] - 0.05]  # ties: beta_1 or beta_2
    if near:
        message += f"; did you mean {' or '.join(prefix + k for k in near[:2])}?"
    return ConfigError(message)


def _likeness(given: str, key: str) -> float:
    """How near a misspelt key is to a real one, 0 to 1: compared without case and separators
    (max_epoch, maxEpochs and max-epochs are near max_epochs); swapped letters (modle) and a
    shortened name (jit for jit_compile) count as very near."""
    given, key = (s.lower().replace("_", "").replace("-", "") for s in (given, key))
    if sorted(given) == sorted(key):
        return 1.0
    if len(given) >= 3 and key.startswith(given):
        return 0.9
    return difflib.SequenceMatcher(None, given, key).ratio()


def check_keys(
    section: str, cfg: Mapping[str, Any], label: str = "", optimizer: str | None = None
) -> None:
    """Rejects the first key of `cfg`, config section `section`, that the section does not have:
    a misspelt key added with +key=value would otherwise be ignored without a word."""
    for key in cfg:
        error = unknown_key_error(f"{section}.{key}" if section else str(key), label, optimizer)
        if error is not None:
            raise error
