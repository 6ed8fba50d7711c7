"""Typed run settings built from the composed config; every validation message lives here.

Only `cli` sees Hydra. It hands the composed config to `Settings.from_config` as a plain dict, and
everything below works with these frozen dataclasses.
"""

from __future__ import annotations

import difflib
import importlib.util
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from dualtrain.errors import ConfigError

BACKENDS = ("torch", "tf")
MODES = ("train", "eval", "export", "parity")
JIT_CHOICES = ("auto", "true", "false")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("constant", "step", "cosine", "warmup_cosine")
ON_NONFINITE = ("stop", "skip")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
# tf.distribute strategies; for torch, torchrun's environment makes a run distributed.
STRATEGIES = {"tf": ("none", "mirrored", "multi_worker"), "torch": ("none",)}
LOGGERS = ("jsonl", "csv", "console", "tensorboard")  # the options of configs/logger/
EXPORT_FORMATS = ("saved_model", "tflite", "onnx", "torch")
TFLITE_QUANTIZE = ("none", "dynamic", "float16")
# Keys of a data config that the loader uses itself; all other keys go to the data source function.
# (`num_classes`, where set, is also the number of classes the labels are checked against.)
DATA_LOADER_KEYS = ("source", "batch_size", "val_fraction", "num_workers", "augmentation")
ON_BAD_FILE = ("error", "skip")
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


@dataclass(frozen=True)
class BackendSettings:
    name: str
    jit_compile: str  # "auto" | "true" | "false"
    steps_per_execution: int = 1  # optimizer steps per compiled call (tf; torch runs them eagerly)
    precision: str = "float32"  # float32 | mixed_float16 | mixed_bfloat16 (Keras dtype policies)
    strategy: str = "none"  # tf: none | mirrored | multi_worker; torch: none (torchrun decides)
    collective_timeout_s: float = 300.0  # a collective waiting longer on a rank fails the run
    cpu_replicas: int = 1  # tf mirrored on a CPU: this many logical CPU devices, one replica each
    capture_forward: bool = True  # torch: run the forward pass and loss as a captured ATen graph
    keep_host_memory: bool = True  # torch on glibc: freed host memory stays for the next step


@dataclass(frozen=True)
class RecipeSettings:
    name: str
    module: str
    model: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DataSettings:
    source: str  # "package.module:function"
    batch_size: int
    val_fraction: float
    num_workers: int
    params: dict[str, Any] = field(default_factory=dict)  # keyword arguments of the source
    augmentation: dict[str, Any] = field(default_factory=dict)  # AUGMENTATIONS key -> its factor


@dataclass(frozen=True)
class OptimizerSettings:
    name: str
    lr: float
    params: dict[str, Any] = field(default_factory=dict)  # other keyword arguments of the optimizer


@dataclass(frozen=True)
class SchedulerSettings:
    """How the learning rate moves from `optimizer.lr`, counted in optimizer steps."""

    name: str = "constant"  # constant | step | cosine | warmup_cosine
    step_size: int = 1000  # step: multiply the lr by `gamma` every `step_size` steps
    gamma: float = 0.1
    warmup_steps: int = 0  # warmup_cosine: linear from 0 to lr over these steps
    decay_steps: int | None = None  # cosine, warmup_cosine: null = the rest of the run
    alpha: float = 0.0  # cosine floor, as a fraction of lr


@dataclass(frozen=True)
class TrainerSettings:
    max_epochs: int
    max_steps: int  # -1: no limit
    log_every_n_steps: int
    grad_accum_steps: int = 1  # batches whose summed gradients make one optimizer step
    grad_clip_norm: float | None = None  # clip the gradients' global norm
    grad_clip_value: float | None = None  # clip each gradient element to [-v, v]
    on_nonfinite: str = "stop"  # stop | skip: a step whose loss is NaN or Inf
    limit_train_batches: int | float = 1.0  # per epoch: a count (int) or a share (float)
    limit_val_batches: int | float = 1.0  # per validation: a count (int) or a share (float)
    overfit_batches: int = 0  # > 0: the same first N batches every epoch (debug=overfit)
    fast_dev_run: bool = False  # write nothing: no checkpoints, logs or summary (debug=...)


@dataclass(frozen=True)
class LoggerSettings:
    loggers: tuple[str, ...]  # the options chosen from configs/logger/, e.g. ("jsonl", "console")
    progress: bool = True  # console: tqdm bars on a terminal
    histograms_every: int = 0  # tensorboard: weight and gradient histograms every N steps (0: off)


@dataclass(frozen=True)
class CheckpointSettings:
    every_n_epochs: int  # 0: never at epoch ends
    every_n_steps: int  # 0: never mid-epoch
    monitor: str  # "val/<name>" or "train/<name>", ranks checkpoints for save_top_k
    mode: str  # min | max
    save_top_k: int  # the best k kept (-1: all, 0: none)
    save_last: bool  # `last` link to the newest; the newest two are kept
    resume: bool  # checkpoint.resume=auto: continue from the run directory's newest checkpoint
    path: str | None  # resume from this checkpoint or run directory
    init_from: str | None  # warm-start: the weights of this checkpoint only


@dataclass(frozen=True)
class ParitySettings:
    steps: int  # optimizer steps trained on each backend
    rtol: float  # the largest relative difference of per-step losses that passes
    worker: bool = False  # set by parity mode for the one-backend runs it starts


@dataclass(frozen=True)
class ExportSettings:
    formats: tuple[str, ...]  # of EXPORT_FORMATS; written by mode=export or at the end of training
    tflite_quantize: str = "none"  # none | dynamic | float16
    worker: bool = False  # set by export for the one-backend processes it starts


@dataclass(frozen=True)
class Settings:
    mode: str
    seed: int
    backend: BackendSettings
    recipe: RecipeSettings
    data: DataSettings
    optimizer: OptimizerSettings
    trainer: TrainerSettings
    logger: LoggerSettings
    checkpoint: CheckpointSettings
    run_dir: Path
    config_yaml: str = ""  # the composed config, kept for checkpoints and logs
    parity: ParitySettings = field(default_factory=lambda: ParitySettings(100, 1e-5))
    scheduler: SchedulerSettings = field(default_factory=SchedulerSettings)
    # name -> {"_target_": "package.module.Class", **keyword arguments}
    callbacks: dict[str, dict[str, Any]] = field(default_factory=dict)
    export: ExportSettings = field(default_factory=lambda: ExportSettings(()))

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], run_dir: Path, config_yaml: str = "") -> Settings:
        """Validates a composed config (as a plain dict) and returns the settings.

        Raises:
            ConfigError: naming the first bad key, its value and what would be right.
        """
        check_keys("", cfg)
        mode = _choice(cfg, "mode", MODES)
        backend = _section(cfg, "backend")
        recipe = _section(cfg, "recipe")
        data = _section(cfg, "data")
        optimizer = _section(cfg, "optimizer")
        trainer = _section(cfg, "trainer")
        logger = _section(cfg, "logger")
        for name in ("backend", "recipe", "trainer", "logger", "checkpoint", "parity", "export"):
            check_keys(name, _section(cfg, name))

        jit = backend.get("jit_compile", "auto")
        jit = {True: "true", False: "false"}.get(jit, jit) if isinstance(jit, bool) else jit
        if jit not in JIT_CHOICES:
            raise ConfigError(f"backend.jit_compile must be one of auto, true, false; got {jit!r}")
        source = _text(data, "data.source")
        _check_importable(source.split(":")[0], "data.source")
        recipe_module = _text(recipe, "recipe.module")
        _check_importable(recipe_module, "recipe.module")
        model = recipe.get("model") or {}
        if not isinstance(model, Mapping):
            raise ConfigError(f"recipe.model must be a mapping of keyword arguments; got {model!r}")

        checkpoint = _checkpoint_settings(_section(cfg, "checkpoint"), cfg.get("init_from"))
        if mode in ("eval", "export") and checkpoint.path is None:
            raise ConfigError(
                f"mode={mode} needs checkpoint.path=<run directory or checkpoint directory>"
            )
        export = _export_settings(_section(cfg, "export"))
        if mode == "export" and not export.formats:
            raise ConfigError(
                "mode=export needs export.formats, e.g. "
                "export.formats=[saved_model,tflite,onnx,torch]"
            )
        parity = _parity_settings(_section(cfg, "parity"))
        if mode == "parity" and not parity.worker and (checkpoint.path or checkpoint.init_from):
            raise ConfigError(
                "mode=parity builds its own initial weights and gives them to both backends; "
                "drop checkpoint.path and init_from"
            )
        max_steps = _integer(trainer, "max_steps", "trainer.max_steps", minimum=-1)
        if max_steps == 0:
            raise ConfigError(
                "trainer.max_steps must be -1 (no limit) or a positive integer; got 0"
            )
        steps_per_execution = _integer(
            {"v": backend.get("steps_per_execution", 1)}, "v", "backend.steps_per_execution", 1
        )
        _check_multiples(steps_per_execution, trainer, cfg.get("checkpoint") or {}, logger)
        return cls(
            mode=mode,
            seed=_integer(cfg, "seed", "seed", minimum=0),
            backend=BackendSettings(
                name=_choice(backend, "name", BACKENDS, "backend"),
                jit_compile=jit,
                steps_per_execution=steps_per_execution,
                precision=_choice(
                    {"v": backend.get("precision", "float32")}, "v", PRECISIONS, "backend.precision"
                ),
                **_distribution(backend),
                capture_forward=_boolean(
                    {"v": backend.get("capture_forward", True)}, "v", "backend.capture_forward"
                ),
                keep_host_memory=_boolean(
                    {"v": backend.get("keep_host_memory", True)}, "v", "backend.keep_host_memory"
                ),
            ),
            recipe=RecipeSettings(
                name=_text(recipe, "recipe.name"), module=recipe_module, model=dict(model)
            ),
            data=_data_settings(data, source),
            optimizer=_optimizer_settings(optimizer),
            trainer=_trainer_settings(trainer, max_steps),
            scheduler=_scheduler_settings(_section(cfg, "scheduler")),
            callbacks=_callback_specs(cfg.get("callbacks") or {}),
            logger=_logger_settings(logger),
            checkpoint=checkpoint,
            run_dir=Path(run_dir),
            config_yaml=config_yaml,
            parity=parity,
            export=export,
        )


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
    "logger": (LoggerSettings, ("loggers",), LOGGERS),
    "checkpoint": (CheckpointSettings, ("init_from",), ()),
    "parity": (ParitySettings, (), ()),
    "export": (ExportSettings, (), ()),
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


def _optimizer_settings(optimizer: Mapping[str, Any]) -> OptimizerSettings:
    name = _choice(optimizer, "name", OPTIMIZERS, "optimizer")
    check_keys("optimizer", optimizer, f"optimizer={name}", name)
    return OptimizerSettings(
        name=name,
        lr=_positive_float(optimizer, "lr", "optimizer.lr"),
        params={k: v for k, v in optimizer.items() if k not in ("name", "lr")},
    )


def _distribution(backend: Mapping[str, Any]) -> dict[str, Any]:
    """backend.strategy, backend.collective_timeout_s and backend.cpu_replicas, checked."""
    name = backend.get("name")
    choices = STRATEGIES.get(str(name), ("none",))
    strategy = backend.get("strategy", "none")
    if strategy not in choices:
        hint = (
            "; torch runs distributed when launched with torchrun "
            "(torchrun --nproc_per_node=N -m dualtrain backend=torch)"
            if name == "torch"
            else ""
        )
        raise ConfigError(
            f"backend.strategy must be one of {', '.join(choices)} for backend={name}; "
            f"got {strategy!r}{hint}"
        )
    timeout = _positive_float(
        {"v": backend.get("collective_timeout_s", 300.0)}, "v", "backend.collective_timeout_s"
    )
    replicas = _integer(
        {"v": backend.get("cpu_replicas", 1)}, "v", "backend.cpu_replicas", minimum=1
    )
    if replicas > 1 and strategy != "mirrored":
        raise ConfigError(
            f"backend.cpu_replicas={replicas} needs backend.strategy=mirrored (one replica per "
            "logical CPU device); set it back to 1"
        )
    return {"strategy": strategy, "collective_timeout_s": timeout, "cpu_replicas": replicas}


def _data_settings(data: Mapping[str, Any], source: str) -> DataSettings:
    if data.get("num_classes") is not None:
        _integer(data, "num_classes", "data.num_classes", minimum=2)
    for key in ("path", "val_path"):
        value = data.get(key)
        if key in data and value is None and key == "path":
            raise ConfigError("data.path has no value; set it with data.path=<file or folder>")
        if value is not None and (not isinstance(value, str) or not Path(value).exists()):
            raise ConfigError(
                f"data.{key}={value} does not exist; give the path of an existing file or folder"
            )
    if "on_bad_file" in data:
        _choice(data, "on_bad_file", ON_BAD_FILE, "data.on_bad_file")
    if "image_size" in data:
        size = data.get("image_size")
        if not (
            isinstance(size, list)
            and len(size) == 2
            and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)
        ):
            raise ConfigError(
                f"data.image_size must be [height, width] in pixels, e.g. [64,64]; got {size!r}"
            )
    return DataSettings(
        source=source,
        batch_size=_integer(data, "batch_size", "data.batch_size", minimum=1),
        val_fraction=_fraction(data, "val_fraction", "data.val_fraction"),
        num_workers=_integer(data, "num_workers", "data.num_workers", minimum=0),
        params={k: v for k, v in data.items() if k not in DATA_LOADER_KEYS},
        augmentation=_augmentation(data.get("augmentation")),
    )


def _augmentation(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    example = "e.g. data.augmentation={flip:horizontal,rotation:0.1,zoom:0.1}"
    if not isinstance(value, Mapping):
        raise ConfigError(f"data.augmentation must be a mapping, {example}; got {value!r}")
    chosen = {}
    for name, factor in value.items():
        if name not in AUGMENTATIONS:
            raise ConfigError(
                f"data.augmentation has no {name!r}; choose from {', '.join(AUGMENTATIONS)}, "
                + example
            )
        if factor is None or factor is False:
            continue  # switched off, e.g. data.augmentation.flip=null
        if name == "flip":
            _choice({"v": factor}, "v", FLIP_MODES, "data.augmentation.flip")
        else:
            number = _number(factor)
            if number is None or not 0 < number < 1:
                raise ConfigError(
                    f"data.augmentation.{name} must be a factor in (0, 1) such as 0.1; "
                    f"got {factor!r}"
                )
        chosen[str(name)] = factor
    return chosen


def _export_settings(export: Mapping[str, Any]) -> ExportSettings:
    formats = export.get("formats")
    if isinstance(formats, str):
        formats = [formats]
    if not isinstance(formats, list) or any(f not in EXPORT_FORMATS for f in formats):
        raise ConfigError(
            f"export.formats must be a list of {', '.join(EXPORT_FORMATS)}, e.g. "
            f"export.formats=[saved_model,onnx]; got {formats!r}"
        )
    return ExportSettings(
        formats=tuple(dict.fromkeys(formats)),
        tflite_quantize=_choice(
            export, "tflite_quantize", TFLITE_QUANTIZE, "export.tflite_quantize"
        ),
        worker=_boolean(export, "worker", "export.worker"),
    )


def _check_multiples(
    per_call: int,
    trainer: Mapping[str, Any],
    checkpoint: Mapping[str, Any],
    logger: Mapping[str, Any],
) -> None:
    """With several steps per call, what happens every N steps must fall on a call's end."""
    if per_call == 1:
        return
    for label, value in (
        ("trainer.log_every_n_steps", trainer.get("log_every_n_steps")),
        ("checkpoint.every_n_steps", checkpoint.get("every_n_steps")),
        ("logger.histograms_every", logger.get("histograms_every")),
    ):
        if isinstance(value, int) and value and value % per_call:
            raise ConfigError(
                f"{label}={value} must be a multiple of backend.steps_per_execution={per_call}: "
                "values are read and saved only between calls"
            )


def _trainer_settings(trainer: Mapping[str, Any], max_steps: int) -> TrainerSettings:
    clip_norm = _optional_positive(trainer, "grad_clip_norm", "trainer.grad_clip_norm")
    clip_value = _optional_positive(trainer, "grad_clip_value", "trainer.grad_clip_value")
    if clip_norm is not None and clip_value is not None:
        raise ConfigError(
            "trainer.grad_clip_norm and trainer.grad_clip_value exclude each other; set one"
        )
    limits = {}
    for key in ("limit_train_batches", "limit_val_batches"):
        limit = trainer.get(key, 1.0)
        if isinstance(limit, bool) or not (
            (isinstance(limit, int) and limit >= 1) or (isinstance(limit, float) and 0 < limit <= 1)
        ):
            raise ConfigError(
                f"trainer.{key} must be a number of batches (an integer >= 1) or a share of "
                f"them (a number in (0, 1], e.g. 0.25); got {limit!r}"
            )
        limits[key] = limit
    return TrainerSettings(
        max_epochs=_integer(trainer, "max_epochs", "trainer.max_epochs", minimum=1),
        max_steps=max_steps,
        log_every_n_steps=_integer(
            trainer, "log_every_n_steps", "trainer.log_every_n_steps", minimum=1
        ),
        grad_accum_steps=_integer(trainer, "grad_accum_steps", "trainer.grad_accum_steps", 1),
        grad_clip_norm=clip_norm,
        grad_clip_value=clip_value,
        on_nonfinite=_choice(trainer, "on_nonfinite", ON_NONFINITE, "trainer.on_nonfinite"),
        limit_train_batches=limits["limit_train_batches"],
        limit_val_batches=limits["limit_val_batches"],
        overfit_batches=_integer(
            {"v": trainer.get("overfit_batches", 0)}, "v", "trainer.overfit_batches", 0
        ),
        fast_dev_run=_boolean(
            {"v": trainer.get("fast_dev_run", False)}, "v", "trainer.fast_dev_run"
        ),
    )


def _scheduler_settings(scheduler: Mapping[str, Any]) -> SchedulerSettings:
    name = _choice(scheduler, "name", SCHEDULERS, "scheduler")
    check_keys("scheduler", scheduler, f"scheduler={name}")
    decay = scheduler.get("decay_steps")
    if decay is not None:
        _integer(scheduler, "decay_steps", "scheduler.decay_steps", minimum=1)
    gamma = _number(scheduler.get("gamma", 0.1))
    alpha = _number(scheduler.get("alpha", 0.0))
    if gamma is None or not 0 < gamma <= 1:
        raise ConfigError(
            f"scheduler.gamma must be a number in (0, 1]; got {scheduler.get('gamma')!r}"
        )
    if alpha is None or not 0 <= alpha <= 1:
        raise ConfigError(
            f"scheduler.alpha must be a number in [0, 1]; got {scheduler.get('alpha')!r}"
        )
    return SchedulerSettings(
        name=name,
        step_size=_integer({"v": scheduler.get("step_size", 1000)}, "v", "scheduler.step_size", 1),
        gamma=gamma,
        warmup_steps=_integer(
            {"v": scheduler.get("warmup_steps", 0)}, "v", "scheduler.warmup_steps", 0
        ),
        decay_steps=decay,
        alpha=alpha,
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


def _optional_positive(cfg: Mapping[str, Any], key: str, label: str) -> float | None:
    if cfg.get(key) is None:
        return None
    return _positive_float(cfg, key, label)


def _parity_settings(parity: Mapping[str, Any]) -> ParitySettings:
    rtol = _number(parity.get("rtol"))
    if rtol is None or not 0 <= rtol < 1:
        raise ConfigError(
            f"parity.rtol must be a number >= 0 and < 1 such as 1e-5; got {parity.get('rtol')!r}"
        )
    return ParitySettings(
        steps=_integer(parity, "steps", "parity.steps", minimum=1),
        rtol=rtol,
        worker=_boolean(parity, "worker", "parity.worker"),
    )


def _logger_settings(logger: Mapping[str, Any]) -> LoggerSettings:
    # Each option of the logger group sets `<name>: true`; several can be chosen at once.
    chosen = tuple(name for name in LOGGERS if logger.get(name) is True)
    histograms_every = _integer(logger, "histograms_every", "logger.histograms_every", minimum=0)
    if histograms_every and "tensorboard" not in chosen:
        raise ConfigError(
            "logger.histograms_every needs the tensorboard logger; choose it too, e.g. "
            "logger=[jsonl,console,tensorboard]"
        )
    return LoggerSettings(
        loggers=chosen,
        progress=_boolean(logger, "progress", "logger.progress"),
        histograms_every=histograms_every,
    )


def _checkpoint_settings(checkpoint: Mapping[str, Any], init_from: Any) -> CheckpointSettings:
    resume = checkpoint.get("resume")
    if resume not in (None, False, "auto"):
        raise ConfigError(f"checkpoint.resume must be auto or null; got {resume!r}")
    paths = {"checkpoint.path": checkpoint.get("path"), "init_from": init_from}
    for label, value in paths.items():
        if value is not None and (not isinstance(value, str) or not Path(value).exists()):
            raise ConfigError(
                f"{label}={value} does not exist; give a run directory or a checkpoint directory"
            )
    if paths["checkpoint.path"] and init_from:
        raise ConfigError(
            "checkpoint.path (resume everything) and init_from (weights only) exclude each other"
        )
    return CheckpointSettings(
        every_n_epochs=_integer(checkpoint, "every_n_epochs", "checkpoint.every_n_epochs", 0),
        every_n_steps=_integer(checkpoint, "every_n_steps", "checkpoint.every_n_steps", 0),
        monitor=_monitor(checkpoint.get("monitor")),
        mode=_choice(checkpoint, "mode", ("min", "max"), "checkpoint.mode"),
        save_top_k=_integer(checkpoint, "save_top_k", "checkpoint.save_top_k", -1),
        save_last=_boolean(checkpoint, "save_last", "checkpoint.save_last"),
        resume=resume == "auto",
        path=paths["checkpoint.path"],
        init_from=init_from,
    )


def _monitor(value: Any) -> str:
    if not isinstance(value, str) or value.partition("/")[0] not in ("val", "train"):
        raise ConfigError(
            f"checkpoint.monitor must name a logged value such as val/loss or val/accuracy; "
            f"got {value!r}"
        )
    return value


def _section(cfg: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = cfg.get(key)
    if not isinstance(value, Mapping):
        raise ConfigError(f"the config has no '{key}' section; choose one with {key}=<option>")
    return value


def _choice(cfg: Mapping[str, Any], key: str, choices: tuple[str, ...], label: str = "") -> str:
    value = cfg.get(key)
    if value not in choices:
        raise ConfigError(f"{label or key} must be one of {', '.join(choices)}; got {value!r}")
    return str(value)


def _text(cfg: Mapping[str, Any], label: str) -> str:
    value = cfg.get(label.split(".")[-1])
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{label} must be a non-empty string; got {value!r}")
    return value


def _integer(cfg: Mapping[str, Any], key: str, label: str, minimum: int) -> int:
    value = cfg.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ConfigError(f"{label} must be {kind}; got {value!r}")
    return value


def _positive_float(cfg: Mapping[str, Any], key: str, label: str) -> float:
    value = _number(cfg.get(key))
    if value is None or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{label} must be a positive number such as 0.001; got {cfg.get(key)!r}")
    return value


def _fraction(cfg: Mapping[str, Any], key: str, label: str) -> float:
    value = _number(cfg.get(key))
    if value is None or not 0 < value < 1:
        raise ConfigError(
            f"{label} must be a number between 0 and 1 such as 0.2; got {cfg.get(key)!r}"
        )
    return value


def _number(value: Any) -> float | None:
    """A real number from YAML (bools and strings are not numbers), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _boolean(cfg: Mapping[str, Any], key: str, label: str) -> bool:
    value = cfg.get(key)
    if not isinstance(value, bool):
        raise ConfigError(f"{label} must be true or false; got {value!r}")
    return value


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
