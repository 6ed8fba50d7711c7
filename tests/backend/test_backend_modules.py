"""Small in-process checks of this backend's distributed engine and exporter, so that the fast
tier (`scripts/test --fast`) exercises them; tests/test_distributed.py and tests/test_export.py
run them for real, in subprocesses, in the full suite."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from dualtrain.export import ExportJob, Signature
from tests.backend.conftest import BACKEND, make_settings


def _tiny_model() -> keras.Model:
    inputs = keras.Input(shape=(4,), name="features")
    return keras.Model(inputs, keras.layers.Dense(3, name="logits")(inputs))


@pytest.mark.skipif(BACKEND != "torch", reason="the torch DDP engine's gradient buckets")
def test_ddp_buckets_keep_order_and_split_by_dtype_and_size() -> None:
    import torch

    from dualtrain.engines import torch_ddp

    big = torch_ddp._BUCKET_BYTES // 4  # float32 elements that fill a bucket
    tensors = [
        torch.zeros(3),
        torch.zeros(5),
        torch.zeros(2, dtype=torch.float16),  # another dtype: a new bucket
        torch.zeros(big),  # a new dtype again, and full
        torch.zeros(1),  # over the size: a new bucket
    ]
    assert list(torch_ddp._buckets(tensors)) == [[0, 1], [2], [3], [4]]


@pytest.mark.skipif(BACKEND != "tf", reason="the tf.distribute engine's loss unscaling")
def test_tf_distribute_unscaled_wraps_and_returns_the_result() -> None:
    from dualtrain.engines import tf_distribute

    def step(a: int, b: int) -> int:
        return a + b

    wrapped = tf_distribute._unscaled(step)
    assert wrapped.__name__ == "step" and wrapped(2, 3) == 5


def test_this_backends_first_export_format_predicts_what_the_model_does(tmp_path: Path) -> None:
    if BACKEND == "torch":
        from dualtrain.export.torch import write_exported_program as write
    else:
        from dualtrain.export.tensorflow import write_saved_model as write
    model = _tiny_model()
    batch = np.random.default_rng(0).normal(size=(5, 4)).astype("float32")
    signature = Signature(input_name="features", input_shape=(4,), output_name="logits")
    out = tmp_path / "export"
    out.mkdir()
    job = ExportJob(
        model, out, signature, make_settings(tmp_path / "run"), batch, calibration=lambda: batch
    )
    written = write(job)
    np.testing.assert_allclose(
        written.predict(batch), keras.ops.convert_to_numpy(model(batch)), rtol=1e-5, atol=1e-6
    )
