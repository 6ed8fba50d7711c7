"""A checkpoint is data, and a run directory belongs to one run.

Every path that loads a checkpoint is given a crafted one: its trainer.json names a data source
that would run a shell command and a recipe module that would run code when imported. Both would
create a marker file; none may. Run directories: a fresh run never touches an earlier run's
files, a live run is locked, and a lock left by a killed run never blocks its resume.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPO, TINY, run_cli

from dualtrain.checkpoint import read_checkpoint
from dualtrain.errors import RunError

# Every test here needs a run that trained (the `trained` fixture) or trains in a subprocess:
# the full suite only. One worker runs them all, so the module's run trains once.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("trust")]

SMALL = [*TINY, "trainer.max_epochs=1"]


def snapshot(run_dir: Path) -> dict[str, bytes]:
    """Every file of a run directory and its content (symlinks as their target)."""
    files: dict[str, bytes] = {}
    for path in sorted(run_dir.rglob("*")):
        key = str(path.relative_to(run_dir))
        if path.is_symlink():
            files[key] = os.readlink(path).encode()
        elif path.is_file() and path.name != ".dualtrain.lock":
            files[key] = path.read_bytes()
    return files


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("dualtrain: error:")]
    assert len(lines) == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory of one tiny cnn epoch on torch, its checkpoints written."""
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    result = run_cli(*SMALL, f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-2000:]
    return run_dir


@pytest.fixture
def hostile(trained: Path, tmp_path: Path) -> tuple[Path, Path, Path]:
    """(work dir, crafted checkpoint, marker): the work dir holds `evil_recipe.py`, which touches
    the marker when imported; the checkpoint names it as its recipe module and names `os:system`
    with `touch <marker>` as its data source."""
    work = tmp_path / "work"
    work.mkdir()
    marker = tmp_path / "code-ran"
    (work / "evil_recipe.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n"
        "from dualtrain.recipes.cnn import build_model, loss, metrics  # noqa: F401\n"
    )
    checkpoint = tmp_path / "crafted"
    shutil.copytree((trained / "checkpoints" / "last").resolve(), checkpoint)
    record = json.loads((checkpoint / "trainer.json").read_text())
    config = yaml.safe_load(record["config"])
    config["recipe"]["module"] = "evil_recipe"
    config["data"] = {"source": "os:system", "command": f"touch {marker}"}
    record["config"] = yaml.safe_dump(config)
    record["model_spec"]["module"] = "evil_recipe"
    record["data_transform"] = {"command": f"touch {marker}"}
    (checkpoint / "trainer.json").write_text(json.dumps(record))
    return work, checkpoint, marker


def test_load_model_refuses_a_module_the_checkpoint_names(
    hostile: tuple[Path, Path, Path],
) -> None:
    work, checkpoint, marker = hostile
    code = (
        "import sys\nfrom dualtrain.errors import ConfigError\nfrom dualtrain.run import "
        "load_model\ntry:\n    load_model(sys.argv[1])\nexcept ConfigError as err:\n"
        "    print('refused:', err)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(checkpoint)], cwd=work, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "refused:" in result.stdout and "'evil_recipe'" in result.stdout
    assert "load_model(path, recipe='evil_recipe')" in result.stdout
    assert not marker.exists()


@pytest.mark.parametrize("backend", ["torch", "tf"])
def test_load_model_rebuilds_from_the_spec_without_data(trained: Path, backend: str) -> None:
    """The model comes back with the checkpoint's weights, on either backend, and no data source
    is called (the synthetic source is made to fail if it is)."""
    code = (
        "import sys, numpy as np\n"
        "import dualtrain.data.sources as s\n"
        "s.synthetic = None  # a data source called now would fail\n"
        "from dualtrain.run import load_model\n"
        "from dualtrain.checkpoint import read_checkpoint, find_checkpoint\n"
        "from pathlib import Path\n"
        "m = load_model(sys.argv[1], backend=sys.argv[2])\n"
        "saved = read_checkpoint(find_checkpoint(Path(sys.argv[1]))).model\n"
        "import keras\n"
        "diff = max(float(np.abs(keras.ops.convert_to_numpy(v.value) - saved[v.path]).max())\n"
        "           for v in m.variables)\n"
        "print('max diff', diff, m.output_shape)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(trained), backend],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "max diff 0.0 (None, 10)" in result.stdout  # assigned exactly; 10 synthetic classes


def test_gan_classifier_refuses_a_module_the_checkpoint_names(
    hostile: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    work, checkpoint, marker = hostile
    result = run_cli(
        "recipe=gan",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=1",
        f"callbacks.gan_samples.classifier={checkpoint}",
        f"hydra.run.dir={tmp_path / 'gan'}",
        cwd=work,
    )
    assert result.returncode == 2
    assert "evil_recipe" in one_error_line(result)
    assert not marker.exists()


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["mode=eval", "recipe=cnn", "checkpoint.path={ckpt}"], id="eval"),
        pytest.param(["checkpoint.path={ckpt}", "trainer.max_epochs=2"], id="resume"),
        pytest.param(["init_from={ckpt}"], id="init_from"),
    ],
)
def test_loading_paths_use_the_weights_and_ignore_what_the_checkpoint_names(
    hostile: tuple[Path, Path, Path], tmp_path: Path, args: list[str]
) -> None:
    """eval, resume and init_from take the model and data from the user's config: the crafted
    checkpoint's weights load and the run succeeds, and nothing it names runs."""
    work, checkpoint, marker = hostile
    overrides = [a.format(ckpt=checkpoint) for a in args]
    result = run_cli(*SMALL, *overrides, f"hydra.run.dir={tmp_path / 'run'}", cwd=work)
    assert result.returncode == 0, result.stderr[-2000:]
    assert not marker.exists()


def test_export_and_parity_init_ignore_what_the_checkpoint_names(
    hostile: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    work, checkpoint, marker = hostile
    exported = run_cli(
        *SMALL,
        "recipe=cnn",  # named by the user: the checkpoint's own module is not imported
        "mode=export",
        f"checkpoint.path={checkpoint}",
        "export.formats=[torch]",
        f"hydra.run.dir={tmp_path / 'export'}",
        cwd=work,
    )
    assert exported.returncode == 0, exported.stderr[-2000:]
    # parity reads <run_dir>/init when it is there: a crafted one is used for its weights only.
    parity_dir = tmp_path / "parity"
    shutil.copytree(checkpoint, parity_dir / "init")
    parity = run_cli(
        *SMALL, "mode=parity", "parity.steps=3", f"hydra.run.dir={parity_dir}", cwd=work
    )
    assert parity.returncode == 0, parity.stderr[-2000:]
    assert not marker.exists()


def test_a_header_that_declares_a_huge_array_is_refused_before_it_is_read(
    trained: Path, tmp_path: Path
) -> None:
    """NumPy allocates what an .npy header declares before reading: 4 GB from a small file."""
    checkpoint = tmp_path / "huge"
    shutil.copytree((trained / "checkpoints" / "last").resolve(), checkpoint)
    arrays = dict(np.load(checkpoint / "model.npz"))
    name = next(iter(arrays))
    with zipfile.ZipFile(checkpoint / "model.npz", "w") as archive:  # stored, valid CRCs
        for key, value in arrays.items():
            member = io.BytesIO()
            if key == name:  # a header for 2**30 floats, followed by 16 bytes
                header = {"descr": "<f4", "fortran_order": False, "shape": (1 << 30,)}
                np.lib.format.write_array_header_1_0(member, header)
                member.write(bytes(16))
            else:
                np.lib.format.write_array(member, value)
            archive.writestr(f"{key}.npy", member.getvalue())
    started = time.perf_counter()
    with pytest.raises(RunError, match=r"declares a float32 array of shape \(1073741824,\)"):
        read_checkpoint(checkpoint)
    assert time.perf_counter() - started < 5  # refused from the header, nothing allocated


def test_a_fresh_run_into_an_earlier_run_is_refused_and_changes_nothing(
    trained: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir, symlinks=True)
    before = snapshot(run_dir)
    for args in (
        [*SMALL],  # a fresh run: refused
        [*SMALL, "trainer.max_epochs=-1"],  # a config error: refused, .hydra/ untouched
        [*SMALL, "data.path=/nonexistent.npz", "data=npz"],  # a run-time failure
    ):
        result = run_cli(*args, f"hydra.run.dir={run_dir}")
        assert result.returncode == 2, result.stderr[-2000:]
        one_error_line(result)
        assert snapshot(run_dir) == before
    refused = run_cli(*SMALL, f"hydra.run.dir={run_dir}")
    assert "holds an earlier run" in one_error_line(refused)
    assert "checkpoint.resume=auto" in one_error_line(refused)


def test_foreign_step_directories_are_left_alone_and_do_not_break_saves(
    trained: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir, symlinks=True)
    foreign = run_dir / "checkpoints" / "step-notes"
    foreign.mkdir()
    (foreign / "trainer.json").write_text("{}")
    other = run_dir / "checkpoints" / "step-999999999"
    other.mkdir()
    (other / "trainer.json").write_text('{"format": "someone-else", "step": "x"}')
    result = run_cli(
        *SMALL,
        "trainer.max_epochs=3",
        "checkpoint.resume=auto",
        "checkpoint.save_top_k=0",
        f"hydra.run.dir={run_dir}",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert (foreign / "trainer.json").read_text() == "{}"
    assert other.is_dir()
    assert (
        json.loads((run_dir / "checkpoints" / "last" / "trainer.json").read_text())["epochs"] == 3
    )


def test_resume_auto_without_checkpoints_says_it_starts_fresh(tmp_path: Path) -> None:
    result = run_cli(*SMALL, "checkpoint.resume=auto", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "starting fresh" in result.stdout + result.stderr


def test_a_live_run_is_locked_and_a_killed_one_resumes(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    live = subprocess.Popen(
        [
            *(sys.executable, "-m", "dualtrain", *TINY, "trainer.max_epochs=1000"),
            *(f"hydra.run.dir={run_dir}", "checkpoint.every_n_steps=5"),
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 240
        while not (run_dir / "checkpoints" / "last").exists():
            assert time.time() < deadline and live.poll() is None, "the run did not start"
            time.sleep(0.5)
        for extra in ([], ["checkpoint.resume=auto"]):
            second = run_cli(*SMALL, *extra, f"hydra.run.dir={run_dir}")
            assert second.returncode == 2
            assert f"is in use by process {live.pid}" in one_error_line(second)
    finally:
        live.send_signal(signal.SIGKILL)
        live.wait()
    resumed = run_cli(
        *TINY, "trainer.max_epochs=1", "checkpoint.resume=auto", f"hydra.run.dir={run_dir}"
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout + resumed.stderr


@pytest.mark.parametrize("backend", ["torch", "tf"])
def test_eval_needs_only_the_checkpoint_and_takes_the_best(
    trained: Path, tmp_path: Path, backend: str
) -> None:
    """Recipe, model options and data come from the checkpoint's own config; `best` links the
    best checkpoint by the monitored value."""
    best = trained / "checkpoints" / "best"
    assert best.is_symlink()
    result = run_cli(
        "mode=eval", f"checkpoint.path={best}", f"backend={backend}", f"hydra.run.dir={tmp_path}"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    evaluated = json.loads((tmp_path / "eval.json").read_text())
    trained_val = json.loads((best / "trainer.json").read_text())["final_val"]
    assert (
        evaluated["recipe"] == "cnn" and evaluated["samples"] == 52
    )  # a stratified 20% of TINY's 256
    assert evaluated["metrics"]["accuracy"] == pytest.approx(trained_val["accuracy"], abs=1e-9)
    # float32 sums in another order on the other backend: agree to about 1e-6 relative
    assert evaluated["metrics"]["loss"] == pytest.approx(trained_val["loss"], rel=1e-5)


@pytest.mark.parametrize("what", ["recipe", "data"])
def test_eval_from_a_crafted_checkpoint_alone_refuses_what_it_names(
    hostile: tuple[Path, Path, Path], tmp_path: Path, what: str
) -> None:
    work, checkpoint, marker = hostile
    if what == "data":  # only the data source is crafted
        record = json.loads((checkpoint / "trainer.json").read_text())
        config = yaml.safe_load(record["config"])
        config["recipe"]["module"] = "dualtrain.recipes.cnn"
        record["config"] = yaml.safe_dump(config)
        (checkpoint / "trainer.json").write_text(json.dumps(record))
    result = run_cli(
        "mode=eval", f"checkpoint.path={checkpoint}", f"hydra.run.dir={tmp_path / 'e'}", cwd=work
    )
    assert result.returncode == 2
    line = one_error_line(result)
    assert ("'evil_recipe'" if what == "recipe" else "'os:system'") in line
    assert "does not ship with dualtrain" in line
    assert not marker.exists()


def test_a_signal_during_start_up_still_writes_the_summary(tmp_path: Path) -> None:
    """SIGTERM once the run has its directory but may not have trained a step: exit 143, one
    line, summary.json says interrupted (before: killed with no summary and no message)."""
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "dualtrain", *SMALL, f"hydra.run.dir={run_dir}"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not (run_dir / "metrics.jsonl").exists():  # the loggers exist: train() has begun
        assert proc.poll() is None and time.monotonic() < deadline, "the run never started"
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert "interrupted by SIGTERM after step" in one_error_line(subprocess.CompletedProcess(
        proc.args, proc.returncode, "", stderr
    ))  # fmt: skip
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "interrupted"


def test_a_full_disk_is_one_line_and_keeps_what_was_written(trained: Path, tmp_path: Path) -> None:
    """metrics.jsonl made a link to /dev/full, where every write fails with ENOSPC."""
    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir, symlinks=True)
    (run_dir / "metrics.jsonl").unlink()
    (run_dir / "metrics.jsonl").symlink_to("/dev/full")
    checkpoints = snapshot(run_dir / "checkpoints")
    result = run_cli(*SMALL, "trainer.max_epochs=3", "checkpoint.resume=auto",
                     f"hydra.run.dir={run_dir}")  # fmt: skip
    assert result.returncode == 1, result.stderr[-2000:]
    line = one_error_line(result)
    assert "metrics.jsonl" in line and "No space left on device" in line
    after = snapshot(run_dir / "checkpoints")
    assert {k: v for k, v in after.items() if k in checkpoints} == checkpoints  # none changed
