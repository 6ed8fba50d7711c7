"""ExecuTorch export: a `.pte` program lowered to XNNPACK from a checkpoint of either backend, run
back in ExecuTorch's runtime and checked against the Keras model."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.backend.users import recipe_overrides
from tests.conftest import SMALL_CNN, run_cli

# Every test here trains and exports in subprocesses: the full suite only. One worker runs them
# all (they share the trained and exported runs), and test_export's, whose cnn runs they export.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("export")]


# Small runs: the checks compare the program with the Keras model on the same weights, so
# accuracy does not matter here.
SMALL = {
    "cnn": SMALL_CNN,
    "mlp": ["recipe=mlp", "trainer.max_epochs=1"],
    "two_towers": recipe_overrides("two_towers", "trainer.max_epochs=2"),
    # int32 token ids, an Embedding and an LSTM
    "tokens": recipe_overrides("tokens", "trainer.max_epochs=1"),
}
# The cnn from each backend (convolutions, pooling and dense layers through XNNPACK); the MLP's
# dense layers are a subset of it, so CI's time goes to several inputs and to an LSTM instead.
RUNS = [("cnn", "torch"), ("cnn", "tf"), ("two_towers", "tf"), ("tokens", "torch")]


def _train_and_export(root: Path, recipe: str, backend: str, run: Path | None) -> dict[str, Any]:
    """Exports `run` (trains it first where None)."""
    out = root / f"{recipe}-{backend}-export"
    if run is None:
        run = root / f"{recipe}-{backend}"
        trained = run_cli(
            *SMALL[recipe], f"backend={backend}", "logger.progress=false", f"hydra.run.dir={run}"
        )
        assert trained.returncode == 0, trained.stderr[-3000:]
    exported = run_cli(
        "mode=export", f"checkpoint.path={run}", *SMALL[recipe], f"hydra.run.dir={out}",
        "export.formats=[executorch]",
    )  # fmt: skip
    report_path = out / "export" / "report.json"
    assert report_path.is_file(), exported.stderr[-3000:]
    return {
        "result": exported,
        "report": json.loads(report_path.read_text()),
        "out": out,
        "summary": json.loads((run / "summary.json").read_text()),
    }


@pytest.fixture(scope="module")
def exported(
    tmp_path_factory: pytest.TempPathFactory, small_cnn: Callable[[str], Path]
) -> dict[tuple[str, str], dict[str, Any]]:
    """Each run trained (the cnn's are test_export's), then exported to executorch from its
    checkpoint; two at a time (most of each is a child process starting a framework)."""
    root = tmp_path_factory.mktemp("executorch")
    runs = {key: small_cnn(key[1]) if key[0] == "cnn" else None for key in RUNS}
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {key: pool.submit(_train_and_export, root, *key, runs[key]) for key in RUNS}
        return {key: future.result() for key, future in futures.items()}


def _port(name: str, shape: list[Any], dtype: str) -> dict[str, Any]:
    return {"name": name, "shape": shape, "dtype": dtype}


@pytest.mark.parametrize("trained_on", ["torch", "tf"])
def test_a_checkpoint_of_either_backend_runs_in_executorch_as_in_keras(
    trained_on: str, exported: dict[tuple[str, str], dict[str, Any]]
) -> None:
    recipe = "cnn"
    run = exported[(recipe, trained_on)]
    assert run["result"].returncode == 0, run["result"].stderr[-3000:]
    report = run["report"]
    assert report["checkpoint_backend"] == trained_on and report["recipe"] == recipe
    entry = report["formats"]["executorch"]
    assert entry["status"] == "ok", entry
    assert entry["exported_on"] == "torch" and entry["runtime"].startswith("ExecuTorch runtime")
    # float32 through XNNPACK: within 1e-4 of the Keras model (export.TOLERANCE; measured below
    # 1e-6 on these runs), for a batch of 1 and of 37: the batch is dynamic.
    assert entry["max_abs_diff"] <= 1e-4 and entry["batch_sizes_checked"] == [1, 37]
    assert entry["val_accuracy"] == entry["keras_val_accuracy"]
    assert entry["size_bytes"] > 0 and entry["latency_ms_per_batch"] > 0
    pte = run["out"] / entry["path"]
    assert pte.name == "model.pte" and pte.is_file()
    assert pte.read_bytes()[4:8] == b"ET12"  # ExecuTorch's flatbuffer file identifier
    name, shape = "image", [8, 8, 1]
    assert entry["interface"] == {
        "inputs": [_port(name, [None, *shape], "float32")],
        "outputs": [_port("logits", [None, report["outputs"][0]["shape"][1]], "float32")],
    }
    assert entry["inputs"] == [name] and entry["outputs"] == ["logits"]
    assert entry["dynamic_batch"] == [1, 1024] and entry["delegate"] == ["XnnpackBackend"]
    # Every layer's work in XNNPACK: the dense layers and, in the cnn, both convolutions and the
    # pooling (left outside, a convolution would run in ExecuTorch's portable kernels).
    assert entry["delegated_nodes"] > 0 and entry["delegated_subgraphs"] >= 1
    delegated_ops = {"aten_convolution_default", "aten_mm_default", "aten_max_pool2d_default"}
    assert not delegated_ops & set(entry["not_delegated_nodes"]), entry["not_delegated_nodes"]
    assert f"  executorch   {entry['path']} (" in run["result"].stdout


def test_two_inputs_and_two_outputs_keep_their_names_and_int32(
    exported: dict[tuple[str, str], dict[str, Any]],
) -> None:
    run = exported[("two_towers", "tf")]
    assert run["result"].returncode == 0, run["result"].stderr[-3000:]
    entry = run["report"]["formats"]["executorch"]
    assert entry["status"] == "ok", entry
    inputs = [_port("numbers", [None, 4], "float32"), _port("category", [None, 1], "int32")]
    outputs = [_port("kind", [None, 2], "float32"), _port("value", [None, 1], "float32")]
    # The runtime's own view of the method (int32 category ids stay int32), named from the
    # program's call structure, in the order the method takes and returns them.
    assert entry["interface"] == {"inputs": inputs, "outputs": outputs}
    assert entry["inputs"] == ["numbers", "category"] and entry["outputs"] == ["kind", "value"]
    kind, value = entry["per_output"]["kind"], entry["per_output"]["value"]
    assert kind["task"] == "classification" and value["task"] == "regression"
    assert max(kind["max_abs_diff"], value["max_abs_diff"]) == entry["max_abs_diff"] <= 1e-4
    assert kind["val_accuracy"] == kind["keras_val_accuracy"]
    # The Embedding's lookup has no XNNPACK kernel: it runs in ExecuTorch's own kernels.
    assert "aten::embedding" in entry["kernels"]


def test_an_lstm_keeps_its_dynamic_batch(
    exported: dict[tuple[str, str], dict[str, Any]],
) -> None:
    run = exported[("tokens", "torch")]
    assert run["result"].returncode == 0, run["result"].stderr[-3000:]
    entry = run["report"]["formats"]["executorch"]
    assert entry["status"] == "ok", entry
    # The LSTM cell splits its gates with chunk; taken as slices, the batch stays dynamic (a
    # batch of 1 and of 37 both run) and the token ids stay int32.
    assert entry["interface"]["inputs"] == [_port("input", [None, 12], "int32")]
    assert entry["batch_sizes_checked"] == [1, 37] and entry["max_abs_diff"] <= 1e-4
    assert entry["val_accuracy"] == entry["keras_val_accuracy"]
    assert entry["dynamic_batch"] == [1, 1024] and entry["delegated_nodes"] > 0


# The program alone, in ExecuTorch's runtime (no dualtrain): the batch goes from 1 to the bound
# the report states, and past it the runtime refuses.
_BOUND = textwrap.dedent("""
    import sys, torch
    from executorch.runtime import Runtime
    method = Runtime.get().load_program(sys.argv[1]).load_method("forward")
    bound = int(sys.argv[2])
    x = torch.rand(bound, 8, 8, 1)
    full = method.execute([x])[0].clone()
    one = method.execute([x[:1]])[0]
    assert full.shape == (bound, 10) and torch.allclose(full[:1], one, atol=1e-5)
    try:
        method.execute([torch.rand(bound + 1, 8, 8, 1)])
    except RuntimeError:
        print("refused", bound + 1)
""")


def test_the_program_takes_batches_up_to_its_bound(
    exported: dict[tuple[str, str], dict[str, Any]],
) -> None:
    run = exported[("cnn", "torch")]
    entry = run["report"]["formats"]["executorch"]
    _, bound = entry["dynamic_batch"]
    result = subprocess.run(
        [sys.executable, "-c", _BOUND, str(run["out"] / entry["path"]), str(bound)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == f"refused {bound + 1}"
