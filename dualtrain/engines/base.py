"""The engine interface that both backends implement, and the Keras-level work they share.

An engine owns the framework: it turns the backend-neutral data into framework batches, runs the
train and eval steps, and hands plain Python floats back to the loop. The two engines have the same
methods in the same order; each step does the same work in the same order:
forward, loss, gradients, optimizer update, loss tracking.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ClassVar

import keras
import numpy as np

from dualtrain import compat
from dualtrain.data import ArrayDataset, DataSplits
from dualtrain.errors import ConfigError, RunError
from dualtrain.loop import planned_steps
from dualtrain.recipe import Recipe
from dualtrain.settings import (
    OptimizerSettings,
    SchedulerSettings,
    Settings,
    TrainerSettings,
)

Batch = Any  # a (features, labels) pair of framework tensors

_OPTIMIZERS = {"adam": "Adam", "adamw": "AdamW", "sgd": "SGD"}


class Engine(ABC):
    """Runs one recipe on one backend. Subclasses: `TorchEngine`, `TensorFlowEngine`."""

    name: ClassVar[str]
    # Set by each backend's `_make_steps`.
    _train_fn: Callable[..., Any]
    _eval_fn: Callable[..., Any]
    _read_train_fn: Callable[[], tuple[Any, Any, list[Any]]]

    def __init__(self, settings: Settings, recipe: Recipe, data: DataSplits) -> None:
        self.settings = settings
        self.recipe = recipe
        self.data = data
        self.jit_compile = self._resolve_jit(settings.backend.jit_compile)
        # Steps hand their gradients back only when histograms want them.
        self._keep_gradients = settings.logger.histograms_every > 0
        self._last_gradients: dict[str, Any] | None = None  # variable path -> gradient

    # -- set-up ----------------------------------------------------------------------------------

    def setup(self) -> None:
        """Seeds every RNG, builds model, loss, metrics and optimizer, then the compiled steps."""
        seed = self.settings.seed
        # Keras draws its default initializer seeds from Python's `random`; NumPy for completeness.
        # (keras.utils.set_random_seed would import TensorFlow on the torch backend.)
        random.seed(seed)
        np.random.seed(seed)
        self._seed_framework(seed)
        # Mixed precision: layers compute in float16 or bfloat16, variables stay float32. Set for
        # every build: Keras keeps the policy per process.
        keras.config.set_dtype_policy(self.settings.backend.precision)
        with fresh_layer_names():
            self.model = self.recipe.build_model(self.data.info)
        self._check_model()
        self.augmentation = self._make_augmentation()
        # mode=parity compares the backends step by step; their random numbers come from different
        # generators, so the layers that draw them in training are switched off and reported.
        self.made_deterministic: list[dict[str, Any]] = []
        self.stochastic_layers: list[str] = []
        if self.settings.mode == "parity":
            self.made_deterministic, self.stochastic_layers = make_deterministic(self.model)
        # The training step is a sequence of phases, each with its loss, variables and optimizer;
        # a plain recipe has one: its loss on all trainable variables.
        self.phases = self.recipe.phases(self.model)
        self._supervised = not self.recipe.has_phases
        self.loss_fn = self.recipe.loss() if self._supervised else None
        self.metrics = self.recipe.metrics()
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
        total_steps = planned_steps(
            self.settings.trainer, len(self.data.train), self.settings.data.batch_size
        )
        self.optimizers = [
            make_optimizer(
                _phase_optimizer(self.settings.optimizer, phase.optimizer),
                self.settings.trainer,
                self.settings.scheduler,
                total_steps,
                name=f"{phase.name}_optimizer" if several else None,
            )
            for phase in self.phases
        ]
        if self.settings.backend.precision == "mixed_float16":
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
        self._steps_run = keras.Variable(0, name="steps_run", **counter)
        self._nonfinite = keras.Variable(0, name="nonfinite", **counter)
        self._first_nonfinite = keras.Variable(-1, name="first_nonfinite", **counter)
        self._make_steps()

    # -- what each backend implements, in the order a run uses it --------------------------------

    @abstractmethod
    def _resolve_jit(self, choice: str) -> bool:
        """Turns `backend.jit_compile` (auto|true|false) into on or off for this device."""

    @abstractmethod
    def _seed_framework(self, seed: int) -> None:
        """Seeds the framework's own RNG."""

    @abstractmethod
    def framework_rng_state(self) -> list[int] | None:
        """The framework's global RNG state, where the steps draw from it (else None)."""

    @abstractmethod
    def restore_framework_rng_state(self, state: list[int]) -> None:
        """Restores what `framework_rng_state` returned (same backend only)."""

    @abstractmethod
    def _make_steps(self) -> None:
        """Sets `self._train_fn`, `self._eval_fn` (compiled as `self.jit_compile` says) and
        `self._read_train_fn`."""

    @abstractmethod
    def train_batches(self, epoch: int) -> Iterable[Batch]:
        """The train split in the seeded order of `epoch`, as framework tensors on the device."""

    @abstractmethod
    def val_batches(self) -> Iterable[Batch]:
        """The val split in its fixed order, as framework tensors on the device."""

    @abstractmethod
    def train_step(self, batches: list[Batch]) -> None:
        """One optimizer step on the summed gradients of `batches` (more than one with
        `trainer.grad_accum_steps`), each weighted by its share of the samples, so the step equals
        one on their concatenation. A step whose loss is not finite changes nothing but the
        non-finite record. Nothing leaves the device: the loss goes into `train_loss`, and the
        gradients, when histograms want them, into `_last_gradients`."""

    def train_steps(self, groups: list[list[Batch]]) -> None:
        """Several optimizer steps, one per group of batches (`backend.steps_per_execution`).
        Eager torch runs them one by one; the tf engine runs them in one graph call."""
        for batches in groups:
            self.train_step(batches)

    @abstractmethod
    def _eval_step(self, batch: Batch) -> None:
        """Updates `val_loss` and the recipe's metrics with one batch."""

    # -- shared ----------------------------------------------------------------------------------

    @staticmethod
    def batch_size(batch: Batch) -> int:
        return int(batch[0].shape[0])

    def start_at(self, step: int) -> None:
        """Sets the step counter the non-finite record names steps by (after a resume)."""
        self._steps_run.assign(step)

    def nonfinite_steps(self) -> tuple[int, int | None]:
        """How many steps this process skipped for a NaN or Inf loss, and the first of them."""
        first = int(keras.ops.convert_to_numpy(self._first_nonfinite.value))
        count = int(keras.ops.convert_to_numpy(self._nonfinite.value))
        return count, (first if first >= 0 else None)

    def _record_nonfinite(self) -> None:
        """In the step, in place of the update: counts the step, and names it if it is the first."""
        self._nonfinite.assign(self._nonfinite.value + 1)
        self._first_nonfinite.assign(
            keras.ops.where(
                self._first_nonfinite.value < 0,
                self._steps_run.value + 1,
                self._first_nonfinite.value,
            )
        )

    def train_metrics(self) -> dict[str, float]:
        """Mean train loss since the last call (all phases'), the current lr, and with several
        phases each one's mean loss; the only device sync."""
        loss, lr, phase_losses = self._read_train_fn()
        values = {"loss": _number(loss), "lr": _number(lr)}
        for metric, value in zip(self.phase_train_losses, phase_losses, strict=True):
            values[metric.name] = _number(value)
        return values

    def _read_train_values(self) -> tuple[Any, Any, list[Any]]:
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

    def checkpoint_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Model and optimizer variables as NumPy arrays by Keras variable path."""
        return _arrays(self.model.variables), _arrays(self._optimizer_variables())

    def restore(
        self, model: dict[str, np.ndarray], optimizer: dict[str, np.ndarray] | None
    ) -> None:
        """Assigns saved arrays by variable path; `optimizer=None` restores the weights only.

        Raises:
            RunError: naming the variables that the checkpoint and this model do not share.
        """
        assign_variables(self.model.variables, model, "model")
        if optimizer is not None:
            assign_variables(self._optimizer_variables(), optimizer, "optimizer")

    def _optimizer_variables(self) -> list[Any]:
        return [v for optimizer in self.optimizers for v in optimizer.variables]

    def train_loss_state(self) -> list[float]:
        """The running train-loss mean's (total, count), so a resumed run logs the same means."""
        return [_number(v.value) for v in self.train_loss.variables]

    def restore_train_loss_state(self, values: list[float]) -> None:
        for variable, value in zip(self.train_loss.variables, values, strict=True):
            variable.assign(value)

    def histograms(self) -> dict[str, np.ndarray]:
        """Weights and the last step's gradients as NumPy arrays, tagged by variable path."""
        arrays = {
            f"weights/{v.path}": keras.ops.convert_to_numpy(v.value)
            for v in self.trainable_variables
        }
        for path, grad in (self._last_gradients or {}).items():
            arrays[f"gradients/{path}"] = keras.ops.convert_to_numpy(grad)
        return arrays

    def evaluate(self, max_batches: int | None = None) -> dict[str, float]:
        """Loss and recipe metrics over the val split (its first `max_batches` batches)."""
        for metric in [self.val_loss, *self.phase_val_losses, *self.metrics]:
            metric.reset_state()
        for batch in itertools.islice(self.val_batches(), max_batches):
            self._eval_step(batch)
        self._reduce_metrics([self.val_loss, *self.phase_val_losses, *self.metrics])
        values = {"loss": _number(self.val_loss.result())}
        values.update({m.name: _number(m.result()) for m in self.phase_val_losses})
        values.update({m.name: _number(m.result()) for m in self.metrics})
        return values

    def _reduce_metrics(self, metrics: list[keras.metrics.Metric]) -> None:
        """Combines the metrics' state across processes (distributed engines); here, nothing."""
        return None

    def distributed_info(self) -> dict[str, Any]:
        """summary.json's `distributed` entry: how many processes trained, and how."""
        return {"world_size": 1, "backend": None, "strategy": "none"}

    def _evaluate_batch(self, x: Any, y: Any, size: Any) -> None:
        """The eval step's work, the same on both backends (inside no-grad or tf.function)."""
        if self._supervised:  # one forward pass for the loss and the metrics
            y_pred = self._predict(x)
            assert self.loss_fn is not None
            self.val_loss.update_state(self.loss_fn(y, y_pred), sample_weight=size)
            for metric in self.metrics:
                metric.update_state(y, y_pred)
            return
        losses = [phase.loss(self.model, x, y, False) for phase in self.phases]
        self.val_loss.update_state(keras.ops.sum(keras.ops.stack(losses)), sample_weight=size)
        for metric, loss in zip(self.phase_val_losses, losses, strict=False):
            metric.update_state(loss, sample_weight=size)
        self.recipe.update_metrics(self.metrics, self.model, x, y)

    def _make_augmentation(self) -> Any:
        """The data.augmentation layers (training batches only), or None. Off in parity runs:
        each backend draws its own random numbers."""
        from dualtrain.data.augmentation import make_augmentation

        if self.settings.mode == "parity":
            return None
        return make_augmentation(
            self.settings.data.augmentation, self.data.info.input_shape, self.settings.seed
        )

    def _augment(self, batches: list[Batch]) -> list[Batch]:
        """In the train step, before the phases: the augmented batches (the same for each)."""
        if self.augmentation is None:
            return batches
        return [(self.augmentation(x, training=True), y) for x, y in batches]

    def _predict(self, x: Any) -> Any:
        """The model's inference forward pass (the torch engine may run it as a captured graph)."""
        return self.model(x, training=False)

    def _gradients_by_path(self, grads: list[list[Any]]) -> dict[str, Any] | None:
        """The phases' gradients by variable path, kept only when histograms want them."""
        if not self._keep_gradients:
            return None
        return {
            v.path: g
            for variables, phase_grads in zip(self.phase_variables, grads, strict=True)
            for v, g in zip(variables, phase_grads, strict=True)
            if g is not None
        }

    def _batch_order(self, split: ArrayDataset, epoch: int | None) -> list[np.ndarray]:
        """Index arrays of each batch: shuffled by (seed, epoch) for training, fixed for val."""
        seed = None if epoch is None else self.settings.seed
        return split.batches(self.settings.data.batch_size, seed=seed, epoch=epoch or 0)

    def _check_model(self) -> None:
        info = self.data.info
        expected = (None, *info.input_shape)
        got = tuple(self.model.input_shape) if hasattr(self.model, "input_shape") else expected
        if tuple(got) != expected:
            raise RunError(
                f"recipe {self.recipe.name}: the model takes inputs of shape {got} but the data "
                f"has samples of shape {info.input_shape}; build the model for data.input_shape"
            )
        # A classifier's logits must cover every class the labels name.
        outputs = getattr(self.model, "outputs", None) or []
        out_shape = tuple(outputs[0].shape) if len(outputs) == 1 else ()
        if self._classifies() and len(out_shape) == 2 and out_shape[1] != info.num_classes:
            raise RunError(
                f"recipe {self.recipe.name}: the model outputs {out_shape[1]} class scores but "
                f"the data has {info.num_classes} classes; build the last layer with "
                "data.num_classes units"
            )

    def _classifies(self) -> bool:
        """Whether the recipe's loss takes class indices (sparse categorical)."""
        if self.recipe.has_phases:
            return False
        return isinstance(self.recipe.loss(), keras.losses.SparseCategoricalCrossentropy)


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
        raise ConfigError(f"optimizer={settings.name}: {err}") from None


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


def _number(value: Any) -> float:
    return float(keras.ops.convert_to_numpy(value))
