"""The TensorFlow engine: train and eval steps compiled with tf.function, XLA on request."""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from dualtrain import compat
from dualtrain.data import ArrayDataset, ArraySpec, BatchSplit, DataInfo, Rows, structure
from dualtrain.engines.base import EAGER_MODE, Batch, Engine, targets
from dualtrain.model_summary import Flops
from dualtrain.profiling import Recorder

log = logging.getLogger("dualtrain")

# The batch sizes one step is traced for, each a static batch dimension (TensorFlowEngine._trace).
STATIC_BATCH_SIZES = 4
# Batches of arrays in memory gathered together, in one op per tensor (_gathered).
GATHER_BATCHES = 32

Branch = Callable[..., None]  # a branch of `_cond`


def graph_function(function: Callable[..., Any], **options: Any) -> Any:
    """`tf.function` without autograph, as Keras's own trainer compiles its steps: Keras layers
    and losses branch and loop with `keras.ops`, which need no conversion, and a step that the
    torch engine can capture needs none either. Autograph's conversion of every Python function
    a step calls was 1.4 s of a short mlp run's 9 s, 2.7 s of the cnn's 12 s (docs/performance.md,
    "Measured choices")."""
    return tf.function(function, autograph=False, **options)


def training_ops(function: Callable[..., Any]) -> Callable[..., Any]:
    """`function`, a step that takes gradients, traced with the ops such a graph needs instead
    of Keras's (compat.leaky_relu_as_select). Run eagerly (debug=eager, the eager fallback), it
    runs Keras's own ops."""

    @functools.wraps(function)
    def step(*args: Any) -> Any:
        if tf.executing_eagerly():
            return function(*args)
        with compat.leaky_relu_as_select():
            return function(*args)

    return step


class TensorFlowEngine(Engine):
    name = "tf"
    # Why the steps run eagerly after all, where tracing one failed (_graph_call).
    _eager_because: str | None = None

    def _resolve_jit(self, choice: str) -> bool:
        # auto = XLA on GPU only: on a CPU, XLA made the cnn step slower than plain tf.function
        # and added seconds of compile time (docs/performance.md, "Measured choices").
        if choice == "auto":
            return bool(tf.config.list_physical_devices("GPU"))
        return choice == "true"

    def _seed_framework(self, seed: int) -> None:
        tf.random.set_seed(seed)

    def _set_determinism(self, on: bool) -> None:
        # TensorFlow has no public switch back off (compat.py).
        if on:
            tf.config.experimental.enable_op_determinism()
        else:
            compat.disable_tf_op_determinism()

    # Keras's Dropout on tf draws from its seed-generator variable, which the checkpoint holds;
    # the steps use no global TF RNG.
    def framework_rng_state(self) -> list[int] | None:
        return None

    def restore_framework_rng_state(self, state: list[int]) -> None:
        pass

    def step_mode(self) -> str:
        if self.eager:
            return EAGER_MODE
        return f"as tf.function graphs (XLA: {self.jit_compile}; debug=eager for pdb)"

    def not_captured_because(self) -> str | None:
        if self.eager:
            return "debug=eager (or a debugger) runs every step op by op"
        return self._eager_because

    def _make_steps(self) -> None:
        # Process-wide in TensorFlow: set either way, so that a later run in the process is not
        # left eager by an earlier one.
        tf.config.run_functions_eagerly(self.eager)
        # The data's batch description with any batch size (files read by tf.data use it).
        self._batch_signature = _signature(self.data.info)
        # The traced steps, by (what, how many batches in each step, each batch's size).
        self._traced: dict[tuple[str, tuple[int, ...], tuple[int | None, ...]], Any] = {}
        # One graph call instead of several eager ops per log line; traced here, not in the loop.
        self._read_train_fn = graph_function(self.state.read_train_values)
        self._read_train_fn()
        self._train_arrays = _as_tensors(self.data.train, self._on_device(self.data.train))
        self._val_arrays = _as_tensors(self.data.val, self._on_device(self.data.val))

    def _free_device_memory(self) -> int | None:
        # TensorFlow reports what it allocated, not what the device has free: `auto` puts every
        # in-memory set on the device, as the tf engine always did.
        return None

    def _array_batches(
        self, split: ArrayDataset, order: list[np.ndarray], train: bool
    ) -> Iterable[Batch]:
        arrays = self._train_arrays if train else self._val_arrays
        assert arrays is not None
        return self._pipeline(arrays, order)

    def _source_batches(self, batches: Iterable[tuple[Any, Any]]) -> Iterable[Batch]:
        return _from_numpy(batches)

    def train_step(self, batches: list[Batch]) -> None:
        # One traced step per number of accumulated batches (grad_accum_steps, and the fewer
        # that may end an epoch) and their sizes.
        make = functools.partial(training_ops, self._train_step)
        step = self._trace("train", (len(batches),), batches, make)
        self._last_gradients = self._graph_call(step, *(t for batch in batches for t in batch))

    def train_steps(self, groups: list[list[Batch]]) -> None:
        # Steps of the same shape (batches per step, each batch's size) run as one graph call: a
        # loop over the steps' batches stacked along a new first dimension, traced once for any
        # number of steps. (A graph with the steps unrolled was traced again for every count that
        # a call can have: calls end at multiples of steps_per_execution, so epochs whose steps
        # are not a multiple of it start and end with other counts, and each trace took seconds.)
        # A step whose shapes differ from the one before (an epoch's smaller last batch, a batch
        # source whose batches vary) starts another call.
        for same in _same_shape(groups):
            if len(same) == 1:
                self.train_step(same[0])
                continue
            first, count = same[0], len(same)
            if self.jit_compile:
                # XLA compiles the graph again for each shape of its inputs: the stack always
                # holds steps_per_execution steps (the last repeated), of which `count` run.
                same = same + [same[-1]] * (self.settings.backend.steps_per_execution - count)
            make = functools.partial(training_ops, self._loop)
            steps = self._trace("steps", (len(first),), first, make, stacked=True)
            stacked = [_stack([group[i] for group in same]) for i in range(len(first))]
            self._last_gradients = self._graph_call(
                steps, tf.constant(count), *(t for b in stacked for t in b)
            )

    def _trace(
        self,
        what: str,
        shape: tuple[int, ...],
        batches: list[Batch],
        make: Callable[[], Callable[..., Any]],
        stacked: bool = False,
    ) -> Any:
        """The step that `make` returns, traced for these batches' sizes: each size is a static
        batch dimension, which lets TensorFlow's shape inference size a recurrent layer's loop
        state (a GRU's step took 1.6x the CPU time with a batch dimension of None:
        docs/performance.md). An array data set has at most two sizes (the last batch of an
        epoch may be smaller); past `STATIC_BATCH_SIZES` traces of one step (a batch source
        whose sizes vary), one more, with a batch dimension of None, serves every other size.
        `stacked`: each tensor has a first dimension more, the steps (any number of them), after
        the number of them to run."""
        sizes: tuple[int | None, ...] = tuple(_batch_size(x) for x, _ in batches)
        if (what, shape, sizes) not in self._traced:
            static = sum(1 for w, s, _ in self._traced if (w, s) == (what, shape))
            if static >= STATIC_BATCH_SIZES or None in sizes:
                sizes = (None,) * len(batches)
        key = (what, shape, sizes)
        if key not in self._traced:
            signature = [s for n in sizes for s in _signature(self.data.info, n)]
            if stacked:
                signature = [
                    tf.TensorSpec((), tf.int32),
                    *tf.nest.map_structure(
                        lambda s: tf.TensorSpec((None, *s.shape), s.dtype), signature
                    ),
                ]
            self._traced[key] = graph_function(
                make(), input_signature=signature, jit_compile=self.jit_compile
            )
        return self._traced[key]

    def _loop(self, count: tf.Tensor, *stacked: tf.Tensor) -> dict[str, tf.Tensor] | None:
        """`_train_step` on the first `count` steps' batches in turn: `stacked` as `_train_step`
        takes its tensors, each with the steps along a first dimension."""

        def step(i: tf.Tensor) -> dict[str, tf.Tensor] | None:
            return self._train_step(*(tf.nest.map_structure(lambda t: t[i], t) for t in stacked))

        def body(i: tf.Tensor) -> tuple[tf.Tensor]:
            step(i)
            return (i + 1,)

        # Histograms want the last step's gradients: that step runs after the loop, which
        # returns nothing. One iteration at a time: each step reads the variables the one before
        # it assigned.
        loop_steps = count - 1 if self._keep_gradients else count
        tf.while_loop(lambda i: i < loop_steps, body, (tf.constant(0),), parallel_iterations=1)
        return step(count - 1) if self._keep_gradients else None

    def _eval_step(self, batch: Batch) -> None:
        self._graph_call(self._trace("eval", (1,), [batch], lambda: self._eval_step_impl), *batch)

    def _graph_call(self, function: Callable[..., Any], *args: Any) -> Any:
        """Calls a traced step. Where tracing finds Python control flow on a tensor's value,
        which no graph records, every step runs eagerly from then on (as torch's steps do where
        its capture fails), and one info line says why. Tracing changes no variable, so the
        step that failed to trace runs again, eagerly."""
        try:
            return function(*args)
        except tf.errors.OperatorNotAllowedInGraphError as err:
            if self.eager or self._eager_because is not None:
                raise
            self._eager_because = (
                "the model or loss branches or loops on a tensor's value (a Python `if`, "
                "`while` or `for` on a tensor), which a graph cannot record; keras.ops.cond, "
                "keras.ops.where or keras.ops.while_loop can"
            )
            log.info(
                "tf.function: the steps run eagerly, as plain Keras on TensorFlow (same results, "
                "slower steps): %s", self._eager_because,
            )  # fmt: skip
            log.debug("tf.function: %s: %s", type(err).__name__, err)
            tf.config.run_functions_eagerly(True)
            return function(*args)

    def profiler(self, directory: Path) -> Recorder:
        from dualtrain.engines.tf_profile import TensorFlowRecorder

        return TensorFlowRecorder(directory)

    def count_flops(self, x: Any, y: Any) -> Flops:
        from dualtrain.engines import tf_flops

        return tf_flops.count(self.model, self.state.phases, self.state.phase_variables, x, y)

    # -- the steps -------------------------------------------------------------------------------

    def _train_step(self, *tensors: tf.Tensor) -> dict[str, tf.Tensor] | None:
        batches = self._augment(list(zip(tensors[0::2], tensors[1::2], strict=True)))
        total = tf.add_n([tf.shape(structure.first(x))[0] for x, _ in batches])
        all_grads, losses = [], []
        for phase, optimizer, variables in zip(
            self.phases, self.state.optimizers, self.state.phase_variables, strict=True
        ):
            # Phases run in order, in the same graph: each sees the updates of the ones before.
            grads: list[Any] = [None] * len(variables)
            loss = tf.zeros(())
            for x, y in batches:  # unrolled: one tape per batch, one batch's activations live
                share = tf.cast(tf.shape(structure.first(x))[0], tf.float32) / tf.cast(
                    total, tf.float32
                )
                with tf.GradientTape() as tape:
                    batch_loss = (
                        tf.cast(phase.loss(self.model, x, targets(y), True), tf.float32) * share
                    )
                    scaled = optimizer.scale_loss(batch_loss)  # mixed_float16: loss scaling
                batch_grads = [_dense(g) for g in tape.gradient(scaled, variables)]
                grads = [_add(a, b) for a, b in zip(grads, batch_grads, strict=True)]
                loss += batch_loss
            grads, loss, samples = self._all_reduce(grads, loss, total)

            def update(grads: Any, optimizer: Any = optimizer, variables: Any = variables) -> None:
                optimizer.apply(grads, variables)

            # In the graph: the loss is checked without leaving the device.
            self._cond(tf.math.is_finite(loss), update, _nothing, grads)
            all_grads.append(grads)
            losses.append(loss)

        def track(losses: list[tf.Tensor], samples: tf.Tensor) -> None:
            self.state.train_loss.update_state(tf.add_n(losses), sample_weight=samples)
            for metric, loss in zip(self.state.phase_train_losses, losses, strict=False):
                metric.update_state(loss, sample_weight=samples)

        finite = tf.reduce_all([tf.math.is_finite(loss) for loss in losses])
        self._cond(finite, track, lambda *_: self.state.record_nonfinite(), losses, samples)
        self.state.update_average()
        self.state.steps_run.assign(self.state.steps_run.value + 1)
        return self._gradients_by_path(all_grads)

    def _cond(self, pred: tf.Tensor, true_fn: Branch, false_fn: Branch, *args: Any) -> None:
        """`true_fn(*args)` if `pred`, else `false_fn(*args)`, in the graph. Under tf.distribute
        the branches run in a cross-replica context (engines/tf_distribute.py)."""
        tf.cond(pred, lambda: true_fn(*args), lambda: false_fn(*args))

    def _all_reduce(
        self, grads: list[Any], loss: tf.Tensor, total: tf.Tensor
    ) -> tuple[list[Any], tf.Tensor, tf.Tensor]:
        """The gradients, loss and sample count of the whole step's batch: here, this process's.
        Under tf.distribute, `DistributedTensorFlowEngine` sums them across replicas
        (engines/tf_distribute.py)."""
        return grads, loss, total

    def _eval_step_impl(self, x: Any, y: Any) -> None:
        self._evaluate_batch(x, y, tf.shape(structure.first(x))[0])

    # -- data ------------------------------------------------------------------------------------

    def _pipeline(self, arrays: tuple[Any, Any], order: list[np.ndarray]) -> Iterable[Batch]:
        """The given batches of the split, in order.

        Arrays in memory are gathered eagerly, one `tf.gather` per tensor for 32 batches at a
        time (`_gathered`). A tf.data pipeline costs more here: built anew each epoch for the
        epoch's order, it retraces its map function, and each batch through it takes longer
        (docs/performance.md, "Measured choices").

        Features on disk (`Rows`: files to read or images to decode) go through tf.data, read in
        Python by `tf.numpy_function`, several batches at once and prefetched: file reads and
        Pillow's decoding release the GIL.
        """
        x, y = arrays
        if not isinstance(x, Rows):
            return _gathered(x, y, order)
        indices = tf.data.Dataset.from_tensor_slices(np.concatenate(order))
        batch_size = len(order[0])
        return (
            indices.batch(batch_size)
            .map(self._gather(*arrays), num_parallel_calls=tf.data.AUTOTUNE)
            .prefetch(tf.data.AUTOTUNE)
        )

    def _gather(self, x: Any, y: Any) -> Callable[[tf.Tensor], Batch]:
        """The function that turns a batch's indices into its (features, targets)."""
        if not isinstance(x, Rows):
            return lambda i: _take(x, y, i)
        spec = self._batch_signature[0]

        def gather(i: tf.Tensor) -> Batch:
            features = tf.numpy_function(x.__getitem__, [i], spec.dtype, stateful=False)
            features.set_shape(spec.shape)
            return features, _take(None, y, i)[1]

        return gather


def _gathered(x: Any, y: Any, order: list[np.ndarray]) -> Iterator[Batch]:
    """The batches of `order`, gathered `GATHER_BATCHES` at a time: one `tf.gather` per tensor
    for all of them, then one `tf.split` into batches. Each eager op costs its dispatch, about
    0.15 ms on this project's CPU whatever its size, which a small model's step felt: one gather
    per tensor per batch made the zoo's two-input model's steps 1.48x as long (in one process,
    1.87 against 1.27 ms; docs/performance.md)."""
    for start in range(0, len(order), GATHER_BATCHES):
        part = order[start : start + GATHER_BATCHES]
        sizes = [len(batch) for batch in part]
        xs, ys = _take(x, y, tf.constant(np.concatenate(part)))
        yield from zip(_split(xs, sizes), _split(ys, sizes), strict=True)


def _split(value: Any, sizes: list[int]) -> list[Any]:
    """A structure of tensors as one structure per batch of `sizes` rows (`_stack`'s inverse)."""

    def split(t: tf.Tensor) -> list[tf.Tensor]:
        with tf.device(t.device):  # where it was gathered, as `_take`
            return tf.split(t, sizes)

    parts = [split(t) for t in tf.nest.flatten(value)]
    return [tf.nest.pack_sequence_as(value, [p[i] for p in parts]) for i in range(len(sizes))]


def _take(x: Any, y: Any, indices: tf.Tensor) -> Batch:
    """The rows `indices` of every tensor of x and y (y: () where there are no targets)."""

    def gather(t: tf.Tensor) -> tf.Tensor:
        with tf.device(t.device):  # where the data lives (backend.data_on_device)
            return tf.gather(t, indices)

    return structure.map_leaves(gather, x), structure.map_leaves(gather, y)


def _dense(grad: Any) -> Any:
    """An Embedding's gradient as one dense tensor, as torch computes it.

    tf gives it as IndexedSlices with one slice per looked-up id, repeats included; Keras's
    optimizers then update each repeat's slice on its own (Adam squares each slice, not their
    sum), so rows looked up several times in a batch moved differently than on torch.
    """
    return tf.convert_to_tensor(grad) if isinstance(grad, tf.IndexedSlices) else grad


def _nothing(*args: Any) -> None:
    pass


def _add(total: tf.Tensor | None, grad: tf.Tensor | None) -> tf.Tensor | None:
    if grad is None:
        return total
    return grad if total is None else total + grad


def _as_tensors(split: ArrayDataset | BatchSplit, on_device: bool) -> tuple[Any, Any] | None:
    """Arrays in memory as constants, on the device (`on_device`) or in host memory, whence the
    steps copy each gathered batch; features on disk stay `Rows`, read batch by batch; None for
    a batch source, whose batches are converted as they come."""
    if isinstance(split, BatchSplit):
        return None
    with contextlib.nullcontext() if on_device else tf.device("/CPU:0"):
        x = structure.map_leaves(tf.constant, split.x) if split.in_memory else split.x
        y = () if split.y is None else structure.map_leaves(tf.constant, split.y)
    return x, y


def _signature(info: DataInfo, batch_size: int | None = None) -> list[Any]:
    """The (features, targets) TensorSpecs of a batch, from the data's description: the batch
    size (None: any), each input's and target's sample shape and dtype, in the data's
    structure."""

    def specs(arrays: tuple[ArraySpec, ...], kind: str) -> Any:
        named = {a.name: tf.TensorSpec((batch_size, *a.shape), a.dtype) for a in arrays}
        return () if kind == structure.NONE else structure.rebuild(kind, named)

    return [specs(info.inputs, info.input_kind), specs(info.targets, info.target_kind)]


def _same_shape(groups: list[list[Batch]]) -> list[list[list[Batch]]]:
    """`groups` (each one step's batches) as runs of consecutive steps whose tensors have the
    same shapes, which stack."""
    runs: list[tuple[list[Any], list[list[Batch]]]] = []
    for group in groups:
        shapes = [tuple(t.shape) for t in tf.nest.flatten(group)]
        if runs and runs[-1][0] == shapes:
            runs[-1][1].append(group)
        else:
            runs.append((shapes, [group]))
    return [run for _, run in runs]


def _stack(batches: list[Batch]) -> Batch:
    """Batches of the same shapes as one, each tensor with the batches along a new first
    dimension."""
    x, y = tf.nest.map_structure(lambda *ts: tf.stack(ts), *batches)
    return x, y


def _batch_size(x: Any) -> int | None:
    """A batch's size as its first feature's static shape gives it (None where unknown)."""
    size = structure.first(x).shape[0]
    return None if size is None else int(size)


def _from_numpy(batches: Iterable[tuple[Any, Any]]) -> Iterator[Batch]:
    """A batch source's NumPy batches as tensors (targets: () where there are none)."""
    for x, y in batches:
        yield (
            structure.map_leaves(tf.constant, x),
            () if y is None else structure.map_leaves(tf.constant, y),
        )
