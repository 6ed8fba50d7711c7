"""The TensorFlow engine under tf.distribute: MirroredStrategy (the devices of one machine) or
MultiWorkerMirroredStrategy (one process per worker, the cluster in TF_CONFIG).

What tf.distribute asks for, and where it happens here:

- model, metrics and optimizers are built inside `strategy.scope()`, so their variables are
  mirrored on every replica (`setup`);
- the data goes through the strategy (`distribute_datasets_from_function`): each input pipeline
  (one per worker) gathers, for every global batch of `data.batch_size` samples, the shards of its
  own replicas, split as on torch (`numpy.array_split`), so both backends cut batches alike;
- each step runs in every replica with `strategy.run`; inside, the replica sums its gradients,
  loss and sample count with the others' (`ReplicaContext.all_reduce`), weighted by its share of
  the global batch, so every replica applies the gradient of the global batch's mean loss, as one
  process would. Keras's optimizer would all-reduce (sum) the gradients once more, which would
  multiply them by the number of replicas; `compat.skip_optimizer_all_reduce` turns that off,
  and `compat.unscaled_keras_losses` undoes Keras losses' division by the number of replicas;
- metrics' variables aggregate by sum across replicas (Keras creates them so), so val metrics and
  the logged train loss are global values.

Only the chief writes (`dualtrain.distributed.is_writer`). Collectives time out after
`backend.collective_timeout_s` (MultiWorkerMirroredStrategy's CommunicationOptions).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import tensorflow as tf

from dualtrain import compat
from dualtrain.data import structure
from dualtrain.distributed import tf_config
from dualtrain.engines.base import NOT_SHARDED, Batch
from dualtrain.engines.tensorflow import Branch, TensorFlowEngine, graph_function, training_ops
from dualtrain.errors import RunError


class DistributedTensorFlowEngine(TensorFlowEngine):
    """The tf engine with `backend.strategy=mirrored|multi_worker`."""

    @contextlib.contextmanager
    def _building(self) -> Iterator[None]:
        # tf.distribute logs every collective it builds at INFO; warnings and errors stay.
        logging.getLogger("tensorflow").setLevel(logging.WARNING)
        self.strategy = self._make_strategy()
        compat.check_unscaled_keras_losses()
        # Gradients are reduced inside the replicas; histograms show weights only.
        self._keep_gradients = False
        with self.strategy.scope():  # variables, optimizers and steps are the strategy's
            yield

    def _make_steps(self) -> None:
        super()._make_steps()
        for optimizer in self.state.optimizers:
            compat.skip_optimizer_all_reduce(optimizer)
        self._dist_train_fns: dict[int, Any] = {}
        self._read_train_fn = self.state.read_train_values
        self._dist_eval_fn = graph_function(_unscaled(
            lambda x, y: self.strategy.run(self._eval_step_impl, args=(x, y))
        ), reduce_retracing=True)  # fmt: skip

    def _resolve_jit(self, choice: str) -> bool:
        # The steps synchronize replicas inside (merge_call), which XLA-compiled replica functions
        # do not allow on CPUs; auto is off here.
        if choice == "true":
            raise RunError(
                f"backend.jit_compile=true is not supported with backend.strategy="
                f"{self.settings.backend.strategy}; use backend.jit_compile=auto or false"
            )
        return False

    def distributed_info(self) -> dict[str, Any]:
        config = tf_config()
        return {
            "world_size": self.strategy.num_replicas_in_sync,
            "backend": compat.cross_device_ops_name(self.strategy)
            if self.settings.backend.strategy == "mirrored"
            else "collective",
            "strategy": self.settings.backend.strategy,
            "workers": len(config["cluster"]["worker"]) if config else 1,
        }

    def train_loss_state(self) -> list[float]:
        # Every replica adds the same global values (the step reduces them first), so each
        # replica's copy of the sync-on-read variables already holds what one process would.
        # Read locally: a synchronized read would be a collective, and only the chief saves.
        return [
            float(self.strategy.experimental_local_results(v.value)[0].numpy())
            for v in self.state.train_loss.variables
        ]

    def restore_train_loss_state(self, values: list[float]) -> None:
        for variable, value in zip(self.state.train_loss.variables, values, strict=True):
            for local in self.strategy.experimental_local_results(variable.value):
                local.assign(value)

    def _make_strategy(self) -> tf.distribute.Strategy:
        backend = self.settings.backend
        if backend.strategy == "multi_worker":
            options = tf.distribute.experimental.CommunicationOptions(
                timeout_seconds=backend.collective_timeout_s
            )
            return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
        if backend.cpu_replicas > 1 and not tf.config.list_physical_devices("GPU"):
            cpu = tf.config.list_physical_devices("CPU")[0]
            try:
                tf.config.set_logical_device_configuration(
                    cpu, [tf.config.LogicalDeviceConfiguration()] * backend.cpu_replicas
                )
            except RuntimeError as err:
                raise RunError(
                    f"backend.cpu_replicas={backend.cpu_replicas}: TensorFlow's devices were "
                    f"already set up in this process ({err}); run it in a new process"
                ) from err
            devices = [f"/cpu:{i}" for i in range(backend.cpu_replicas)]
            return tf.distribute.MirroredStrategy(
                devices, cross_device_ops=tf.distribute.ReductionToOneDevice()
            )
        return tf.distribute.MirroredStrategy()

    # -- data: each input pipeline serves the shards of its replicas ------------------------------

    def _source_batches(self, batches: Iterable[tuple[Any, Any]]) -> Iterable[Batch]:
        raise RunError(NOT_SHARDED)

    def _pipeline(self, arrays: tuple[Any, Any], order: list[np.ndarray]) -> Any:
        """The given batches, each split into the replicas' shards, as a distributed dataset."""
        replicas = self.strategy.num_replicas_in_sync
        smallest = min((len(b) for b in order), default=replicas)
        if smallest < replicas:
            raise RunError(
                f"a batch of {smallest} samples cannot be split across {replicas} replicas; use "
                f"data.batch_size >= {replicas} and a split whose last batch has at least that "
                "many samples"
            )
        shards = [np.array_split(b, replicas) for b in order]
        gather_batch = self._gather(*arrays)  # in memory, or read from disk (tensorflow.py)

        def pipeline(context: tf.distribute.InputContext) -> tf.data.Dataset:
            local = replicas // context.num_input_pipelines
            first = context.input_pipeline_id * local
            # Per global batch, this pipeline's replicas' shards in replica order: the strategy
            # hands consecutive elements to its local replicas in turn.
            mine = [s for batch in shards for s in batch[first : first + local]]
            lengths = np.array([len(s) for s in mine], np.int64)
            starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
            flat = tf.constant(np.concatenate(mine))

            def gather(start: tf.Tensor, length: tf.Tensor) -> Batch:
                return gather_batch(flat[start : start + length])

            return (
                tf.data.Dataset.from_tensor_slices((starts, lengths))
                .map(gather, num_parallel_calls=tf.data.AUTOTUNE)
                .prefetch(tf.data.AUTOTUNE)
            )

        return self.strategy.distribute_datasets_from_function(pipeline)

    def batch_size(self, batch: Batch) -> int:  # type: ignore[override]
        # Samples of the global batch, for throughput: this worker's shards times the workers
        # (exact but for an epoch's last batch when it does not split evenly).
        local = self.strategy.experimental_local_results(structure.first(batch[0]))
        workers = self.strategy.num_replicas_in_sync // max(1, len(local))
        return sum(int(t.shape[0]) for t in local) * workers

    # -- the steps ---------------------------------------------------------------------------------

    def train_step(self, batches: list[Batch]) -> None:
        count = len(batches)
        if count not in self._dist_train_fns:

            def step(*tensors: Any) -> None:
                self.strategy.run(self._train_step, args=tensors)

            self._dist_train_fns[count] = graph_function(
                training_ops(_unscaled(step)), reduce_retracing=True
            )
        self._graph_call(self._dist_train_fns[count], *(t for batch in batches for t in batch))
        self._last_gradients = None

    def train_steps(self, groups: list[list[Batch]]) -> None:
        # One strategy.run per step (backend.steps_per_execution only sets the logging cadence).
        for batches in groups:
            self.train_step(batches)

    def _eval_step(self, batch: Batch) -> None:
        self._graph_call(self._dist_eval_fn, *batch)

    def _cond(self, pred: tf.Tensor, true_fn: Branch, false_fn: Branch, *args: Any) -> None:
        """In a replica: a branch that synchronizes replicas (the optimizer update, metric
        updates). tf.cond in a replica cannot hold a synchronization point (merge_call), so the
        condition is taken in the cross-replica context and each branch runs the function in
        every replica again, as Keras's LossScaleOptimizer does. `pred` is the same in every
        replica (it is computed from reduced values): the first replica's stands for all."""

        def cross_replica(strategy: Any, pred: Any, *args: Any) -> None:
            first = strategy.experimental_local_results(pred)[0]
            tf.cond(
                first,
                lambda: strategy.extended.call_for_each_replica(true_fn, args=args),
                lambda: strategy.extended.call_for_each_replica(false_fn, args=args),
            )

        tf.distribute.get_replica_context().merge_call(cross_replica, args=(pred, *args))

    def _all_reduce(
        self, grads: list[Any], loss: tf.Tensor, total: tf.Tensor
    ) -> tuple[list[Any], tf.Tensor, tf.Tensor]:
        """In a replica: the global batch's mean-loss gradients, its loss and its sample count."""
        context = tf.distribute.get_replica_context()
        weight = tf.cast(total, tf.float32)
        present = [tf.convert_to_tensor(g) for g in grads if g is not None]
        reduced = context.all_reduce(
            tf.distribute.ReduceOp.SUM,
            [g * tf.cast(weight, g.dtype) for g in present] + [tf.stack([loss * weight, weight])],
        )
        loss_sum, samples = reduced[-1][0], reduced[-1][1]
        present_iter = iter(g / tf.cast(samples, g.dtype) for g in reduced[:-1])
        out = [None if g is None else next(present_iter) for g in grads]
        return out, loss_sum / samples, tf.cast(tf.round(samples), total.dtype)


def _unscaled(function: Callable[..., Any]) -> Callable[..., Any]:
    """`function` with Keras's losses unscaled while it runs (`compat.unscaled_keras_losses`).

    Keras decides the scaling while tf.function traces a step, so only the traced Python body
    is wrapped: a compiled step runs no Python, and the module's function is restored after each
    trace rather than replaced for the whole process.
    """

    @functools.wraps(function)
    def unscaled(*args: Any) -> Any:
        with compat.unscaled_keras_losses():
            return function(*args)

    return unscaled
