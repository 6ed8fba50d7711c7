"""backend.data_on_device: in-memory arrays go to the device once and batches are gathered there;
otherwise each batch is gathered in host memory and copied (torch: one batch ahead). Both give
the same batches, in the same order, and the same training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dualtrain.data import structure
from tests.backend.conftest import BACKEND
from tests.backend.test_capture import _build, _train

CASES = {
    "cnn": ["recipe=cnn", "data=synthetic", "data.num_samples=300", "data.batch_size=64"],
    # named inputs, two targets
    "two_towers": ["recipe=two_towers", "data.batch_size=64"],
}


def _arrays(batch: Any) -> list[np.ndarray]:
    x, y = batch
    return [np.asarray(t) for t in structure.leaves(x) + structure.leaves(y)]


@pytest.mark.parametrize("case", sorted(CASES))
def test_batches_gathered_on_the_device_are_the_host_batches(case: str, tmp_path: Path) -> None:
    on = _build(tmp_path, *CASES[case], "backend.data_on_device=true")
    off = _build(tmp_path, *CASES[case], "backend.data_on_device=false")
    if BACKEND == "torch":
        assert on._train_loader is None and id(on.data.train) in on._resident
        assert off._train_loader is not None and not off._resident
    for batches in (lambda e: e.train_batches(1), lambda e: e.val_batches()):
        pairs = list(zip(batches(on), batches(off), strict=True))
        assert pairs
        for a, b in pairs:
            for got, expected in zip(_arrays(a), _arrays(b), strict=True):
                assert got.dtype == expected.dtype
                np.testing.assert_array_equal(got, expected)
    # The same steps, to the bit: the data path changes where the rows are gathered, not what.
    assert _train(on, 3) == _train(off, 3)


@pytest.mark.parametrize(("free_quarters", "resident"), [(3.99, False), (4.0, True)])
def test_auto_puts_a_set_on_the_device_when_it_takes_at_most_a_quarter_of_free_memory(
    free_quarters: float, resident: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dualtrain.engines.base import Engine

    probe = _build(tmp_path, *CASES["cnn"])
    nbytes = probe.data.train.nbytes
    assert nbytes == 240 * (8 * 8 * 1 * 4 + 4)  # 240 float32 8x8 images and int32 labels
    calls: list[bool] = []
    decide = Engine._on_device

    def record(self: Any, split: Any) -> bool:
        calls.append(decide(self, split))
        return calls[-1]

    free = int(free_quarters * nbytes)
    monkeypatch.setattr(type(probe), "_free_device_memory", lambda self: free)
    monkeypatch.setattr(Engine, "_on_device", record)
    _build(tmp_path, *CASES["cnn"])
    assert calls[0] is resident  # the train split (the val split is smaller: on the device)


@pytest.mark.parametrize("case", sorted(CASES))
def test_batches_are_the_rows_of_the_seeded_order(case: str, tmp_path: Path) -> None:
    # Batches of 7: more batches than tf gathers at once (32), and a smaller last one.
    engine = _build(tmp_path, *CASES[case], "data.batch_size=7")
    split = engine.data.train
    order = engine._batch_order(split, 1)
    assert len(order) > 32 and len(order[-1]) < 7
    batches = list(engine.train_batches(1))
    assert len(batches) == len(order)
    for batch, rows in zip(batches, order, strict=True):
        expected = structure.leaves(split.x) + structure.leaves(split.y)
        for got, array in zip(_arrays(batch), expected, strict=True):
            np.testing.assert_array_equal(got, np.asarray(array)[rows])
