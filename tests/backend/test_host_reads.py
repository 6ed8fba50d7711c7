"""Values reach the host only at log points: a training step reads nothing back from the device
(on a GPU each read is a sync that stalls the queue of kernels), and a log point reads once.

Counted on torch: `Tensor.item`, `.cpu()`, `.numpy()`, `.tolist()`, `__array__`, `__bool__`,
`__float__` and `__int__`, called from Python (dualtrain's code and Keras's). On tf: the same
conversions of eager tensors, i.e. the values that leave the compiled step. On both, Keras's
`convert_to_numpy`. Only the outermost call counts (on torch, `convert_to_numpy` calls
`__array__` twice: one read).
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.backend.conftest import BACKEND
from tests.backend.test_capture import _build

TORCH_READS = ("item", "cpu", "numpy", "tolist", "__array__", "__bool__", "__float__", "__int__")
TF_READS = ("numpy", "__array__", "__bool__", "__float__", "__int__", "__index__")


@contextlib.contextmanager
def counting_host_reads() -> Iterator[collections.Counter[str]]:
    from keras.src import backend

    if BACKEND == "torch":
        import torch

        tensor: Any = torch.Tensor
        names = TORCH_READS
    else:
        # The eager tensor's Python base class: where TensorFlow defines these conversions.
        from tensorflow.python.framework import ops

        tensor = ops._EagerTensorBase
        names = TF_READS
    # NumPy converts an eager tf tensor through its buffer, without calling a Python method:
    # Keras's convert_to_numpy (which dualtrain reads through) is counted as well.
    methods = [(backend, "convert_to_numpy"), *[(tensor, name) for name in names]]
    counts: collections.Counter[str] = collections.Counter()
    depth = [0]
    originals = [(owner, name, getattr(owner, name)) for owner, name in methods]

    def counted(name: str, method: Any) -> Any:
        def read(*args: Any, **kwargs: Any) -> Any:
            if depth[0] == 0:
                counts[name] += 1
            depth[0] += 1
            try:
                return method(*args, **kwargs)
            finally:
                depth[0] -= 1

        return read

    for owner, name, method in originals:
        setattr(owner, name, counted(name, method))
    try:
        yield counts
    finally:
        for owner, name, method in originals:
            setattr(owner, name, method)


USERS = [
    "recipe.name=layers",
    "recipe.module=tests.backend.users.layers",
    "~recipe.model",
    "~recipe.task",
    "data=python",
    "data.source=tests.backend.users.layers:load_data",
]
CASES = {
    # Adam (the fused kernel on torch), unseeded Dropout, SparseCategoricalCrossentropy
    "cnn": ["recipe=cnn", "data=synthetic", "data.num_samples=640"],
    # BatchNorm's statistics and a seeded Dropout's state assigned after each step, the
    # one_hot loss, SGD with momentum (Keras's own update: the skip restores a copy)
    "subclassed_sgd": [*USERS, "+recipe.model.kind=subclassed", "optimizer=sgd"],
    # two phases, two optimizers, noise drawn from a seeded generator in the losses
    "gan": ["recipe=gan", "data=synthetic", "data.shape=[8,8,1]", "data.num_samples=640"],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_steps_read_nothing_back_and_a_log_point_reads_once(case: str, tmp_path: Path) -> None:
    engine = _build(tmp_path, "data.batch_size=32", *CASES[case])
    batches = iter(engine.train_batches(0))
    engine.train_step([next(batches)])  # the first step traces (torch captures, tf traces)
    engine.train_metrics()
    steps = 0
    with counting_host_reads() as counts:
        for batch in batches:  # the loader's work is counted too
            engine.train_step([batch])
            steps += 1
            if steps == 8:
                break
        in_steps = dict(counts)
        engine.train_metrics()
    assert steps == 8
    assert in_steps == {}, f"host reads in {steps} steps: {in_steps}"
    assert sum(counts.values()) == 1, f"one log point read {dict(counts)}"
    assert engine.nonfinite_at_read == (0, None)
