"""The model summary on this process's backend: what a training run logs and stores, and
mode=summary. That the two backends count the same FLOPs: tests/test_model_summary.py."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from dualtrain import cli
from dualtrain.model_summary import NOT_COUNTED, human, lines
from dualtrain.run import build_engine, train
from tests.backend.conftest import BACKEND, make_settings


def test_a_training_run_logs_and_stores_the_model_summary(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run_dir = tmp_path / "run"
    settings = make_settings(run_dir, "recipe=mlp", "trainer.max_steps=1", "logger=[jsonl]")
    with caplog.at_level(logging.INFO, logger="dualtrain"):
        summary = train(settings)
    model = json.loads((run_dir / "summary.json").read_text())["model"]
    assert model == summary["model"]
    # recipes/mlp.py on breast_cancer: 30 features standardized (a mean and a scale each, not
    # trained), Dense 64 and 32 (ReLU, dropout), 2 logits.
    assert model["trainable_params"] == (30 * 64 + 64) + (64 * 32 + 32) + (32 * 2 + 2)
    assert model["non_trainable_params"] == 2 * 30
    shapes = {layer["type"]: layer["output_shape"] for layer in model["layers"]}
    assert shapes["InputLayer"] == [None, 30] and shapes["Standardize"] == [None, 30]
    assert [layer["output_shape"] for layer in model["layers"] if layer["type"] == "Dense"] == [
        [None, 64],
        [None, 32],
        [None, 2],
    ]
    flops = model["flops_per_sample"]
    forward = 2 * (30 * 64 + 64 * 32 + 32 * 2)  # 2 per multiply-add of each Dense
    assert flops["forward"] == forward
    # The gradients: each kernel's (as many multiply-adds as its forward), and each layer's
    # input's but the first's, which only the data would need.
    assert flops["train_step"] == 3 * forward - 2 * 30 * 64
    assert f"FLOPs per sample: forward {human(forward)}, train step" in caplog.text
    assert "model mlp: 4,190 parameters (4,130 trainable, 60 non-trainable)" in caplog.text


def test_mode_summary_prints_the_summary_and_trains_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # two_towers: two inputs (numbers; a category id through an Embedding), two outputs.
    run_dir = tmp_path / "run"
    result = cli.run(make_settings(run_dir, "recipe=two_towers", "mode=summary"))
    out = capsys.readouterr().out
    model = result["model"]
    assert "\n".join(lines(model)) in out
    # Nothing trained: the summary is all the run directory holds.
    assert [p.name for p in run_dir.iterdir()] == ["summary.json"]
    assert json.loads((run_dir / "summary.json").read_text())["model"] == model
    layers = {layer["name"]: layer for layer in model["layers"]}
    width = layers["concatenate"]["output_shape"][-1]  # the numbers beside the embedding
    classes = layers["kind"]["output_shape"][-1]
    assert layers["value"]["output_shape"] == [None, 1]
    forward = 2 * (width * 64 + 64 * 32 + 32 * classes + 32 * 1)
    assert model["flops_per_sample"]["forward"] == forward
    # Every layer's input gradient is needed, the first Dense's too: the Embedding learns.
    assert model["flops_per_sample"]["train_step"] == 3 * forward


def test_a_recurrent_layer_is_counted_on_torch_and_named_as_not_counted_on_tf(
    tmp_path: Path,
) -> None:
    # tests/backend/users/tokens.py: Embedding(20, 16), LSTM(16) over 12 tokens, Dense(2).
    settings = make_settings(
        tmp_path, "recipe=mlp", "~recipe.model", "recipe.module=tests.backend.users.tokens",
        "data=python", "data.source=tests.backend.users.tokens:load_data",
    )  # fmt: skip
    flops = build_engine(settings).model_summary()["flops_per_sample"]
    logits = 2 * 16 * 2
    if BACKEND == "torch":
        # Each of the 12 steps: the 4 gates' input (16x64) and recurrent (16x64) kernels.
        assert flops["forward"] == 12 * 2 * (16 * 64 + 16 * 64) + logits
    else:
        # The loop's body is a function TensorFlow's profiler does not see (docs/summary.md).
        assert flops["forward"] == logits
        assert "While" + NOT_COUNTED in flops["by_op"]["forward"]
