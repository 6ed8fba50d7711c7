"""dualtrain.fit and dualtrain.evaluate from Python, on this process's backend (and the child
process's errors for the other one)."""

from __future__ import annotations

import json
import logging
import re
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import yaml
from hydra import initialize_config_module
from hydra.core.global_hydra import GlobalHydra

import dualtrain
from dualtrain import distributed, rundir
from dualtrain.cli import compose_job
from tests.backend.conftest import BACKEND
from tests.conftest import readme_recipe_example

OTHER = "tf" if BACKEND == "torch" else "torch"
TINY = ["data=synthetic", "data.num_samples=256", "data.shape=[8]", "trainer.max_epochs=2",
        "logger.progress=false"]  # fmt: skip


def test_fit_trains_here_into_the_command_lines_run_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    handlers = list(logging.getLogger("dualtrain").handlers)
    run = dualtrain.fit("mlp", overrides=TINY)  # backend: the one this process's Keras runs
    assert run.run_dir.parent == tmp_path / "outputs" / "mlp" / BACKEND
    assert re.fullmatch(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d", run.run_dir.name)
    written = json.loads((run.run_dir / "summary.json").read_text())
    assert json.loads(json.dumps(run.summary)) == written
    # 204 train samples of 256 (52 val), batch 64 (synthetic's): 4 steps an epoch
    assert (written["status"], written["backend"], written["steps"]) == ("completed", BACKEND, 8)
    overrides = yaml.safe_load((run.run_dir / ".hydra" / "overrides.yaml").read_text())
    assert overrides == ["recipe=mlp", f"backend={BACKEND}", *TINY]  # as the CLI writes them
    line = f"[dualtrain][INFO] - training mlp on {BACKEND} (jit_compile=False)"
    assert line in (run.run_dir / "dualtrain.log").read_text()
    shown = capsys.readouterr().out
    assert line in shown and f"dualtrain mlp on {BACKEND}: completed" in shown
    # The caller's process is as it was: its logging, and no lock on the finished run.
    assert logging.getLogger("dualtrain").handlers == handlers
    assert not rundir.holds(run.run_dir)

    # The run's checkpoint, loaded and evaluated here: the summary's final val metrics.
    scores = dualtrain.evaluate(run.run_dir, run_dir=tmp_path / "eval")
    assert scores == json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert scores["checkpoint_step"] == 8
    assert scores["metrics"]["accuracy"] == written["final"]["val"]["accuracy"]
    # the same weights and batches on the same backend; float32 sums of the mean: 1e-6 relative
    assert scores["metrics"]["loss"] == pytest.approx(written["final"]["val"]["loss"], rel=1e-6)
    model = run.load_model()
    x = np.random.default_rng(0).normal(size=(4, 8)).astype("float32")
    assert np.asarray(model.predict(x, verbose=0)).shape == (4, 10)


def test_a_run_of_the_same_second_gets_a_directory_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class FrozenClock:  # every run directory named by one second
        @staticmethod
        def fromtimestamp(_: float) -> datetime:
            return datetime(2026, 1, 2, 3, 4, 5)

    monkeypatch.setattr(distributed, "datetime", FrozenClock)
    monkeypatch.chdir(tmp_path)
    earlier = tmp_path / "outputs" / "mlp" / BACKEND / "2026-01-02_03-04-05"
    earlier.mkdir(parents=True)
    (earlier / "summary.json").write_text("{}")
    run = dualtrain.fit("mlp", overrides=[*TINY, "trainer.max_steps=1"])
    assert run.run_dir == earlier.with_name("2026-01-02_03-04-05_2")
    assert run.summary["steps"] == 1
    # A directory the caller names is theirs: an earlier run there is refused, as by the CLI.
    with pytest.raises(dualtrain.ConfigError, match="holds an earlier run"):
        dualtrain.fit("mlp", overrides=TINY, run_dir=earlier)


def test_a_users_recipe_from_its_directory_and_its_model(tmp_path: Path) -> None:
    user = tmp_path / "my_recipes"
    (user / "recipe").mkdir(parents=True)
    recipe_yaml, recipe_python = readme_recipe_example()
    (user / "recipe" / "blobs.yaml").write_text(recipe_yaml)
    (user / "blobs_recipe.py").write_text(recipe_python)
    overrides = ["trainer.max_epochs=2", "logger.progress=false"]
    run = dualtrain.fit("blobs", overrides=overrides, run_dir=tmp_path / "run", config_dir=user)
    assert (run.summary["recipe"], run.summary["steps"]) == ("blobs", 30)  # 480 train / 32
    # Its module is the caller's: load_model imports it because the caller named it (fit's
    # recipe), not because the checkpoint does.
    model = run.load_model()
    centres = np.array([[2.0, 0.0], [-2.0, 0.0], [0.0, 2.5]], "float32")  # the recipe's blobs
    # Two epochs on blobs 2 apart with noise 0.6 separate their centres.
    assert np.asarray(model.predict(centres, verbose=0)).argmax(-1).tolist() == [0, 1, 2]


def test_the_other_backend_runs_in_a_new_process_and_its_errors_are_the_clis(
    tmp_path: Path,
) -> None:
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "summary.json").write_text("{}")
    # The child refuses the directory (its claim), before it imports a framework.
    with pytest.raises(dualtrain.ConfigError) as refused:
        dualtrain.fit("mlp", backend=OTHER, overrides=TINY, run_dir=earlier)
    assert str(refused.value) == (
        f"hydra.run.dir={earlier} holds an earlier run (summary.json); continue it with "
        "checkpoint.resume=auto, or choose another hydra.run.dir"
    )
    # Data that is found bad at run time: exit code 1, a RunError.
    x = np.zeros((100, 4), "float32")
    x[7, 2] = np.nan
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(100) % 3)
    bad = ["recipe=mlp", "data=npz", f"data.path={tmp_path}/d.npz", "logger.progress=false"]
    with pytest.raises(dualtrain.RunError, match="NaN or Inf features, the first at sample 7"):
        dualtrain.fit(backend=OTHER, overrides=bad, run_dir=tmp_path / "bad")
    with pytest.raises(dualtrain.RunError, match=f"already runs Keras on {BACKEND}"):
        dualtrain.fit("mlp", backend=OTHER, overrides=TINY, in_process=True)


def test_composing_leaves_the_callers_hydra_initialized() -> None:
    with initialize_config_module("dualtrain.configs", version_base="1.3"):
        outer = GlobalHydra.instance().hydra
        cfg, hydra_cfg = compose_job(["recipe=mlp"])
        assert GlobalHydra.instance().hydra is outer
    assert cfg.recipe.name == "mlp" and "hydra" not in cfg
    assert Path(hydra_cfg.runtime.output_dir).is_absolute()
