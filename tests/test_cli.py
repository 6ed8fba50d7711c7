"""The command line, run as users run it: in subprocesses, from the real configs, shrunk."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import signal
import struct
import subprocess
import sys
import termios
import textwrap
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, TINY, probe_cli, read_jsonl, readme_recipe_example, run_cli


def test_import_dualtrain_imports_no_framework() -> None:
    code = (
        "import sys, dualtrain\n"
        "assert dualtrain.fit and dualtrain.evaluate and dualtrain.load_model\n"
        "print('hydra' in sys.modules)\n"  # the Python API imports Hydra when it runs
        "import dualtrain.cli, dualtrain.engines\n"
        "print(*(name in sys.modules for name in ('torch', 'tensorflow', 'keras')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False", "False", "False"]


def test_help_lists_groups_and_options_without_importing_a_framework(tmp_path: Path) -> None:
    result, imported = probe_cli("--help", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    for line in (
        "backend: tf, torch",
        "recipe: autoencoder, bench_cnn, bench_mlp, bench_transformer, char_lm, cnn, "
        "gan, mlp, multilabel, regression, segmentation, two_towers",
        "data: breast_cancer, csv, diabetes, digits, image_folder, multilabel, "
        "npz, python, shapes, stdlib_text, synthetic, two_towers",
        "optimizer: adam, adamw, sgd",
        "scheduler: constant, cosine, step, warmup_cosine",
        "callbacks: early_stopping, none",
        "debug: eager, fast_dev_run, overfit",
    ):
        assert line in result.stdout
    assert "python -m dualtrain recipe=mlp backend=tf" in result.stdout
    assert imported == {"code": 0, "torch": False, "tensorflow": False}


def test_help_copies_the_config_repository_once() -> None:
    """--help must take under a second (docs/performance.md). Not timed here (a shared machine is
    too noisy); what made it slow is counted instead: Hydra copied its whole config repository once
    per config group option list, about a hundred times, which was most of 2 s."""
    code = (
        "import sys\n"
        "from hydra._internal import config_repository as repo\n"
        "copies = []\n"
        "init = repo.CachingConfigRepository.__init__\n"
        "def counting(self, *a, **k):\n"
        "    copies.append(1)\n"
        "    init(self, *a, **k)\n"
        "repo.CachingConfigRepository.__init__ = counting\n"
        "sys.argv = ['dualtrain', '--help']\n"
        "from dualtrain.cli import main\n"
        "try:\n"
        "    main()\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('copies', len(copies), file=sys.stderr)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert "recipe: " in result.stdout, result.stderr[-2000:]
    copies = int(result.stderr.split("copies")[-1])
    assert copies <= 3  # the composed config's, and one shared by every group's option list


@pytest.mark.parametrize(
    "override,message",
    [
        ("optimizer.lr=-0.1", "optimizer.lr must be a positive number such as 0.001; got -0.1"),
        (
            "optimizer.lr=fast",
            "optimizer.lr must be a positive number such as 0.001, or auto; got 'fast'",
        ),
        ("data.batch_size=0", "data.batch_size must be a positive integer; got 0"),
        ("trainer.max_epochs=-2", "trainer.max_epochs must be a positive integer; got -2"),
        ("backend.jit_compile=sometimes", "backend.jit_compile must be one of auto, true, false"),
        (
            "mode=predict",
            "mode must be one of train, eval, export, parity, lr_find, summary; got 'predict'",
        ),
        (
            "mode=export",
            "mode=export needs checkpoint.path=<run directory or checkpoint directory>",
        ),
    ],
)
def test_bad_config_is_one_line_exit_2_before_any_framework(
    override: str, message: str, tmp_path: Path
) -> None:
    result, imported = probe_cli(override, f"hydra.run.dir={tmp_path / 'run'}", tmp_path=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == f"dualtrain: error: {result.stderr.strip()[18:]}"
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr
    assert imported == {"code": 2, "torch": False, "tensorflow": False}


@pytest.mark.parametrize("override,valid", [("backend=mxnet", "tf, torch"), ("recipe=nope", "cnn")])
def test_unknown_group_option_names_the_valid_ones(
    override: str, valid: str, tmp_path: Path
) -> None:
    result = run_cli(override, f"hydra.run.dir={tmp_path}")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    for option in valid.split(", "):
        assert option in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("backend,other", [("torch", "tensorflow"), ("tf", "torch")])
def test_a_run_imports_only_its_framework_and_writes_the_run_dir(
    backend: str, other: str, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    result, imported = probe_cli(
        f"backend={backend}", *TINY, f"hydra.run.dir={run_dir}", tmp_path=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert imported[other] is False
    assert imported["tensorflow" if backend == "tf" else "torch"] is True
    # README's run-directory table: .hydra/config.yaml is the composed config
    config = (run_dir / ".hydra" / "config.yaml").read_text()
    assert f"name: {backend}" in config
    lines = read_jsonl(run_dir / "metrics.jsonl")
    # 256 samples, 20% val -> 204 train samples -> 4 steps of 64 per epoch, logged every 2.
    train = [line for line in lines if line["split"] == "train"]
    val = [line for line in lines if line["split"] == "val"]
    assert [line["step"] for line in train] == [2, 4, 6, 8]
    assert [(line["step"], line["epoch"]) for line in val] == [(4, 0), (8, 1)]
    for line in train:
        assert set(line) == {
            "step",
            "epoch",
            "split",
            "backend",
            "time",
            "loss",
            "lr",
            "samples_per_sec",
        }
        assert line["backend"] == backend and line["lr"] == pytest.approx(0.002)
    for line in val:
        assert set(line) == {"step", "epoch", "split", "backend", "time", "loss", "accuracy"}
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert (summary["backend"], summary["recipe"], summary["steps"], summary["epochs"]) == (
        backend,
        "cnn",
        8,
        2,
    )
    assert summary["train_samples_per_sec"] > 0 and summary["wall_seconds"] > 0
    assert summary["final"]["val"] == {k: val[-1][k] for k in ("loss", "accuracy")}
    assert summary["final"]["train"]["loss"] == train[-1]["loss"]
    # The final table goes to stdout; no progress bar when stdout is not a terminal.
    assert f"dualtrain cnn on {backend}: completed" in result.stdout
    assert "val/accuracy" in result.stdout
    assert "step/s" not in result.stdout and "epoch 1/2" not in result.stdout


@pytest.mark.slow
def test_progress_bar_on_a_terminal(tmp_path: Path) -> None:
    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # rows, columns
    args = [a for a in TINY if not a.startswith("logger.")]
    proc = subprocess.Popen(
        [sys.executable, "-m", "dualtrain", *args, f"hydra.run.dir={tmp_path}"],
        cwd=REPO,
        stdout=child,
        stderr=subprocess.DEVNULL,
    )
    os.close(child)
    output = b""
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
    assert proc.wait(timeout=300) == 0
    text = output.decode(errors="replace")
    # The last drawing of each epoch's bar: all 4 steps, the train values and the val values.
    for epoch in ("1/2", "2/2"):
        last = [line for line in re.split(r"[\r\n]+", text) if line.startswith(f"epoch {epoch}")][
            -1
        ]
        assert "4/4" in last
        for key in ("loss=", "samples/s=", "val_loss=", "val_accuracy="):
            assert key in last


def test_failure_at_run_time_is_one_line_exit_1_and_summary_records_it(tmp_path: Path) -> None:
    user = tmp_path / "user"
    user.mkdir()
    (user / "bad_data.py").write_text(
        textwrap.dedent("""
        import numpy as np
        def load():
            return np.zeros((10, 3), "float32"), -np.ones(10, "int32")
    """)
    )
    run_dir = tmp_path / "run"
    result = run_cli(
        "data=python",
        "data.source=bad_data:load",
        "logger.progress=false",
        f"hydra.run.dir={run_dir}",
        "--config-dir",
        str(user),
    )
    assert result.returncode == 1
    assert result.stderr.strip().startswith(
        "dualtrain: error: data source bad_data:load returned labels"
    )
    assert "expected class indices 0..num_classes-1" in result.stderr
    assert "Traceback" not in result.stderr
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "failed"


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "tf"])
def test_user_recipe_from_a_directory_outside_the_repo(backend: str, tmp_path: Path) -> None:
    user = tmp_path / "my_recipes"
    (user / "recipe").mkdir(parents=True)
    yaml, python = readme_recipe_example()
    (user / "recipe" / "blobs.yaml").write_text(yaml)
    (user / "blobs_recipe.py").write_text(python)
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    result = run_cli(
        "--config-dir",
        str(user),
        "recipe=blobs",
        f"backend={backend}",
        "logger.progress=false",
        "hydra.run.dir=run",
        cwd=workdir,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads((workdir / "run" / "summary.json").read_text())
    assert summary["recipe"] == "blobs" and summary["backend"] == backend
    # Three well-separated blobs (centres >= 2 apart, noise 0.6): a small MLP separates them.
    assert summary["final"]["val"]["accuracy"] >= 0.95


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_and_sigterm_stop_after_a_step_save_and_resume(
    signum: signal.Signals, tmp_path: Path
) -> None:
    args = ["trainer.max_epochs=200", "trainer.log_every_n_steps=1", "logger.progress=false",
            f"hydra.run.dir={tmp_path}"]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "dualtrain", *args],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 50):
        assert proc.poll() is None and time.monotonic() < deadline, "the run never got going"
        time.sleep(0.2)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    assert stderr.strip().endswith(
        f"dualtrain: error: interrupted by {signum.name} after step {summary['steps']}; a "
        "checkpoint is saved; summary.json records where the run stopped; continue with "
        "checkpoint.resume=auto and the same hydra.run.dir"
    )
    lines = read_jsonl(metrics)  # every line is whole JSON
    assert lines[-1]["step"] == summary["steps"] >= 45  # the stopped step's value is logged
    saved = json.loads((tmp_path / "checkpoints" / "last" / "trainer.json").read_text())
    assert saved["step"] == summary["steps"]
    # Two more epochs than were begun (a loaded machine may run past step 90 before the signal).
    epochs = summary["steps"] // 45 + 2
    resumed = run_cli(*args[1:], f"trainer.max_epochs={epochs}", "checkpoint.resume=auto")
    assert resumed.returncode == 0, resumed.stderr
    steps = json.loads((tmp_path / "summary.json").read_text())["steps"]
    assert steps == 45 * epochs  # epochs of 45 steps
