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
import math
from collections.abc import Callable, Iterator
from typing import Any

import keras
import numpy as np

from dualtrain import compat
from dualtrain.data import ArraySpec, DataInfo, DataSplits, structure
from dualtrain.engines.targets import (
    match_outputs,
    supervised_loss,
    tracked_metrics,
    update_metrics,
    with_model_losses,
)
from dualtrain.errors import ConfigError, RunError, first_line
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
        said = f"recipe {recipe.name}"
        with fresh_layer_names():
            self.model: keras.Model = recipe.build_model(data.info)
            # One call on two train samples builds a model that builds on its first call (a
            # subclassed model), and shows what it returns, before the first step. A recipe with
            # its own phases calls its model as it likes: only an unbuilt one is called here.
            _check_inputs(self.model, recipe, data.info)
            sample_x, sample_y = _sample(data)
            sample_pred = None
            if not recipe.has_phases or not self.model.variables:
                sample_pred = _call(self.model, sample_x, data.info, said)
        self.outputs = match_outputs(
            data.info if not recipe.has_phases else _no_targets(data.info),
            self.model,
            sample_pred,
            said,
        )
        self.augmentation = _make_augmentation(settings, data)
        # mode=parity compares the backends step by step; their random numbers come from different
        # generators, so the layers that draw them in training are switched off and reported.
        self.made_deterministic: list[dict[str, Any]] = []
        self.stochastic_layers: list[str] = []
        if settings.mode == "parity":
            self.made_deterministic, self.stochastic_layers = make_deterministic(self.model)
        # The training step is a sequence of phases, each with its loss, variables and optimizer;
        # a plain recipe has one: its loss over every output, on all trainable variables.
        self.supervised = not recipe.has_phases
        self.loss_fn = (
            with_model_losses(
                supervised_loss(recipe.loss(), self.outputs, recipe.loss_weights, said),
                self.model,
            )
            if self.supervised
            else None
        )
        self.phases: list[Phase] = recipe.phases(self.model, self.loss_fn)
        self.tracked_metrics = tracked_metrics(recipe.metrics(data.info), self.outputs, said)
        self.metrics: list[keras.metrics.Metric] = [t.metric for t in self.tracked_metrics]
        if self.supervised:
            _check_targets(self, recipe, data.info, sample_y, sample_pred)
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
            settings.trainer, data.train.num_batches(settings.data.batch_size)
        )
        # Named as in a new process too: checkpoints name optimizer variables by the optimizer's
        # name (`adam/dense_kernel_momentum`), and a second run in one process would get `adam_1`.
        with fresh_layer_names():
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
        # trainer.ema: a moving average of the trainable weights, updated after each step
        # (update_average). Keras's optimizer EMA (`use_ema`) does the same arithmetic inside
        # `optimizer.apply`; this one is the state's, so that the engines may update the weights
        # as they do (torch's fused Adam, a captured step, a skipped non-finite step).
        self.ema_momentum = settings.trainer.ema
        self.averages = [
            keras.Variable(
                # A copy (NumPy): the average must not share the weight's memory.
                keras.ops.convert_to_numpy(v.value),
                name=f"average_{i}",
                trainable=False,
                aggregation="only_first_replica",
            )
            for i, v in enumerate(self.trainable_variables if self.ema_momentum else [])
        ]
        # (strict=False: without trainer.ema there are no averages)
        average_of = {
            id(v): a for v, a in zip(self.trainable_variables, self.averages, strict=False)
        }
        # Per phase: its (weight, average) pairs, and its optimizer's `iterations` when the
        # average last moved (a step that did not move them was skipped).
        self._averaged = [
            [(v, average_of[id(v)]) for v in variables if id(v) in average_of]
            for variables in self.phase_variables
        ]
        self._averaged_at = [keras.Variable(0, name="averaged_at", **counter) for _ in self.phases]

    # -- in the steps ----------------------------------------------------------------------------

    def record_nonfinite(self, bad: Any = True) -> None:
        """In the step, in place of the update: counts the step, and names it if it is the first.
        `bad` may be a boolean tensor, decided on the device (torch): where it is false, nothing
        is recorded."""
        bad = keras.ops.cast(bad, "int64")
        self.nonfinite.assign(self.nonfinite.value + bad)
        self.first_nonfinite.assign(
            keras.ops.where(
                (self.first_nonfinite.value < 0) & (bad > 0),
                self.steps_run.value + 1,
                self.first_nonfinite.value,
            )
        )

    def read_train_values(self) -> Any:
        """What a log point reads, as one float64 vector, so that it costs one transfer to the
        host: the mean train loss since the last read, the lr, the phases' mean losses, and the
        non-finite record (count, first step or -1). Resets the means."""
        values = [
            self.train_loss.result(),
            self.optimizer.learning_rate,
            *[m.result() for m in self.phase_train_losses],
            self.nonfinite.value,
            self.first_nonfinite.value,
        ]
        for metric in [self.train_loss, *self.phase_train_losses]:
            metric.reset_state()
        return keras.ops.stack([keras.ops.cast(v, "float64") for v in values])

    def update_average(self, blend: Blend | None = None) -> None:
        """After a step's phases, for each phase whose optimizer stepped: average = m * average
        + (1 - m) * weight, with m = 0 at the optimizer's first step: the arithmetic of Keras's
        `Optimizer._update_model_variables_moving_average`, which runs after each `apply`. A
        step skipped for a NaN or Inf loss, or by loss scaling (mixed_float16) for an overflow,
        did not move the optimizer's `iterations`: its m = 1 keeps the average (1 * a + 0 * w).
        `blend` does the arithmetic on the variables (an engine's faster form of `blend`)."""
        if not self.averages:
            return
        for optimizer, pairs, at in zip(
            self.optimizers, self._averaged, self._averaged_at, strict=True
        ):
            iterations = optimizer.iterations.value
            stepped = keras.ops.not_equal(iterations, at.value)
            started = keras.ops.cast(keras.ops.not_equal(at.value, 0), "float32")
            momentum = keras.ops.where(stepped, started * self.ema_momentum, 1.0)
            (blend or _blend)(momentum, pairs)
            at.assign(iterations)

    # -- between steps ---------------------------------------------------------------------------

    def set_learning_rate(self, lr: float) -> None:
        """Every optimizer's rate, for optimizers built with a constant one: Keras keeps it in a
        variable, which the steps read at every call (lr_find changes it between steps)."""
        for optimizer in self.optimizers:
            optimizer.learning_rate = lr

    @contextlib.contextmanager
    def averaged_weights(self) -> Iterator[None]:
        """The averaged weights in the model's trainable variables for the block, the raw ones
        back after it, bit for bit (copies on the device)."""
        raw = [keras.ops.copy(v.value) for v in self.trainable_variables]
        try:
            for variable, average in zip(self.trainable_variables, self.averages, strict=True):
                variable.assign(average.value)
            yield
        finally:
            for variable, value in zip(self.trainable_variables, raw, strict=True):
                variable.assign(value)

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

    def average_arrays(self) -> dict[str, np.ndarray] | None:
        """The averaged weights by the path of the weight each averages; None without
        trainer.ema."""
        if not self.averages:
            return None
        return {
            v.path: keras.ops.convert_to_numpy(a.value)
            for v, a in zip(self.trainable_variables, self.averages, strict=True)
        }

    def restore(
        self,
        model: dict[str, np.ndarray],
        optimizer: dict[str, np.ndarray] | None,
        average: dict[str, np.ndarray] | None = None,
    ) -> None:
        """Assigns saved arrays by variable path; `optimizer=None` restores the weights only.
        With trainer.ema, `average` (as `average_arrays` returns it) restores the average; None
        starts it from the restored weights.

        Raises:
            RunError: naming the variables that the checkpoint and this model do not share.
        """
        assign_variables(self.model.variables, model, "model")
        if optimizer is not None:
            assign_variables(self.optimizer_variables(), optimizer, "optimizer")
        if not self.averages:
            return
        if average is None:
            average = {
                v.path: keras.ops.convert_to_numpy(v.value) for v in self.trainable_variables
            }
        by_path = {v.path: a for v, a in zip(self.trainable_variables, self.averages, strict=True)}
        assign_variables(list(by_path.values()), _by_average(average, by_path), "average")
        # The optimizers' steps so far (none for a warm start): the average goes on from there.
        for phase_optimizer, at in zip(self.optimizers, self._averaged_at, strict=True):
            at.assign(phase_optimizer.iterations.value)


def _make_augmentation(settings: Settings, data: DataSplits) -> Any:
    """The data.augmentation layers (training batches only), or None. Off in parity runs: each
    backend draws its own random numbers."""
    from dualtrain.data.augmentation import make_augmentation

    if settings.mode == "parity" or not settings.data.augmentation:
        return None
    return make_augmentation(settings.data.augmentation, data.info.input_shape, settings.seed)


def _sample(data: DataSplits) -> tuple[Any, Any]:
    """The first two train samples as tensors of the running backend (targets: None if none)."""
    x, y = data.train.sample(2)
    return (
        structure.map_leaves(keras.ops.convert_to_tensor, x),
        structure.map_leaves(keras.ops.convert_to_tensor, targets_or_none(y)),
    )


def _no_targets(info: DataInfo) -> DataInfo:
    """A recipe with phases reads the targets itself: no output is matched to them."""
    return dataclasses.replace(info, targets=(), target_kind=structure.NONE)


def targets_or_none(y: Any) -> Any:
    """A batch's targets as recipes see them: None where the data has none (batches carry ())."""
    return None if isinstance(y, tuple) and not y else y


def _call(model: keras.Model, x: Any, info: DataInfo, said: str) -> Any:
    try:
        return model(x, training=False)
    except Exception as err:
        raise RunError(
            f"{said}: the model fails on the data's inputs ({_describe(info.inputs)}): "
            f"{type(err).__name__}: {first_line(err, 300)}"
        ) from err


def _check_inputs(model: keras.Model, recipe: Recipe, info: DataInfo) -> None:
    """A functional model's inputs against the data's: names (for a dict), count and shapes."""
    if not compat.is_functional(model) or not getattr(model, "inputs", None):
        return  # a subclassed model takes what its call takes: the sample call checks it
    said = f"recipe {recipe.name}"
    inputs = list(model.inputs)
    if info.input_kind == structure.DICT:
        names = {str(i.name): i for i in inputs}
        if set(names) != {s.name for s in info.inputs}:
            raise RunError(
                f"{said}: the data's inputs {sorted(s.name for s in info.inputs)} do not match "
                f"the model's inputs {sorted(names)}; name the data source's dict keys after the "
                "model's keras.Input names"
            )
        by_spec = [(spec, names[spec.name]) for spec in info.inputs]
    elif len(inputs) != len(info.inputs):
        raise RunError(
            f"{said}: the model takes {len(inputs)} inputs but the data has {len(info.inputs)} "
            f"({_describe(info.inputs)}); give one array per model input"
        )
    else:
        by_spec = list(zip(info.inputs, inputs, strict=True))
    for spec, tensor in by_spec:
        got = tuple(tensor.shape)
        if got != (None, *spec.shape):
            where = "samples" if len(by_spec) == 1 else f"samples of input {spec.name!r}"
            raise RunError(
                f"{said}: the model takes inputs of shape {got} but the data has {where} of "
                f"shape {spec.shape}; build the model for data.input_shape"
            )


def _check_targets(
    state: TrainingState, recipe: Recipe, info: DataInfo, y: Any, y_pred: Any
) -> None:
    """The loss and the metrics on two samples, before the first step: a target that does not
    fit an output (shape, dtype, class count) is one line here rather than an error deep in the
    first step."""
    said = f"recipe {recipe.name}"
    losses = recipe.loss()
    for (out, target, pred), name in zip(
        state.outputs.pairs(y, y_pred), state.outputs.targets, strict=True
    ):
        spec = info.target(name)
        loss = losses.get(out) if isinstance(losses, dict) else losses
        if isinstance(loss, keras.losses.SparseCategoricalCrossentropy):
            if spec.task != "classification":
                raise RunError(
                    f"{said}: the loss {type(loss).__name__} takes class indices, but the target "
                    f"{_target_words(spec)} is a {spec.task} target ({spec.dtype}); give integer "
                    "labels, or set recipe.task=classification"
                )
            if spec.num_classes is not None and spec.num_classes < 2:
                raise RunError(
                    f"{said}: the labels hold {spec.num_classes} class; a classifier needs at "
                    "least two (check data.target, or the labels the data source returns)"
                )
        _check_shapes(loss, spec, tuple(target.shape[1:]), tuple(pred.shape[1:]), said)
    assert state.loss_fn is not None
    try:
        value = state.loss_fn(y, y_pred)
    except Exception as err:
        raise RunError(
            f"{said}: the loss cannot compare the targets ({_describe(info.targets)}) with the "
            f"model's outputs ({_describe_tensors(y_pred)}): {type(err).__name__}: "
            f"{first_line(err, 300)}; build the outputs to fit the targets, or change the loss"
        ) from err
    if len(getattr(value, "shape", ())) != 0:
        raise RunError(
            f"{said}: the loss returns shape {tuple(value.shape)}, not a number; reduce it to "
            "one value per batch (a keras.losses.Loss does)"
        )
    for tracked in state.tracked_metrics:
        try:
            update_metrics([tracked], state.outputs, y, y_pred)
        except Exception as err:
            raise RunError(
                f"{said}: the metric {tracked.name} cannot take the targets "
                f"({_describe(info.targets)}) and outputs ({_describe_tensors(y_pred)}): "
                f"{type(err).__name__}: {first_line(err, 300)}"
            ) from err
        tracked.metric.reset_state()


def _check_shapes(
    loss: Any, spec: ArraySpec, target: tuple[int, ...], output: tuple[int, ...], said: str
) -> None:
    """A Keras loss's target against its output, sample by sample: class indices need one score
    per class on a last axis (one per pixel or position too); other losses take a target of the
    output's shape. Keras's losses would broadcast a (n, 3) target against a (n, 1) output
    without a word. A loss of the recipe's own is left to its own checks."""
    if not isinstance(loss, keras.losses.Loss):
        return
    words = "the target" if spec.name == "y" else f"the target {spec.name!r}"
    if isinstance(loss, keras.losses.SparseCategoricalCrossentropy):
        expected = (*target, spec.num_classes)
        if output and output[:-1] == target and output[-1] != spec.num_classes:
            raise RunError(
                f"{said}: the model outputs {output[-1]} class scores but the data has "
                f"{spec.num_classes} classes; build the last layer with data.num_classes units"
            )
        if output != expected:
            raise RunError(
                f"{said}: the model outputs {output} per sample, but {words} holds class "
                f"indices of shape {target}; build the output as {expected} (one score per "
                "class, on the last axis)"
            )
        return
    squeezed = tuple(d for d in output if d != 1), tuple(d for d in target if d != 1)
    if output != target and squeezed[0] != squeezed[1]:
        raise RunError(
            f"{said}: the model outputs {output} per sample, but {words} has shape {target} "
            f"({spec.task}); {type(loss).__name__} needs them to be the same: build the last "
            f"layer with data.target_shape {target}"
        )


def _target_words(spec: ArraySpec) -> str:
    return "y" if spec.name == "y" else repr(spec.name)


def _describe(specs: tuple[ArraySpec, ...]) -> str:
    if not specs:
        return "none"
    return ", ".join(f"{s.name}: {s.shape} {s.dtype}" for s in specs)


def _describe_tensors(value: Any) -> str:
    return ", ".join(
        f"{name}: {tuple(t.shape[1:])} {keras.backend.standardize_dtype(t.dtype)}"
        for name, t in structure.named(value, "output").items()
    )


def _phase_optimizer(settings: OptimizerSettings, options: dict[str, Any]) -> OptimizerSettings:
    """The `optimizer` config with a phase's own options over it."""
    options = dict(options)
    lr = options.pop("lr", settings.lr)
    if lr == "auto":
        # run.train puts the finder's suggestion here before it builds an engine; a job that
        # trains nothing (eval, an export worker) never steps the optimizer: Keras's default.
        lr = 0.001
    lr = float(lr)
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
            learning_rate=learning_rate(float(settings.lr), scheduler, total_steps),
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
        return WarmupCosine(
            lr,
            warmup_steps=warmup,
            decay_steps=scheduler.decay_steps or max(1, total_steps - warmup),
            alpha=scheduler.alpha,
        )
    return lr


class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup from 0 to `target` over `warmup_steps`, then cosine decay to `alpha *
    target` over `decay_steps`: the values of Keras's `CosineDecay(0.0, decay_steps, alpha,
    warmup_target=target, warmup_steps=warmup_steps)`, in the same float32 operations.

    Keras chooses between warmup and decay with `ops.cond`, which on torch is a Python `if` on
    the step's value: a read on the host in every step, which a captured graph cannot replay
    (the step and its update then ran outside a graph). Here both are computed and `ops.where`
    chooses, on the device, on both backends.
    """

    def __init__(self, target: float, warmup_steps: int, decay_steps: int, alpha: float) -> None:
        super().__init__()
        self.target = target
        self.warmup_steps = warmup_steps
        self.decay_steps = decay_steps
        self.alpha = alpha

    def __call__(self, step: Any) -> Any:
        ops = keras.ops
        target = ops.convert_to_tensor(self.target, "float32")
        warmup = ops.cast(self.warmup_steps, "float32")
        decay = ops.cast(self.decay_steps, "float32")
        step = ops.minimum(ops.cast(step, "float32"), decay + warmup)
        # Keras's warmup: (target - initial) * fraction + initial, initial 0.0.
        rising = (target - 0.0) * (step / ops.maximum(warmup, 1.0)) + 0.0
        fraction = ops.divide(step - warmup, decay)
        cosine = 0.5 * (1.0 + ops.cos(ops.multiply(ops.array(math.pi, "float32"), fraction)))
        falling = ops.multiply(target, (1 - self.alpha) * cosine + self.alpha)
        return ops.where(step < warmup, rising, falling)

    def get_config(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "warmup_steps": self.warmup_steps,
            "decay_steps": self.decay_steps,
            "alpha": self.alpha,
        }


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


# (momentum, [(weight, its average)]) -> None: average = m * average + (1 - m) * weight
Blend = Callable[[Any, list[tuple[Any, Any]]], None]


def _blend(momentum: Any, pairs: list[tuple[Any, Any]]) -> None:
    for variable, average in pairs:
        m = keras.ops.cast(momentum, variable.dtype)
        average.assign(m * average.value + (1 - m) * variable.value)


def _by_average(arrays: dict[str, np.ndarray], by_path: dict[str, Any]) -> dict[str, np.ndarray]:
    """Saved averages (by their weight's path) renamed to the average variables' paths."""
    return {by_path[p].path if p in by_path else p: a for p, a in arrays.items()}


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
