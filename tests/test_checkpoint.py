"""Checkpoints: resume after kill -9 on the same backend, and across backends; safe loading."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from dualtrain.checkpoint import read_checkpoint
from dualtrain.errors import RunError
from tests.conftest import REPO, read_jsonl, run_cli

# Small and deterministic: synthetic data, 4 steps of 64 per epoch, a line per step.
RUN = [
    "data=synthetic",
    "data.num_samples=320",
    "trainer.max_epochs=3",
    "trainer.log_every_n_steps=1",
    "logger=[jsonl]",
]
# The tests of the `straight` fixture: on one worker, so each backend's RUN trains once.
STRAIGHT = pytest.mark.xdist_group("checkpoint_straight")


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """backend -> the run directory of RUN on it, uninterrupted: trained on first use, then
    shared (read only: a test that changes a run works on a copy)."""
    runs: dict[str, Path] = {}

    def run(backend: str) -> Path:
        if backend not in runs:
            run_dir = tmp_path_factory.mktemp(f"straight-{backend}")
            result = run_cli(f"backend={backend}", *RUN, f"hydra.run.dir={run_dir}")
            assert result.returncode == 0, result.stderr[-3000:]
            runs[backend] = run_dir
        return runs[backend]

    return run


def train_losses(run_dir: Path) -> dict[int, float]:
    """step -> train loss; a step logged twice (before a kill, after the resume) keeps the last."""
    return {
        x["step"]: x["loss"] for x in read_jsonl(run_dir / "metrics.jsonl") if x["split"] == "train"
    }


@pytest.mark.slow
@STRAIGHT
@pytest.mark.parametrize("backend", ["torch", "tf"])
def test_kill_9_then_resume_gives_the_uninterrupted_losses(
    backend: str, straight: Callable[[str], Path], tmp_path: Path
) -> None:
    killed = tmp_path / "killed"
    args = [f"backend={backend}", *RUN, "trainer.max_epochs=400", "checkpoint.every_n_steps=3"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "dualtrain", *args, f"hydra.run.dir={killed}"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    metrics = killed / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 7):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    saved = read_checkpoint(killed / "checkpoints" / "last")
    assert saved.step >= 3  # every 3 steps and at epoch ends (every 4)

    resumed = run_cli(
        *args[:-2], "trainer.max_epochs=3", "checkpoint.resume=auto", f"hydra.run.dir={killed}"
    )
    assert resumed.returncode == 0, resumed.stderr
    expected, got = train_losses(straight(backend)), train_losses(killed)
    assert sorted(got) == sorted(expected) == list(range(1, 13))
    # Same weights, optimizer state, batch order and dropout seeds: equal to the bit on CPU.
    assert got == expected
    summary = json.loads((killed / "summary.json").read_text())
    assert (summary["status"], summary["steps"], summary["epochs"]) == ("completed", 12, 3)


@pytest.mark.slow
@STRAIGHT
@pytest.mark.parametrize("backend", ["torch", "tf"])
def test_resume_mid_epoch_after_a_validation_gives_the_uninterrupted_losses(
    backend: str, straight: Callable[[str], Path], tmp_path: Path
) -> None:
    # Stopped by max_steps at step 6, mid-epoch: the run validates, then saves. Neither the
    # validation pass nor the resumed run's data iterators may move the RNG that dropout draws
    # from (on torch, DataLoader iterators used to draw from it).
    split = tmp_path / "split"
    for args in (
        [*RUN, "trainer.max_steps=6", f"hydra.run.dir={split}"],
        [*RUN, "checkpoint.resume=auto", f"hydra.run.dir={split}"],
    ):
        result = run_cli(f"backend={backend}", *args)
        assert result.returncode == 0, result.stderr
    assert train_losses(split) == train_losses(straight(backend))  # to the bit, as above


@pytest.mark.slow
@pytest.mark.parametrize("first,second", [("torch", "tf"), ("tf", "torch")])
def test_one_epoch_on_one_backend_the_rest_on_the_other(
    first: str, second: str, tmp_path: Path
) -> None:
    # Dropout off: its masks come from each framework's own RNG and cannot agree across backends.
    same = [*RUN, "recipe.model.dropout=0.0"]
    straight, part1, part2 = tmp_path / "straight", tmp_path / "part1", tmp_path / "part2"
    for args, run_dir in (
        ([f"backend={first}", *same], straight),
        ([f"backend={first}", *same, "trainer.max_epochs=1"], part1),
        ([f"backend={second}", *same, f"checkpoint.path={part1}"], part2),
    ):
        result = run_cli(*args, f"hydra.run.dir={run_dir}")
        assert result.returncode == 0, result.stderr
    expected, got = train_losses(straight), train_losses(part2)
    assert sorted(got) == list(range(5, 13))  # epoch 1 and 2, on the other backend
    assert read_jsonl(part2 / "metrics.jsonl")[0]["backend"] == second
    # The first step after the switch: same weights, optimizer state and batch, so the loss
    # agrees within float32 kernel differences (measured: below 1e-6 relative).
    assert got[5] == pytest.approx(expected[5], rel=1e-5)
    # Later steps drift apart only by accumulated rounding.
    assert got[12] == pytest.approx(expected[12], rel=1e-3)
    final = json.loads((part2 / "summary.json").read_text())["final"]["val"]["accuracy"]
    reference = json.loads((straight / "summary.json").read_text())["final"]["val"]["accuracy"]
    assert abs(final - reference) <= 0.005


@pytest.mark.slow
@STRAIGHT
def test_init_from_loads_weights_only(straight: Callable[[str], Path], tmp_path: Path) -> None:
    first, second = straight("torch"), tmp_path / "second"
    result = run_cli(*RUN, "trainer.max_epochs=1", f"init_from={first}", f"hydra.run.dir={second}")
    assert result.returncode == 0, result.stderr
    lines = read_jsonl(second / "metrics.jsonl")
    assert lines[0]["step"] == 1  # counters start again
    # Trained weights: the first loss is far below the untrained ln(10) = 2.3.
    assert lines[0]["loss"] < 0.5 * train_losses(first)[1]


@pytest.mark.slow
@STRAIGHT
def test_checkpoint_of_another_model_is_refused_by_name(
    straight: Callable[[str], Path], tmp_path: Path
) -> None:
    first, second = straight("torch"), tmp_path / "second"
    result = run_cli(
        *RUN, "recipe.model.dense_units=64", f"checkpoint.path={first}", f"hydra.run.dir={second}"
    )
    assert result.returncode == 1
    assert (
        "dualtrain: error: the checkpoint's model variable dense/kernel has shape" in result.stderr
    )


def test_missing_checkpoint_path_is_a_config_error(tmp_path: Path) -> None:
    result = run_cli(f"checkpoint.path={tmp_path / 'nothing'}", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 2
    assert (
        "dualtrain: error: checkpoint.path=" in result.stderr and "does not exist" in result.stderr
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_cli(f"checkpoint.path={empty}", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 2
    assert "is neither a checkpoint directory nor a run directory" in result.stderr


@pytest.mark.slow
@STRAIGHT
def test_pickle_payload_is_refused_without_running_it(
    straight: Callable[[str], Path], tmp_path: Path
) -> None:
    good = tmp_path / "good"
    shutil.copytree(straight("torch"), good, symlinks=True)
    checkpoint = good / "checkpoints" / "last"
    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (Path.touch, (marker,))

    arrays = dict(np.load(checkpoint / "model.npz"))
    # trainer.ema's averaged weights, read only where trainer.json says the run kept them
    record = json.loads((checkpoint / "trainer.json").read_text())
    (checkpoint / "trainer.json").write_text(json.dumps({**record, "ema": {"momentum": 0.9}}))
    np.savez(checkpoint / "average.npz", **{"conv2d/kernel": np.array([Payload()], dtype=object)})
    with pytest.raises(RunError, match=r"average\.npz: .* would need pickle to load; refused"):
        read_checkpoint(checkpoint)
    (checkpoint / "trainer.json").write_text(json.dumps(record))
    arrays["conv2d/kernel"] = np.array([Payload()], dtype=object)
    np.savez(checkpoint / "model.npz", **arrays)
    with pytest.raises(RunError, match="would need pickle to load; refused"):
        read_checkpoint(checkpoint)
    result = run_cli(*RUN, f"checkpoint.path={good}", f"hydra.run.dir={tmp_path / 'next'}")
    assert result.returncode == 1 and "refused" in result.stderr
    assert not marker.exists()


@pytest.mark.slow
def test_truncated_checkpoint_names_the_file_and_resume_auto_falls_back(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = run_cli(*RUN, "checkpoint.every_n_steps=2", f"hydra.run.dir={run_dir}")
    assert result.returncode == 0
    newest = (run_dir / "checkpoints" / "last").resolve()
    data = (newest / "optimizer.npz").read_bytes()
    (newest / "optimizer.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(RunError, match=r"optimizer\.npz is truncated or corrupt"):
        read_checkpoint(newest)
    result = run_cli(
        *RUN, "trainer.max_epochs=4", "checkpoint.resume=auto", f"hydra.run.dir={run_dir}"
    )
    assert result.returncode == 0, result.stderr
    assert "falling back to the previous checkpoint" in result.stdout  # Hydra logs to stdout


@pytest.mark.slow
@STRAIGHT
@pytest.mark.parametrize("writer,reader", [("torch", "tf"), ("tf", "torch"), ("tf", "tf")])
def test_eval_mode_evaluates_a_checkpoint_of_either_backend(
    writer: str, reader: str, straight: Callable[[str], Path], tmp_path: Path
) -> None:
    trained, evaluated = straight(writer), tmp_path / "eval"
    result = run_cli(f"backend={reader}", *RUN, "mode=eval", f"checkpoint.path={trained}",
                     f"hydra.run.dir={evaluated}")  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads((evaluated / "eval.json").read_text())
    assert (report["backend"], report["checkpoint_backend"], report["checkpoint_step"]) == (
        reader,
        writer,
        12,
    )
    final = json.loads((trained / "summary.json").read_text())["final"]["val"]
    # The same weights on the same val split: accuracy equal; the loss within float32 kernel
    # differences between the backends.
    assert report["metrics"]["accuracy"] == final["accuracy"]
    assert report["metrics"]["loss"] == pytest.approx(final["loss"], rel=1e-5)
    assert f"on {reader}: loss=" in result.stdout


@pytest.mark.slow
@STRAIGHT
def test_eval_of_a_checkpoint_from_another_recipe_names_it(
    straight: Callable[[str], Path], tmp_path: Path
) -> None:
    trained = straight("torch")
    result = run_cli("recipe=mlp", "mode=eval", f"checkpoint.path={trained}",
                     f"hydra.run.dir={tmp_path / 'eval'}")  # fmt: skip
    assert result.returncode == 2
    assert "was written by recipe=cnn; use it with recipe=cnn" in result.stderr


def test_a_keras_file_is_not_a_checkpoint_and_is_never_loaded(tmp_path: Path) -> None:
    # A .keras file may hold a Lambda layer's code; dualtrain never opens Keras files.
    fake = tmp_path / "model.keras"
    fake.write_bytes(b"PK\x03\x04 not opened")
    result = run_cli("mode=eval", f"checkpoint.path={fake}", f"hydra.run.dir={tmp_path / 'e'}")
    assert result.returncode == 2
    assert "is neither a checkpoint directory nor a run directory" in result.stderr


@pytest.mark.slow
def test_save_top_k_keeps_the_best_by_monitor_and_the_newest_two(tmp_path: Path) -> None:
    args = [*RUN, "trainer.max_epochs=6", "checkpoint.monitor=val/accuracy", "checkpoint.mode=max",
            "checkpoint.save_top_k=2", "logger.progress=false"]  # fmt: skip
    result = run_cli(*args, f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    val = [x for x in read_jsonl(tmp_path / "metrics.jsonl") if x["split"] == "val"]
    best = sorted(val, key=lambda x: x["accuracy"], reverse=True)[:2]  # ties: the earlier first
    expected = {x["step"] for x in best} | {20, 24}  # 4 steps an epoch: the newest two
    kept = {int(p.name[5:]) for p in (tmp_path / "checkpoints").glob("step-*")}
    assert kept == expected
    assert (tmp_path / "checkpoints" / "last").resolve().name == "step-000000024"
    record = read_checkpoint(tmp_path / "checkpoints" / "last").trainer
    assert (record["monitor"], record["monitor_value"]) == ("val/accuracy", val[-1]["accuracy"])


@pytest.mark.slow
def test_monitor_must_be_a_logged_value(tmp_path: Path) -> None:
    result = run_cli(*RUN, "checkpoint.monitor=val/f1", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 1
    assert (
        "checkpoint.monitor=val/f1 is not a logged value; choose one of val/loss, val/accuracy"
        in (result.stderr)
    )


def test_a_kill_while_pruning_leaves_no_half_checkpoint_under_its_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pruned checkpoint is renamed to a hidden name before it is deleted: a kill during the
    deletion (here: an exception from rmtree) leaves no step-N that is missing files."""
    from dualtrain import checkpoint as module
    from dualtrain.checkpoint import newest_checkpoints

    step = tmp_path / "step-000000005"
    step.mkdir()
    for name in ("model.npz", "optimizer.npz", "trainer.json"):
        (step / name).write_text("x")

    def killed(path: Path, ignore_errors: bool = False) -> None:
        (path / "optimizer.npz").unlink()  # part of the deletion happened
        raise KeyboardInterrupt  # then the process was stopped

    monkeypatch.setattr(module.shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        module._remove(step)
    assert not step.exists() and newest_checkpoints(tmp_path) == []
    assert [p.name for p in tmp_path.iterdir()] == [f".step-000000005.del-{os.getpid()}"]
