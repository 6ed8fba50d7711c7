"""Training state: everything a step reads and updates, the same on both backends.

`TrainingState` is built completely when it is constructed: the recipe's model (seeded, named as
a new process would name it), its phases, one optimizer per phase with its learning-rate schedule,
the loss trackers and the recipe's metrics, and the step counters. It knows nothing of a
framework beyond Keras; the engines (engines/torch.py, engines/tensorflow.py) run steps on it.
Checkpoints read and restore it by variable path.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

import keras
import numpy as np

from dualtrain import compat
from dualtrain.data import DataSplits
from dualtrain.errors import ConfigError, RunError
from dualtrain.plan import planned_steps
from dualtrain.recipe import Phase, Recipe
from dualtrain.settings import OptimizerSettings, SchedulerSettings, Settings, TrainerSettings

_OPTIMIZERS = {"adam": "Adam", "adamw": "AdamW", "sgd": "SGD"}


class TrainingState:
    """The model, phases, optimizers, metrics and counters of one run.

    Build it after the framework's RNG is seeded: the model's initializers draw from it.
    """

    def __init__(self, settings: Settings, recipe: Recipe, data: DataSplits) -> None:
        # Mixed precision: layers compute in float16 or bfloat16, variables stay float32. Set for
        # every build: Keras keeps the policy per process.
        keras.config.set_dtype_policy(settings.backend.precision)
        with fresh_layer_names():
            self.model: keras.Model = recipe.build_model(data.info)
        _check_model(self.model, recipe, data)
        self.augmentation = _make_augmentation(settings, data)
        # mode=parity compares the backends step by step; their random numbers come from different
        # generators, so the layers that draw them in training are switched off and reported.
        self.made_deterministic: list[dict[str, Any]] = []
        self.stochastic_layers: list[str] = []
        if settings.mode == "parity":
            self.made_deterministic, self.stochastic_layers = make_deterministic(self.model)
        # The training step is a sequence of phases, each with its loss, variables and optimizer;
        # a plain recipe has one: its loss on all trainable variables.
        self.phases: list[Phase] = recipe.phases(self.model)
        self.supervised = not recipe.has_phases
        self.loss_fn = recipe.loss() if self.supervised else None
        self.metrics: list[keras.metrics.Metric] = recipe.metrics()
        self.train_loss = keras.metrics.Mean(name="loss")
        self.val_loss = keras.metrics.Mean(name="loss")
        # Per-phase means, logged as <phase>_loss when there are several phases.
        several = len(self.phases) > 1
        self.phase_train_losses = [
            keras.metrics.Mean(name=f"{p.name}_loss") for p in self.phases if several
        ]
        self.phase_val_losses = [
            keras.metrics.Mean(name=f"{p.name}_loss") for p in self.phases if several
        ]
        self.phase_variables = [
            list(p.variables(self.model) if p.variables else self.model.trainable_variables)
            for p in self.phases
        ]
        self.trainable_variables = list(self.model.trainable_variables)
        total_steps = planned_steps(settings.trainer, len(data.train), settings.data.batch_size)
        self.optimizers = [
            make_optimizer(
                _phase_optimizer(settings.optimizer, phase.optimizer),
                settings.trainer,
                settings.scheduler,
                total_steps,
                name=f"{phase.name}_optimizer" if several else None,
            )
            for phase in self.phases
        ]
        if settings.backend.precision == "mixed_float16":
            # float16 gradients underflow: scale the loss up, the gradients back down, and skip
            # (and lower the scale on) steps whose scaled gradients overflow. The same on both
            # backends: Keras's LossScaleOptimizer plays the part of torch's GradScaler.
            self.optimizers = [keras.optimizers.LossScaleOptimizer(o) for o in self.optimizers]
        for optimizer, variables in zip(self.optimizers, self.phase_variables, strict=True):
            optimizer.build(variables)
        self.optimizer = self.optimizers[0]  # its lr is the one logged
        # Steps whose loss was NaN or Inf: how many, and the first (a global step number). Kept on
        # the device and read with the logged values, so checking costs no extra sync on tf.
        # Under tf.distribute every replica computes the same values (its step reduces the loss
        # first), so the first replica's assignment stands for all.
        counter = {"dtype": "int64", "trainable": False, "aggregation": "only_first_replica"}
        self.steps_run = keras.Variable(0, name="steps_run", **counter)
        self.nonfinite = keras.Variable(0, name="nonfinite", **counter)
        self.first_nonfinite = keras.Variable(-1, name="first_nonfinite", **counter)

    # -- in the steps ----------------------------------------------------------------------------

    def record_nonfinite(self) -> None:
        """In the step, in place of the update: counts the step, and names it if it is the first."""
        self.nonfinite.assign(self.nonfinite.value + 1)
        self.first_nonfinite.assign(
            keras.ops.where(
                self.first_nonfinite.value < 0,
                self.steps_run.value + 1,
                self.first_nonfinite.value,
            )
        )

    def read_train_values(self) -> tuple[Any, Any, list[Any]]:
        """The mean train loss since the last read, the lr and the phases' mean losses, as
        tensors; resets the means."""
        values = (
            self.train_loss.result(),
            self.optimizer.learning_rate,
            [m.result() for m in self.phase_train_losses],
        )
        for metric in [self.train_loss, *self.phase_train_losses]:
            metric.reset_state()
        return values

    # -- between steps ---------------------------------------------------------------------------

    def start_at(self, step: int) -> None:
        """Sets the step counter the non-finite record names steps by (after a resume)."""
        self.steps_run.assign(step)

    def nonfinite_steps(self) -> tuple[int, int | None]:
        """How many steps this process skipped for a NaN or Inf loss, and the first of them."""
        first = int(keras.ops.convert_to_numpy(self.first_nonfinite.value))
        count = int(keras.ops.convert_to_numpy(self.nonfinite.value))
        return count, (first if first >= 0 else None)

    def optimizer_variables(self) -> list[Any]:
        return [v for optimizer in self.optimizers for v in optimizer.variables]

    def checkpoint_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Model and optimizer variables as NumPy arrays by Keras variable path."""
        return _arrays(self.model.variables), _arrays(self.optimizer_variables())

    def restore(
        self, model: dict[str, np.ndarray], optimizer: dict[str, np.ndarray] | None
    ) -> None:
        """Assigns saved arrays by variable path; `optimizer=None` restores the weights only.

        Raises:
            RunError: naming the variables that the checkpoint and this model do not share.
        """
        assign_variables(self.model.variables, model, "model")
        if optimizer is not None:
            assign_variables(self.optimizer_variables(), optimizer, "optimizer")


def _make_augmentation(settings: Settings, data: DataSplits) -> Any:
    """The data.augmentation layers (training batches only), or None. Off in parity runs: each
    backend draws its own random numbers."""
    from dualtrain.data.augmentation import make_augmentation

    if settings.mode == "parity":
        return None
    return make_augmentation(settings.data.augmentation, data.info.input_shape, settings.seed)


def _check_model(model: keras.Model, recipe: Recipe, data: DataSplits) -> None:
    info = data.info
    expected = (None, *info.input_shape)
    got = tuple(model.input_shape) if hasattr(model, "input_shape") else expected
    if tuple(got) != expected:
        raise RunError(
            f"recipe {recipe.name}: the model takes inputs of shape {got} but the data "
            f"has samples of shape {info.input_shape}; build the model for data.input_shape"
        )
    if _classifies(recipe) and info.num_classes < 2:
        raise RunError(
            f"recipe {recipe.name}: the labels hold {info.num_classes} class; a classifier needs "
            "at least two (check data.target, or the labels the data source returns)"
        )
    # A classifier's logits must cover every class the labels name.
    outputs = getattr(model, "outputs", None) or []
    out_shape = tuple(outputs[0].shape) if len(outputs) == 1 else ()
    if _classifies(recipe) and len(out_shape) == 2 and out_shape[1] != info.num_classes:
        raise RunError(
            f"recipe {recipe.name}: the model outputs {out_shape[1]} class scores but "
            f"the data has {info.num_classes} classes; build the last layer with "
            "data.num_classes units"
        )


def _classifies(recipe: Recipe) -> bool:
    """Whether the recipe's loss takes class indices (sparse categorical)."""
    if recipe.has_phases:
        return False
    return isinstance(recipe.loss(), keras.losses.SparseCategoricalCrossentropy)


def _phase_optimizer(settings: OptimizerSettings, options: dict[str, Any]) -> OptimizerSettings:
    """The `optimizer` config with a phase's own options over it."""
    options = dict(options)
    lr = float(options.pop("lr", settings.lr))
    return dataclasses.replace(settings, lr=lr, params={**settings.params, **options})


def make_optimizer(
    settings: OptimizerSettings,
    trainer: TrainerSettings,
    scheduler: SchedulerSettings,
    total_steps: int,
    name: str | None = None,
) -> keras.optimizers.Optimizer:
    """A Keras optimizer with its lr schedule and gradient clipping: the same update rule and
    state layout on both backends."""
    cls = getattr(keras.optimizers, _OPTIMIZERS[settings.name])
    clipping: dict[str, float] = {}
    if trainer.grad_clip_norm is not None:
        clipping["global_clipnorm"] = trainer.grad_clip_norm
    if trainer.grad_clip_value is not None:
        clipping["clipvalue"] = trainer.grad_clip_value
    naming = {"name": name} if name else {}
    try:
        return cls(
            learning_rate=learning_rate(settings.lr, scheduler, total_steps),
            **clipping,
            **naming,
            **settings.params,
        )
    except (TypeError, ValueError) as err:
        raise ConfigError(f"optimizer={settings.name}: {err}") from err


def learning_rate(lr: float, scheduler: SchedulerSettings, total_steps: int) -> Any:
    """`optimizer.lr` as the Keras schedule that `scheduler` names (a float when constant).

    Keras schedules count the optimizer's iterations, which are optimizer steps here: a step with
    accumulated gradients is one `apply` call.
    """
    schedules = keras.optimizers.schedules
    if scheduler.name == "step":
        return schedules.ExponentialDecay(
            lr, decay_steps=scheduler.step_size, decay_rate=scheduler.gamma, staircase=True
        )
    if scheduler.name == "cosine":
        return schedules.CosineDecay(
            lr, decay_steps=scheduler.decay_steps or max(1, total_steps), alpha=scheduler.alpha
        )
    if scheduler.name == "warmup_cosine":
        warmup = scheduler.warmup_steps
        return schedules.CosineDecay(
            0.0,
            decay_steps=scheduler.decay_steps or max(1, total_steps - warmup),
            alpha=scheduler.alpha,
            warmup_target=lr,
            warmup_steps=warmup,
        )
    return lr


# The attribute that sets how much noise a layer adds in training: Dropout, SpatialDropout*,
# GaussianDropout and AlphaDropout (`rate`), Attention (`dropout`), GaussianNoise (`stddev`).
_NOISE_ATTRIBUTES = ("rate", "dropout", "stddev")


def make_deterministic(model: keras.Model) -> tuple[list[dict[str, Any]], list[str]]:
    """Sets the noise of every layer that draws random numbers in training to zero.

    Returns what was changed (layer, class, attribute, old value) and the random layers it could
    not switch off (augmentation layers, a recipe's own), which will keep the backends apart.
    """
    changed: list[dict[str, Any]] = []
    left: list[str] = []
    for layer in compat.sublayers(model):
        if not compat.seed_generators(layer):
            continue  # draws no random numbers
        attribute = next(
            (a for a in _NOISE_ATTRIBUTES if type(getattr(layer, a, None)) in (int, float)), None
        )
        if attribute is None:
            left.append(f"{layer.name} ({type(layer).__name__})")
            continue
        value = getattr(layer, attribute)
        if value:
            setattr(layer, attribute, 0.0)
            changed.append(
                {"layer": layer.name, "class": type(layer).__name__, attribute: float(value)}
            )
    return changed, left


@contextlib.contextmanager
def fresh_layer_names() -> Iterator[None]:
    """Builds a model with the layer names a new process would give it.

    Checkpoints name variables by path (`conv2d_1/kernel`), and Keras numbers auto-named layers
    per process: a model built after another one (a second run in a notebook, a GAN's judge)
    would get other numbers and not fit its checkpoints. Keras keeps the counters in its global
    state with no public way to set them aside; compat swaps them out for the build.
    """
    with compat.fresh_object_names():
        yield


def _arrays(variables: list[Any]) -> dict[str, np.ndarray]:
    return {v.path: keras.ops.convert_to_numpy(v.value) for v in variables}


def assign_variables(variables: list[Any], arrays: dict[str, np.ndarray], what: str) -> None:
    by_path = {v.path: v for v in variables}
    missing = sorted(set(by_path) - set(arrays))
    unexpected = sorted(set(arrays) - set(by_path))
    if missing or unexpected:
        raise RunError(
            f"the checkpoint does not fit this {what}: variables missing from it {missing[:6]}, "
            f"variables it has that the {what} lacks {unexpected[:6]}; use a checkpoint of the "
            "same recipe and config"
        )
    for path, variable in by_path.items():
        if tuple(variable.shape) != arrays[path].shape:
            raise RunError(
                f"the checkpoint's {what} variable {path} has shape {arrays[path].shape}; this "
                f"{what} expects {tuple(variable.shape)}"
            )
    for path in by_path:
        value = arrays[path]
        if np.issubdtype(value.dtype, np.inexact) and not np.isfinite(value).all():
            # Training from such weights makes every loss NaN, and no learning rate or clipping
            # mends them: the fault is in the file, not in the run's settings.
            bad = int(value.size - np.isfinite(value).sum())
            raise RunError(
                f"the checkpoint's {what} variable {path} holds NaN or Inf values ({bad} of "
                f"{value.size}): the checkpoint itself is bad; use an earlier checkpoint of the "
                "run (a checkpoints/step-N directory) with checkpoint.path or init_from"
            )
    for path, variable in by_path.items():
        variable.assign(arrays[path])


def number(value: Any) -> float:
    return float(keras.ops.convert_to_numpy(value))
