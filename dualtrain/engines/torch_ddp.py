"""Data parallelism for the torch engine under torchrun: torch.distributed collectives on the Keras
model's own parameters.

DistributedDataParallel's module wrapper is not used: a Keras model wrapped in DDP is no longer a
Keras model (keras #19277: no `trainable_variables`, no Keras optimizer on it), and the steps here
call Keras layers and optimizers directly. The engine does DDP's work itself, in the same order:

- at start, every variable (model and optimizer) is broadcast from rank 0, as DDP does;
- each rank trains on its shard of every global batch (`data.batch_size` samples, split with
  `numpy.array_split`, so shards differ by at most one sample);
- after backward, the gradients are flattened into buckets of at most `_BUCKET_BYTES` (DDP's
  default bucket cap) and all-reduced (sum); each rank's gradient is weighted by its share of the
  global batch first, so the result is the gradient of the global batch's mean loss, exactly what
  one process computes. The loss and the sample count travel in the last bucket, so every rank
  logs the global batch's loss and agrees on whether it was finite;
- every rank applies the same update to the same weights, so all ranks keep identical weights.

Validation runs on shards too; the metrics' state variables (totals and counts) are summed across
ranks before they are read. The process group uses gloo on CPU and nccl on GPU; its timeout is
`backend.collective_timeout_s`, so a rank that dies or hangs fails the others within it.
"""

from __future__ import annotations

import atexit
import contextlib
import os
from collections.abc import Iterable, Iterator
from datetime import timedelta
from typing import Any

import keras
import numpy as np
import torch
import torch.distributed as dist

from dualtrain.data import ArrayDataset
from dualtrain.distributed import restart_count
from dualtrain.engines.base import NOT_SHARDED, Batch, rows
from dualtrain.engines.torch import TorchEngine
from dualtrain.errors import RunError, first_line

_BUCKET_BYTES = 25 * 2**20  # DistributedDataParallel's bucket_cap_mb default


class DistributedTorchEngine(TorchEngine):
    """The torch engine on one rank of a torchrun job (any world size, 1 included)."""

    @contextlib.contextmanager
    def _building(self) -> Iterator[None]:
        self.rank = int(os.environ["RANK"])
        self.world_size = int(os.environ["WORLD_SIZE"])
        self._init_process_group()
        yield

    def _make_steps(self) -> None:
        super()._make_steps()
        # The same seed builds the same weights on every rank; the broadcast makes sure of it
        # (as DDP does), whatever a recipe's build draws.
        self._broadcast([*self.model.variables, *self.state.optimizer_variables()])

    def distributed_info(self) -> dict[str, Any]:
        return {
            "world_size": self.world_size,
            "backend": self.communication,
            "strategy": "torchrun",
            "rank": self.rank,
        }

    def _init_process_group(self) -> None:
        timeout = timedelta(seconds=self.settings.backend.collective_timeout_s)
        self.communication = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            # Before the model is built: Keras puts variables on the current device.
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        if dist.is_initialized():
            return
        options: dict[str, Any] = {}
        if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
            # torchrun's agent keeps its store across elastic restarts, and with it the
            # addresses that the previous attempt's ranks published: a restarted rank that reads
            # them before its peers publish new ones connects to a dead address. A prefix per
            # attempt keeps each attempt's keys apart.
            agent_store = dist.TCPStore(
                os.environ["MASTER_ADDR"],
                int(os.environ["MASTER_PORT"]),
                is_master=False,
                timeout=timeout,
            )
            options = {
                "store": dist.PrefixStore(f"dualtrain/attempt-{restart_count()}/", agent_store),
                "rank": self.rank,
                "world_size": self.world_size,
            }
        try:
            dist.init_process_group(self.communication, timeout=timeout, **options)
        except (RuntimeError, ValueError) as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise RunError(
                f"rank {self.rank} of {self.world_size}: could not join the process group "
                f"({self.communication}) within backend.collective_timeout_s="
                f"{timeout.total_seconds():g} s: {first[:200]}"
            ) from err
        atexit.register(_destroy_process_group)

    # -- data: this rank's shard of each global batch ---------------------------------------------

    def _batch_order(self, split: ArrayDataset, epoch: int | None) -> list[np.ndarray]:
        order = super()._batch_order(split, epoch)
        smallest = min((len(b) for b in order), default=self.world_size)
        if smallest < self.world_size:
            raise RunError(
                f"a batch of {smallest} samples cannot be split across {self.world_size} ranks; "
                f"use data.batch_size >= {self.world_size} and a split whose last batch has at "
                "least that many samples"
            )
        return [np.array_split(b, self.world_size)[self.rank] for b in order]

    def _source_batches(self, batches: Iterable[tuple[Any, Any]]) -> Iterable[Batch]:
        raise RunError(NOT_SHARDED)

    def batch_size(self, batch: Batch) -> int:  # type: ignore[override]
        # Samples of the global batch, for throughput: this rank's shard times the world size
        # (exact but for an epoch's last batch when it does not split evenly).
        return int(rows(batch[0])) * self.world_size

    # -- the collectives ---------------------------------------------------------------------------

    def _all_reduce(
        self, grads: list[torch.Tensor | None], loss: torch.Tensor, total: int
    ) -> tuple[list[torch.Tensor | None], torch.Tensor, int]:
        """The global batch's mean-loss gradients, its loss and its sample count."""
        present = [g for g in grads if g is not None]
        weight = float(total)
        tensors = [g * weight for g in present]
        tensors.append(torch.stack([loss.detach().float() * weight, loss.new_tensor(weight)]))
        reduced = self._sum(tensors, "gradient all-reduce")
        loss_sum, samples = reduced[-1][0], reduced[-1][1]
        present_iter = iter(g / samples for g in reduced[:-1])
        out = [None if g is None else next(present_iter) for g in grads]
        return out, loss_sum / samples, round(float(samples))

    def _reduce_metrics(self, metrics: list[keras.metrics.Metric]) -> None:
        """Sums the metrics' state (totals, counts) across ranks, before their results are read."""
        variables = [v for m in metrics for v in m.variables]
        reduced = self._sum([v.value.detach() for v in variables], "metric all-reduce")
        for variable, value in zip(variables, reduced, strict=True):
            variable.assign(value)

    def _sum(self, tensors: list[torch.Tensor], what: str) -> list[torch.Tensor]:
        """All-reduces (sum) `tensors` in flattened buckets, one bucket per dtype and size cap."""
        out: list[torch.Tensor | None] = [None] * len(tensors)
        for bucket in _buckets(tensors):
            flat = torch.cat([tensors[i].reshape(-1) for i in bucket])
            self._collective(lambda flat=flat: dist.all_reduce(flat), what)
            offset = 0
            for i in bucket:
                size = tensors[i].numel()
                out[i] = flat[offset : offset + size].view_as(tensors[i])
                offset += size
        return [t for t in out if t is not None]

    def _broadcast(self, variables: list[Any]) -> None:
        for variable in variables:
            value = variable.value.detach().clone()
            self._collective(lambda value=value: dist.broadcast(value, src=0), "broadcast")
            variable.assign(value)

    def _collective(self, run: Any, what: str) -> None:
        try:
            run()
        except RuntimeError as err:  # gloo and nccl report a dead or silent peer this way
            raise RunError(
                f"rank {self.rank} of {self.world_size}: the {what} failed: another rank died or "
                f"did not answer within backend.collective_timeout_s="
                f"{self.settings.backend.collective_timeout_s:g} s ({first_line(err, 200)})"
            ) from err


def _buckets(tensors: list[torch.Tensor]) -> Iterator[list[int]]:
    """Indices of `tensors` in groups of one dtype and at most `_BUCKET_BYTES` (order kept)."""
    current: list[int] = []
    size = 0
    for i, tensor in enumerate(tensors):
        nbytes = tensor.numel() * tensor.element_size()
        if current and (size + nbytes > _BUCKET_BYTES or tensor.dtype != tensors[current[0]].dtype):
            yield current
            current, size = [], 0
        current.append(i)
        size += nbytes
    if current:
        yield current


def _destroy_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
