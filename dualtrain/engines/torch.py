"""The PyTorch engine: eager steps with native autograd on the Keras model's parameters."""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import logging
import os
import platform
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from dualtrain import compat
from dualtrain.data import ArrayDataset, BatchSplit, structure
from dualtrain.engines.base import EAGER_MODE, Batch, Engine, rows, targets
from dualtrain.engines.torch_adam import FusedAdam, fuse_adam
from dualtrain.model_summary import Flops
from dualtrain.profiling import Recorder
from dualtrain.recipe import Phase

log = logging.getLogger("dualtrain")


class TorchEngine(Engine):
    name = "torch"

    def _resolve_jit(self, choice: str) -> bool:
        # auto = off: on a CPU, torch.compile of the cnn step compiled for over a minute and then
        # ran no faster than eager (docs/performance.md, "Measured choices").
        return choice == "true"

    def _seed_framework(self, seed: int) -> None:
        torch.manual_seed(seed)

    def _set_determinism(self, on: bool) -> None:
        # As Lightning's Trainer(deterministic=True). cuBLAS is deterministic only with a fixed
        # workspace, which it reads when CUDA starts (after this, in _make_steps).
        if on:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(on)
        torch.backends.cudnn.deterministic = on
        if on:
            torch.backends.cudnn.benchmark = False  # autotuning picks kernels by timing

    # Keras's Dropout without a seed draws its masks from torch's global RNG on this backend (on tf
    # it uses the layer's seed-generator variable, which the checkpoint holds), so exact resume
    # needs this state too.
    def framework_rng_state(self) -> list[int] | None:
        return [int(b) for b in torch.get_rng_state().tolist()]

    def restore_framework_rng_state(self, state: list[int]) -> None:
        torch.set_rng_state(torch.tensor(state, dtype=torch.uint8))

    def _make_steps(self) -> None:
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.settings.backend.keep_host_memory:
            problem = keep_freed_host_memory()
            if problem is not None:
                log.debug("backend.keep_host_memory: not applied: %s", problem)
        self._train_fn = self._train_step
        self._eval_fn = self._eval_step_impl
        self._read_train_fn = self.state.read_train_values
        self._loss_accumulators = [
            compat.mean_accumulators(metric)
            for metric in [self.state.train_loss, *self.state.phase_train_losses]
        ]
        if self.jit_compile:
            self._train_fn = torch.compile(self._train_step)
            self._eval_fn = torch.compile(self._eval_step_impl)
        # Arrays in memory that fit: on the device once, gathered there (as the tf engine does);
        # other arrays: DataLoaders that gather batches by index in host memory (batch sources
        # make their own batches).
        self._resident = {
            id(split): _on(self.device, split)
            for split in (self.data.train, self.data.val)
            if isinstance(split, ArrayDataset) and self._on_device(split)
        }
        self._train_loader = self._loader(self.data.train)
        self._val_loader = self._loader(self.data.val)
        self._captures: list[Any] = []
        if self.settings.backend.capture_forward and not self.jit_compile and not self.eager:
            self._captures = self._capture_forward()
        # Adam and AdamW: Keras's update arithmetic in torch's one-pass kernel (torch_adam.py).
        # Not under torch.compile, which traces the update and cannot functionalize the kernel.
        self._fused: list[FusedAdam | None] = []
        for optimizer in self.state.optimizers:
            fused = "torch.compile" if self.jit_compile else fuse_adam(optimizer)
            if isinstance(fused, str):
                log.debug("optimizer %s: Keras's own update: %s", optimizer.name, fused)
            self._fused.append(None if isinstance(fused, str) else fused)

        self._steps: list[Any] = [None] * len(self.phases)
        self._update_graphs: list[Any] = [None] * len(self.phases)
        if self._captures and self.settings.backend.capture_step:
            self._capture_steps()

    def _steps_capturable(self) -> bool:
        """Whole steps are captured for steps of one batch that hand nothing back: not with
        gradient accumulation, gradient histograms or a distributed sum of the gradients."""
        return (
            self.settings.trainer.grad_accum_steps == 1
            and not self._keep_gradients
            and type(self)._all_reduce is TorchEngine._all_reduce
        )

    def _capture_steps(self) -> None:
        """Each phase's whole step as one graph where steps allow it (torch_graph.CapturedStep),
        and its optimizer update as a graph of its own, for the steps that are not one graph
        (torch_graph.CapturedUpdate)."""
        from dualtrain.engines.torch_graph import CapturedStep, CapturedUpdate

        variables = list(self.model.variables)
        whole = self._steps_capturable()
        for i, (phase, optimizer, fused, phase_variables) in enumerate(
            zip(
                self.state.phases,
                self.state.optimizers,
                self._fused,
                self.state.phase_variables,
                strict=True,
            )
        ):
            if whole:
                self._steps[i] = CapturedStep(
                    _training_loss(phase, self.model),
                    variables,
                    phase_variables,
                    optimizer,
                    fused,
                    f"the {phase.name} step",
                )
            self._update_graphs[i] = CapturedUpdate(
                optimizer, fused, phase_variables, f"the {phase.name} update"
            )

    def _array_batches(
        self, split: ArrayDataset, order: list[np.ndarray], train: bool
    ) -> Iterable[Batch]:
        resident = self._resident.get(id(split))
        if resident is not None:
            return _gathered(*resident, order, self.device)
        loader = self._train_loader if train else self._val_loader
        assert loader is not None
        loader.sampler.order = order  # type: ignore[attr-defined]
        return self._to_device(loader)

    def _source_batches(self, batches: Iterable[tuple[Any, Any]]) -> Iterable[Batch]:
        return self._to_device(_from_numpy(batches))

    # Every step, captured or eager, runs Keras's layers with dualtrain's torch ops: seeded random
    # numbers drawn in tensor arithmetic, and torch's own kernels for BatchNormalization, 1-D
    # convolutions and GRU/LSTM (compat.torch_step_ops). The tf engine needs none of these:
    # Keras's tf backend draws in the graph and runs tf's own kernels.
    def train_step(self, batches: list[Batch]) -> None:
        with compat.torch_step_ops():
            self._last_gradients = self._train_fn(batches)

    def _eval_step(self, batch: Batch) -> None:
        with compat.torch_step_ops():
            self._eval_fn(*batch)
        self._apply_updates()

    def profiler(self, directory: Path) -> Recorder:
        from dualtrain.engines.torch_profile import TorchRecorder

        return TorchRecorder(directory, self.device)

    def count_flops(self, x: Any, y: Any) -> Flops:
        from dualtrain.engines import torch_flops

        # The state's phases, not their captured forms: the counter sees eager ATen ops.
        return torch_flops.count(self.model, self.state.phases, self.state.phase_variables, x, y)

    def step_mode(self) -> str:
        if self.eager:
            return EAGER_MODE
        if self.jit_compile:
            return "compiled with torch.compile (backend.jit_compile=true)"
        if any(step is not None for step in self._steps + self._update_graphs):
            return (
                "as one captured graph per optimizer step where the model and optimizer allow, "
                "else with the forward pass and loss and the optimizer's update as captured "
                "graphs (backend.capture_step, backend.capture_forward; debug=eager for pdb)"
            )
        if self._captures:
            return (
                "with the forward pass and loss as captured graphs (backend.capture_forward; "
                "debug=eager for pdb)"
            )
        return "eagerly (plain Keras on torch)"

    def _capture_forward(self) -> list[Any]:
        """backend.capture_forward: the phases' training losses and the eval forward pass run as
        captured ATen graphs (engines/torch_graph.py), each eagerly where that is not safe."""
        from dualtrain.engines.torch_graph import CapturedFunction

        variables = list(self.model.variables)
        captures = []
        for i, phase in enumerate(self.phases):
            captured = CapturedFunction(
                _training_loss(phase, self.model),
                variables,
                f"the {phase.name} loss",
            )
            self.phases[i] = _captured_phase(phase, self.model, captured)
            captures.append(captured)
        model = self.model
        self._predict = CapturedFunction(
            lambda x: model(x, training=False), variables, "the eval forward pass"
        )
        return [*captures, self._predict]

    def step_capture(self) -> dict[str, Any]:
        record = super().step_capture()
        steps = [s for s in self._steps if s is not None]
        reasons = [s.failed for s in steps if s.failed]
        record["whole_step"] = bool(steps) and not reasons
        record["whole_step_not_captured_because"] = (
            reasons[0] if reasons else None if steps else "backend.capture_step does not apply"
        )
        # Where a step is not one graph: whether its optimizer update ran as one (None: every
        # step was one graph).
        updates = [
            u
            for s, u in zip(self._steps, self._update_graphs, strict=True)
            if s is None or s.failed
        ]
        record["update_graph"] = (
            all(u is not None and bool(u.graphs) and not u.failed for u in updates)
            if updates
            else None
        )
        return record

    def not_captured_because(self) -> str | None:
        if self._captures:
            return next((c.failed for c in self._captures if c.failed), None)
        if self.eager:
            return "debug=eager (or a debugger) runs every step op by op"
        if self.jit_compile:
            return "backend.jit_compile=true compiles the steps with torch.compile instead"
        return "backend.capture_forward=false"

    def _apply_updates(self) -> None:
        """What captured graphs computed for the variables they assign (batch norm statistics,
        seed states), assigned after the backward pass (torch_graph.py)."""
        for captured in self._captures:
            captured.apply_updates()

    # -- the steps -------------------------------------------------------------------------------

    def _train_step(self, batches: list[Batch]) -> dict[str, torch.Tensor] | None:
        batches = self._augment(batches)
        total = sum(int(rows(x)) for x, _ in batches)
        all_grads, losses, samples = [], [], total
        for phase, optimizer, fused, variables, step, update in zip(
            self.phases,
            self.state.optimizers,
            self._fused,
            self.state.phase_variables,
            self._steps,
            self._update_graphs,
            strict=True,
        ):
            # Phases run in order: each sees the variables the phases before it updated.
            if step is not None:  # one batch: the whole step as one graph, once captured
                x, y = batches[0]
                loss = step(x, targets(y))
                if loss is not None:
                    losses.append(loss)
                    continue
            grads: list[torch.Tensor | None] = [None] * len(variables)
            loss = torch.zeros((), device=self.device)
            for x, y in batches:
                share = rows(x) / total  # exactly 1.0 for a single batch
                batch_loss = _float32(phase.loss(self.model, x, targets(y), True)) * share
                batch_grads = torch.autograd.grad(
                    optimizer.scale_loss(batch_loss),
                    compat.variable_tensors(variables),
                    allow_unused=True,
                )
                self._apply_updates()
                grads = [_add(a, b) for a, b in zip(grads, batch_grads, strict=True)]
                loss = loss + batch_loss.detach()
            grads, loss, samples = self._all_reduce(grads, loss, total)
            finite = torch.isfinite(loss)
            # The update as a graph of its own where the step is not one graph (a step graph's
            # first step runs here, with the eager update it is checked against).
            graph = update if step is None or step.failed else None
            if graph is None or not graph(grads, finite):
                self._apply_if_finite(optimizer, fused, grads, variables, finite)
                if graph is not None:
                    graph.check(grads, finite)
            if step is not None:  # the first step of a batch shape: captured from this one
                step.check(batches[0][0], targets(batches[0][1]), loss)
            all_grads.append(grads)
            losses.append(loss)
        self._track(losses, samples)
        return self._gradients_by_path(all_grads)

    @torch.no_grad()
    def _track(self, losses: list[torch.Tensor], samples: int) -> None:
        """A step's bookkeeping, as the tf engine's graph does it, without reading the losses on
        the host: the loss means count a step whose losses are all finite, the non-finite record
        (state.record_nonfinite) the others; then the weight average and the step counter. In
        torch's ops, in place on the state's tensors, as `_blend` does the average: through
        Keras's metrics and variables the same arithmetic took 0.18 ms of Python a step, 0.06 ms
        so (docs/performance.md, "Measured choices"). The same float32 additions as Keras's
        `Mean.update_state` (compat.mean_accumulators)."""
        state = self.state
        finite = torch.stack([torch.isfinite(loss) for loss in losses]).all()
        weight = finite.to(torch.float32) * samples
        for metric, accumulators, loss in zip(
            [state.train_loss, *state.phase_train_losses],
            self._loss_accumulators,
            [torch.stack(losses).sum(), *losses],
            strict=False,  # one phase: no per-phase means, and only the summed loss is tracked
        ):
            value = torch.where(finite, loss, 0.0)
            if accumulators is None:
                metric.update_state(value, sample_weight=weight)
                continue
            total, count = compat.variable_tensors(accumulators)
            total.add_(value * weight)
            count.add_(weight)
        bad = (~finite).to(torch.int64)
        nonfinite, first, run = compat.variable_tensors(
            [state.nonfinite, state.first_nonfinite, state.steps_run]
        )
        nonfinite.add_(bad)
        first.copy_(torch.where((first < 0) & (bad > 0), run + 1, first))
        state.update_average(_blend)
        run.add_(1)

    @torch.no_grad()
    def _apply_if_finite(
        self,
        optimizer: Any,
        fused: FusedAdam | None,
        grads: list[torch.Tensor | None],
        variables: list[Any],
        finite: torch.Tensor,
    ) -> None:
        """`optimizer.apply(grads, variables)` where `finite` holds, and no change where it does
        not, decided on the device: reading `finite` on the host would cost a round trip (a
        sync on a GPU) in every step. The tensors the update may change are kept and put back
        where the step is skipped; those the fused Adam kernel leaves alone by itself
        (found_inf) need no copy."""
        guarded = {id(t) for t in fused.guarded(variables, grads)} if fused is not None else set()
        touched = compat.variable_tensors([*variables, *optimizer.variables])
        kept = [(t, t.clone()) for t in touched if id(t) not in guarded]
        if fused is not None:
            fused.found_inf = (~finite).to(torch.float32)
        optimizer.apply(grads, variables)
        for tensor, before in kept:
            tensor.copy_(torch.where(finite, tensor, before))

    def _all_reduce(
        self, grads: list[torch.Tensor | None], loss: torch.Tensor, total: int
    ) -> tuple[list[torch.Tensor | None], torch.Tensor, int]:
        """The gradients, loss and sample count of the whole step's batch: here, this process's.
        Under torchrun, `DistributedTorchEngine` sums them across ranks (engines/torch_ddp.py)."""
        return grads, loss, total

    @torch.no_grad()
    def _eval_step_impl(self, x: Any, y: Any) -> None:
        self._evaluate_batch(x, y, rows(x))

    # -- data ------------------------------------------------------------------------------------

    def _free_device_memory(self) -> int | None:
        if self.device.type != "cuda":
            return None
        return int(torch.cuda.mem_get_info(self.device)[0])

    def _loader(self, split: ArrayDataset | BatchSplit) -> DataLoader | None:
        """A DataLoader that serves whole batches by index; the order is set before each epoch.

        In-memory arrays are gathered faster than a worker process could hand them over, so
        `data.num_workers` defaults to 0; set it for sources that decode or read from disk
        (image_folder: 2). Workers index the split's `x` as the main process would: arrays, or
        `Rows` that read files.
        """
        if isinstance(split, BatchSplit) or id(split) in self._resident:
            return None
        workers = self.settings.data.num_workers
        return DataLoader(
            _BatchedArrays(split),
            sampler=_BatchOrder(),
            batch_size=None,  # the sampler yields whole batches of indices
            num_workers=workers,
            # Not persistent: workers of the val loader would sit beside those of the train loader.
            persistent_workers=False,
            pin_memory=self.device.type == "cuda",
            # Each new iterator draws a seed for its workers; from its own generator, not from
            # torch's global RNG, which dropout draws from and checkpoints restore: otherwise a run
            # resumed mid-epoch, or a validation pass, would shift every later dropout mask.
            generator=torch.Generator().manual_seed(self.settings.seed),
        )

    def _to_device(self, batches: Iterable[Batch]) -> Iterator[Batch]:
        """Host batches on the device, one batch ahead: the next batch's copy is under way
        while the step computes on this one. On a GPU the loaders pin the batches (copies from
        pinned memory do not block) and the copies run on a stream of their own, which the
        compute stream waits for before it reads a batch. On a CPU the same code runs, and the
        copies are no-ops."""
        stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None

        def move(batch: Batch) -> Batch:
            def to(t: torch.Tensor) -> torch.Tensor:
                return t.to(self.device, non_blocking=True)

            with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
                return structure.map_leaves(to, batch[0]), structure.map_leaves(to, batch[1])

        def ready(batch: Batch) -> Batch:
            if stream is not None:
                torch.cuda.current_stream(self.device).wait_stream(stream)
                for t in structure.leaves(batch[0]) + structure.leaves(batch[1]):
                    t.record_stream(torch.cuda.current_stream(self.device))
            return batch

        ahead: Batch | None = None
        for batch in batches:
            if ahead is not None:
                current, ahead = ahead, move(batch)
                yield ready(current)
            else:
                ahead = move(batch)
        if ahead is not None:
            yield ready(ahead)


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_freed_host_memory() -> str | None:
    """Makes glibc's malloc keep the memory a step frees for the next step; returns why not, or
    None once it does.

    torch has a caching allocator for CUDA memory, none for host memory: a CPU tensor is malloc'd
    and freed. glibc hands large blocks back to the OS when they are freed (a block above its mmap
    threshold, 128 KiB at first and at most 32 MiB as it adapts, is mmap'd and unmapped; the free
    top of the heap is trimmed), so every step asks for them again and the kernel zero-fills each
    of their pages anew: thousands of page faults a step on W3 (docs/performance.md, "Measured
    choices"). With blocks up to 1 GiB served from the heap and the heap kept (up to 2 GiB free
    at its top), the process keeps its peak host memory, as the CUDA allocator keeps its peak
    device memory. TensorFlow's allocator already keeps its memory: the tf engine needs nothing
    of this.
    """
    if platform.system() != "Linux" or not _confstr("CS_GNU_LIBC_VERSION").startswith("glibc"):
        return "not Linux with glibc"
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError) as err:
        return f"no mallopt in libc ({err})"
    # Either call also stops glibc from moving its thresholds itself.
    if not mallopt(_M_MMAP_THRESHOLD, 1 << 30) or not mallopt(_M_TRIM_THRESHOLD, 2**31 - 1):
        return "glibc refused the thresholds"
    return None


def _confstr(name: str) -> str:
    try:
        return os.confstr(name) or ""
    except (ValueError, OSError):  # a name this system does not know
        return ""


def _captured_phase(phase: Phase, model: Any, captured: Any) -> Phase:
    """The phase with its training loss captured; its eval loss stays eager (it is run rarely)."""

    def loss(m: Any, x: Any, y: Any, training: bool) -> Any:
        return captured(x, y) if training and m is model else phase.loss(m, x, y, training)

    return dataclasses.replace(phase, loss=loss)


def _training_loss(phase: Phase, model: Any) -> Callable[[Any, Any], Any]:
    """The phase's training loss as a function of (x, y)."""
    return lambda x, y: phase.loss(model, x, y, True)


def _blend(momentum: torch.Tensor, pairs: list[tuple[Any, Any]]) -> None:
    """The weight average's update (state.update_average) in plain torch ops, in place: the same
    roundings as Keras's m * a + (1 - m) * w, at a tenth of the time of keras.ops, whose
    per-call overhead was 8% of a cnn step (docs/training.md, "Weight averaging")."""
    weights = compat.variable_tensors([weight for weight, _ in pairs])
    averages = compat.variable_tensors([average for _, average in pairs])
    for weight, average in zip(weights, averages, strict=True):
        m = momentum.to(weight.dtype)
        average.mul_(m).add_(weight * (1 - m))


def _float32(loss: torch.Tensor) -> torch.Tensor:
    """Losses are tracked and summed in float32, whatever the layers compute in."""
    return loss.float()


def _add(total: torch.Tensor | None, grad: torch.Tensor | None) -> torch.Tensor | None:
    if grad is None:
        return total
    return grad if total is None else total + grad


def _on(device: torch.device, split: ArrayDataset) -> tuple[Any, Any]:
    """A split's arrays as tensors on `device` (on a CPU they share the arrays' memory)."""

    def tensor(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(device)

    y = () if split.y is None else structure.map_leaves(tensor, split.y)
    return structure.map_leaves(tensor, split.x), y


def _gathered(x: Any, y: Any, order: list[np.ndarray], device: torch.device) -> Iterator[Batch]:
    """The batches of `order` gathered from tensors on the device; the epoch's indices go over
    in one copy."""
    if not order:
        return
    indices = torch.from_numpy(np.concatenate(order)).to(device, non_blocking=True)
    start = 0
    for batch in order:
        rows = indices[start : start + len(batch)]
        start += len(batch)

        def take(t: torch.Tensor, rows: torch.Tensor = rows) -> torch.Tensor:
            return t.index_select(0, rows)

        yield structure.map_leaves(take, x), structure.map_leaves(take, y)


def _from_numpy(batches: Iterable[tuple[Any, Any]]) -> Iterator[Batch]:
    """A batch source's NumPy batches as CPU tensors (targets: () where there are none)."""

    def tensor(a: Any) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a))

    for x, y in batches:
        yield structure.map_leaves(tensor, x), () if y is None else structure.map_leaves(tensor, y)


class _BatchedArrays(torch.utils.data.Dataset):
    def __init__(self, split: ArrayDataset) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, indices: np.ndarray) -> tuple[Any, Any]:
        x, y = self.split.rows(indices)
        return structure.map_leaves(torch.from_numpy, x), structure.map_leaves(torch.from_numpy, y)


class _BatchOrder(torch.utils.data.Sampler):
    """Yields the batches of index arrays that the engine set for the coming epoch."""

    def __init__(self) -> None:
        self.order: list[np.ndarray] = []

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)
