"""The engine interface that both backends implement: thin executors over the training state.

An engine owns the framework: it turns the backend-neutral data into framework batches, runs the
train and eval steps on a `TrainingState` (engines/state.py: model, phases, optimizers, metrics,
counters), and hands plain Python floats back to the loop. The two engines have the same methods
in the same order; each step does the same work in the same order: forward, loss, gradients,
optimizer update, loss tracking.
"""

from __future__ import annotations

import bdb
import contextlib
import itertools
import logging
import random
import sys
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import keras
import numpy as np

from dualtrain import model_summary
from dualtrain.data import ArrayDataset, BatchSplit, DataSplits, structure
from dualtrain.engines.state import TrainingState, number
from dualtrain.engines.state import targets_or_none as targets
from dualtrain.engines.targets import update_metrics
from dualtrain.profiling import Recorder
from dualtrain.recipe import Phase, Recipe
from dualtrain.settings import Settings

# (features, targets): framework tensors (torch.Tensor or tf.Tensor), each one tensor or a dict or
# tuple of them (data/structure.py); targets are () where the data has none.
Batch = tuple[Any, Any]


log = logging.getLogger("dualtrain")

EAGER_MODE = (
    "eagerly, op by op (backend.eager: debug=eager, or a debugger): breakpoints stop at every step"
)

# Distributed engines shard each global batch of a split of arrays by index; a batch source's
# batches come whole, one stream per process.
NOT_SHARDED = (
    "a batch source (a keras.utils.PyDataset or a function of batches) cannot be sharded across "
    "processes yet; under torchrun or tf.distribute return arrays from the data source"
)


def debugger_attached() -> bool:
    """Whether a debugger traces this process: pdb (any `bdb.Bdb`), or the debugpy/pydevd of an
    IDE. A coverage tracer is not one: measured runs keep their graphs."""
    trace = sys.gettrace()
    if trace is None:
        return False
    owner = getattr(trace, "__self__", trace)
    module = type(owner).__module__ or ""
    return isinstance(owner, bdb.Bdb) or module.startswith(("pydevd", "_pydevd", "debugpy"))


def rows(x: Any) -> Any:
    """The number of samples in a batch's features (any of its arrays)."""
    return structure.first(x).shape[0]


class Engine(ABC):
    """Runs one recipe on one backend, ready once constructed. Subclasses: `TorchEngine`,
    `TensorFlowEngine` (and their distributed forms)."""

    name: ClassVar[str]
    # Set by each backend's `_make_steps`.
    _read_train_fn: Callable[[], Any]

    def __init__(self, settings: Settings, recipe: Recipe, data: DataSplits) -> None:
        """Seeds every RNG, builds the training state (model, loss, metrics, optimizers), then
        the backend's steps."""
        self.settings = settings
        self.recipe = recipe
        self.data = data
        # backend.eager (debug=eager), or a debugger tracing this process: every step op by op,
        # so that a breakpoint in the recipe stops at every step, not once while a graph is made.
        self.eager = settings.backend.eager or debugger_attached()
        self.jit_compile = False if self.eager else self._resolve_jit(settings.backend.jit_compile)
        # Steps hand their gradients back only when histograms want them.
        self._keep_gradients = settings.logger.histograms_every > 0
        self.nonfinite_at_read: tuple[int, int | None] | None = None  # see train_metrics
        self._last_gradients: dict[str, Any] | None = None  # variable path -> gradient
        with self._building():
            # Keras draws its default initializer seeds from Python's `random`; NumPy for
            # completeness. (keras.utils.set_random_seed would import TensorFlow on torch.)
            random.seed(settings.seed)
            np.random.seed(settings.seed)
            self._seed_framework(settings.seed)
            if settings.trainer.deterministic is not None:
                self._set_determinism(settings.trainer.deterministic)
            self.state = TrainingState(settings, recipe, data)
            # What the steps run: the state's phases and the model's inference pass, which a
            # backend may replace by faster forms of the same (the torch engine captures them).
            self.phases: list[Phase] = list(self.state.phases)
            self._predict: Callable[[Any], Any] = lambda x: self.state.model(x, training=False)
            self._make_steps()
        # An export or a summary runs no step: the line would only be noise beside its report.
        say = log.debug if settings.mode in ("export", "summary") else log.info
        say("%s steps run %s", self.name, self.step_mode())

    @property
    def model(self) -> keras.Model:
        return self.state.model

    @contextlib.contextmanager
    def _building(self) -> Iterator[None]:
        """Where the state and steps are built: a distributed engine first joins its processes
        and builds inside its strategy's scope."""
        yield

    # -- what each backend implements, in the order a run uses it --------------------------------

    @abstractmethod
    def step_mode(self) -> str:
        """How the steps run, in words, for the log line at start."""

    @abstractmethod
    def not_captured_because(self) -> str | None:
        """Why the steps (or a part of them) run op by op rather than as a graph, in words; None
        when they run as graphs. Known for certain after the first step (each engine traces a
        graph when it is first called, and falls back to eager steps where it cannot)."""

    def step_capture(self) -> dict[str, Any]:
        """How the steps ran, for summary.json."""
        reason = self.not_captured_because()
        return {
            "mode": self.step_mode(),
            "captured": reason is None,
            "not_captured_because": reason,
        }

    @abstractmethod
    def _resolve_jit(self, choice: str) -> bool:
        """Turns `backend.jit_compile` (auto|true|false) into on or off for this device."""

    @abstractmethod
    def _seed_framework(self, seed: int) -> None:
        """Seeds the framework's own RNG."""

    @abstractmethod
    def _set_determinism(self, on: bool) -> None:
        """`trainer.deterministic`: the framework's deterministic kernels on or off, for the
        whole process (both frameworks hold the switch globally)."""

    @abstractmethod
    def framework_rng_state(self) -> list[int] | None:
        """The framework's global RNG state, where the steps draw from it (else None)."""

    @abstractmethod
    def restore_framework_rng_state(self, state: list[int]) -> None:
        """Restores what `framework_rng_state` returned (same backend only)."""

    @abstractmethod
    def _make_steps(self) -> None:
        """Prepares the train and eval steps (compiled as `self.jit_compile` says) and sets
        `self._read_train_fn`."""

    def train_batches(self, epoch: int) -> Iterable[Batch]:
        """The train split in the seeded order of `epoch` (a batch source: its own batches of
        `epoch`), as framework tensors on the device."""
        split = self.data.train
        if isinstance(split, BatchSplit):
            return self._source_batches(split.epoch(epoch))
        return self._array_batches(split, self._batch_order(split, epoch), train=True)

    def val_batches(self) -> Iterable[Batch]:
        """The val split in its fixed order, as framework tensors on the device."""
        split = self.data.val
        if isinstance(split, BatchSplit):
            return self._source_batches(split.epoch(0))
        return self._array_batches(split, self._batch_order(split, None), train=False)

    def _on_device(self, split: ArrayDataset | BatchSplit) -> bool:
        """Whether a split's arrays go to the device once, to be gathered there batch by batch
        (`backend.data_on_device`): arrays in memory, and with `auto` those that take at most a
        quarter of the device's free memory (on a CPU the device memory is the host's: all).
        Otherwise each batch is gathered in host memory and copied."""
        if isinstance(split, BatchSplit) or not split.in_memory:
            return False
        choice = self.settings.backend.data_on_device
        if choice != "auto":
            return choice == "true"
        free = self._free_device_memory()
        return free is None or split.nbytes <= free // 4

    @abstractmethod
    def _free_device_memory(self) -> int | None:
        """Bytes free on the accelerator the steps run on; None when they run on the CPU, or
        when the framework cannot tell."""

    @abstractmethod
    def _array_batches(
        self, split: ArrayDataset, order: list[np.ndarray], train: bool
    ) -> Iterable[Batch]:
        """The batches of `order` (index arrays) of a split of arrays, as framework tensors."""

    @abstractmethod
    def _source_batches(self, batches: Iterable[tuple[Any, Any]]) -> Iterable[Batch]:
        """A batch source's NumPy batches (y None without targets) as framework tensors."""

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

    @abstractmethod
    def profiler(self, directory: Path) -> Recorder:
        """The framework's profiler, writing its trace under `directory` (profile.steps:
        dualtrain/profiling.py)."""

    @abstractmethod
    def count_flops(self, x: Any, y: Any) -> model_summary.Flops:
        """The FLOPs of the inference pass on the samples `x` and of a training step on (x, y)
        (model_summary.COUNTED), counted by the framework's own counter; changes no state."""

    # -- shared ----------------------------------------------------------------------------------

    @staticmethod
    def batch_size(batch: Batch) -> int:
        return int(rows(batch[0]))

    def train_metrics(self) -> dict[str, float]:
        """Mean train loss since the last call (all phases'), the current lr, and with several
        phases each one's mean loss; the only device sync, one read. The non-finite record read
        with them is kept in `nonfinite_at_read`."""
        loss, lr, *rest = keras.ops.convert_to_numpy(self._read_train_fn()).tolist()
        values = {"loss": loss, "lr": lr}
        for metric, value in zip(self.state.phase_train_losses, rest, strict=False):
            values[metric.name] = value
        count, first = int(rest[-2]), int(rest[-1])
        self.nonfinite_at_read = (count, first if first >= 0 else None)
        return values

    def train_loss_state(self) -> list[float]:
        """The running train-loss mean's (total, count), so a resumed run logs the same means."""
        return [number(v.value) for v in self.state.train_loss.variables]

    def restore_train_loss_state(self, values: list[float]) -> None:
        for variable, value in zip(self.state.train_loss.variables, values, strict=True):
            variable.assign(value)

    def histograms(self) -> dict[str, np.ndarray]:
        """Weights and the last step's gradients as NumPy arrays, tagged by variable path."""
        arrays = {
            f"weights/{v.path}": keras.ops.convert_to_numpy(v.value)
            for v in self.state.trainable_variables
        }
        for path, grad in (self._last_gradients or {}).items():
            arrays[f"gradients/{path}"] = keras.ops.convert_to_numpy(grad)
        return arrays

    def evaluate(self, max_batches: int | None = None) -> dict[str, float]:
        """Loss and recipe metrics over the val split (its first `max_batches` batches); with
        trainer.ema and trainer.ema_eval, of the averaged weights (swapped in, then back)."""
        averaged = self.state.averages and self.settings.trainer.ema_eval
        with self.state.averaged_weights() if averaged else contextlib.nullcontext():
            return self._evaluate(max_batches)

    def _evaluate(self, max_batches: int | None) -> dict[str, float]:
        state = self.state
        tracked = [state.val_loss, *state.phase_val_losses, *state.metrics]
        for metric in tracked:
            metric.reset_state()
        for batch in itertools.islice(self.val_batches(), max_batches):
            self._eval_step(batch)
        self._reduce_metrics(tracked)
        values = {"loss": number(state.val_loss.result())}
        values.update({m.name: number(m.result()) for m in state.phase_val_losses})
        for metric in state.tracked_metrics:
            values.update(metric_values(metric.name, metric.metric.result()))
        return values

    def _reduce_metrics(self, metrics: list[keras.metrics.Metric]) -> None:
        """Combines the metrics' state across processes (distributed engines); here, nothing."""
        return None

    def model_summary(self) -> dict[str, Any]:
        """Parameters, top-level layers and FLOPs per sample (model_summary.py), the FLOPs
        counted on the first train samples. A model the counter fails on still gets its
        summary, with the reason in place of the FLOPs: training does not depend on it."""
        x, y = self.data.train.sample(model_summary.SAMPLES)
        x = structure.map_leaves(keras.ops.convert_to_tensor, x)
        y = structure.map_leaves(keras.ops.convert_to_tensor, targets(y))
        try:
            with warnings.catch_warnings():
                # A subclassed model that the state did not call (a recipe with phases) builds
                # on its first call, running `call` twice: here, not in the counted call. Keras
                # warns that such a model has no build(); its variables were all made already.
                warnings.filterwarnings("ignore", message=r".*does not have a `build\(\)`")
                self.model(x, training=False)
            return model_summary.describe(self.model, self.count_flops(x, y))
        except Exception as err:  # any framework error: a summary without FLOPs, and why
            return model_summary.describe(self.model, None, f"{type(err).__name__}: {err}")

    def distributed_info(self) -> dict[str, Any]:
        """summary.json's `distributed` entry: how many processes trained, and how."""
        return {"world_size": 1, "backend": None, "strategy": "none"}

    def _evaluate_batch(self, x: Any, y: Any, size: Any) -> None:
        """The eval step's work, the same on both backends (inside no-grad or tf.function)."""
        state = self.state
        y = targets(y)
        if state.supervised:  # one forward pass for the loss and the metrics
            y_pred = self._predict(x)
            assert state.loss_fn is not None
            state.val_loss.update_state(state.loss_fn(y, y_pred), sample_weight=size)
            update_metrics(state.tracked_metrics, state.outputs, y, y_pred)
            return
        losses = [phase.loss(self.model, x, y, False) for phase in self.phases]
        state.val_loss.update_state(keras.ops.sum(keras.ops.stack(losses)), sample_weight=size)
        for metric, loss in zip(state.phase_val_losses, losses, strict=False):
            metric.update_state(loss, sample_weight=size)
        self.recipe.update_metrics(state.metrics, self.model, x, y)

    def _augment(self, batches: list[Batch]) -> list[Batch]:
        """In the train step, before the phases: the augmented batches (the same for each)."""
        if self.state.augmentation is None:
            return batches
        return [(self.state.augmentation(x, training=True), y) for x, y in batches]

    def _gradients_by_path(self, grads: list[list[Any]]) -> dict[str, Any] | None:
        """The phases' gradients by variable path, kept only when histograms want them."""
        if not self._keep_gradients:
            return None
        return {
            v.path: g
            for variables, phase_grads in zip(self.state.phase_variables, grads, strict=True)
            for v, g in zip(variables, phase_grads, strict=True)
            if g is not None
        }

    def _batch_order(self, split: ArrayDataset, epoch: int | None) -> list[np.ndarray]:
        """Index arrays of each batch: shuffled by (seed, epoch) for training, fixed for val."""
        seed = None if epoch is None else self.settings.seed
        return split.batches(self.settings.data.batch_size, seed=seed, epoch=epoch or 0)


def metric_values(name: str, result: Any) -> dict[str, float]:
    """A metric's result as logged values: one number, or one per element (`<name>/<i>`) for a
    metric that returns several (F1Score per class), or per key for a dict."""
    if isinstance(result, dict):
        return {f"{name}/{k}": number(v) for k, v in result.items()}
    array = np.asarray(keras.ops.convert_to_numpy(result), dtype="float64")
    if array.size == 1:
        return {name: float(array.reshape(()))}
    return {f"{name}/{i}": float(v) for i, v in enumerate(array.reshape(-1))}
