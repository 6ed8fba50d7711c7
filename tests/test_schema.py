"""The config schema: the dataclasses' defaults are the config's, recipe.task and
recipe.loss_weights, and the checks a data source declares for its own keys."""

from __future__ import annotations

import dataclasses
import importlib
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from dualtrain.cli import settings_from_config
from dualtrain.errors import ConfigError
from dualtrain.settings import (
    TASKS,
    BackendSettings,
    CheckpointSettings,
    ExportSettings,
    ParitySettings,
    ProfileSettings,
    RecipeSettings,
    SchedulerSettings,
    Settings,
    TrainerSettings,
    config_defaults,
    section_keys,
)
from tests.conftest import run_cli
from tests.data_files import write_image_folder


def composed(*overrides: str) -> dict[str, Any]:
    with initialize_config_module("dualtrain.configs", version_base="1.3"):
        cfg = compose("train", overrides=list(overrides))
    plain: Any = OmegaConf.to_container(cfg, resolve=False)
    return dict(plain)


def settings(*overrides: str) -> Settings:
    with initialize_config_module("dualtrain.configs", version_base="1.3"):
        cfg = compose("train", overrides=list(overrides))
    return settings_from_config(cfg, Path("unused"))


def error(*overrides: str) -> str:
    with pytest.raises(ConfigError) as err:
        settings(*overrides)
    assert "\n" not in str(err.value)
    return str(err.value)


# -- one source of defaults ----------------------------------------------------------------------


def test_tasks_are_exported() -> None:
    assert TASKS == ("classification", "multilabel", "regression", "none")


@pytest.mark.parametrize(
    "section,cls",
    [
        ("backend", BackendSettings),
        ("trainer", TrainerSettings),
        ("scheduler", SchedulerSettings),
        ("checkpoint", CheckpointSettings),
        ("parity", ParitySettings),
        ("export", ExportSettings),
        ("profile", ProfileSettings),
    ],
)
def test_the_composed_config_holds_every_key_of_a_section(section: str, cls: type) -> None:
    """`--cfg job` shows a complete config: every key of these sections is in it."""
    assert set(composed()[section]) == set(section_keys(section) or ())


def test_the_defaults_are_the_dataclasses() -> None:
    """A default comes from its dataclass field, whatever option is chosen (none sets them)."""
    s = settings("recipe=mlp", "backend=tf")
    assert s.trainer == dataclasses.replace(TrainerSettings(), max_epochs=30)
    assert s.scheduler == SchedulerSettings()
    assert (s.parity, s.export) == (ParitySettings(), ExportSettings())
    assert dataclasses.replace(s.backend, name="torch") == BackendSettings(name="torch")
    assert (s.mode, s.seed, s.checkpoint) == ("train", 0, CheckpointSettings())
    assert (s.recipe.task, s.recipe.loss_weights) == ("classification", None)  # mlp.yaml states it
    assert (s.data.batch_size, s.data.val_fraction, s.data.num_workers) == (32, 0.2, 0)


def test_config_defaults_show_resume_as_null() -> None:
    defaults = config_defaults()
    assert defaults["checkpoint"]["resume"] is None and "init_from" not in defaults["checkpoint"]
    assert defaults["init_from"] is None
    assert defaults["export"]["formats"] == []


def test_a_section_without_a_key_takes_the_default() -> None:
    """A config written before a key existed (a checkpoint's recipe section) still reads."""
    cfg = composed()
    cfg["recipe"] = {"name": "cnn", "module": "dualtrain.recipes.cnn", "model": {}}
    del cfg["trainer"]["limit_val_batches"]
    s = Settings.from_config(cfg, run_dir=Path("unused"))
    assert s.recipe == RecipeSettings(name="cnn", module="dualtrain.recipes.cnn")
    assert s.trainer.limit_val_batches == 1.0


def test_cfg_job_shows_the_defaults() -> None:
    result = run_cli("--cfg", "job", "scheduler=step", timeout=120)
    assert result.returncode == 0, result.stderr
    job = OmegaConf.create(result.stdout)
    assert job.trainer.limit_val_batches == 1.0
    assert job.scheduler.step_size == 1000
    assert job.backend.capture_forward is True
    assert job.recipe.task == "classification"  # as cnn.yaml, the default recipe, states
    assert job.recipe.loss_weights is None


# -- recipe.task and recipe.loss_weights ---------------------------------------------------------


@pytest.mark.parametrize("task", TASKS)
def test_recipe_task_names_one_task(task: str) -> None:
    assert settings(f"recipe.task={task}").recipe.task == task


def test_recipe_task_per_output() -> None:
    s = settings("recipe.task={digit:classification,box:regression}")
    assert s.recipe.task == {"digit": "classification", "box": "regression"}


def test_recipe_loss_weights() -> None:
    s = settings("recipe.loss_weights={digit:1,box:0.5}")
    assert s.recipe.loss_weights == {"digit": 1.0, "box": 0.5}
    assert all(isinstance(w, float) for w in s.recipe.loss_weights.values())


@pytest.mark.parametrize(
    "override,message",
    [
        (
            "recipe.task=segmentation",
            "recipe.task must be one of classification, multilabel, regression, none, or a "
            "mapping of output name to one of them, e.g. "
            "recipe.task={label:classification,box:regression}; got 'segmentation'",
        ),
        ("recipe.task=3", "recipe.task must be one of classification, multilabel"),
        (
            "recipe.task={box:regresion}",
            "recipe.task.box must be one of classification, multilabel, regression, none; "
            "got 'regresion'",
        ),
        (
            "recipe.loss_weights=0.5",
            "recipe.loss_weights must be a mapping of output name to a weight >= 0, e.g. "
            "recipe.loss_weights={label:1.0,box:0.5}; got 0.5",
        ),
        (
            "recipe.loss_weights={box:-1}",
            "recipe.loss_weights.box must be a number >= 0 such as 0.5; got -1",
        ),
        (
            "recipe.loss_weights={box:heavy}",
            "recipe.loss_weights.box must be a number >= 0 such as 0.5; got 'heavy'",
        ),
        ("recipe.loss_weights={box:inf}", "recipe.loss_weights.box must be a number >= 0 such as"),
    ],
)
def test_bad_task_and_loss_weights_are_one_line_errors(override: str, message: str) -> None:
    assert error(override).startswith(message)


# -- a data source's own keys --------------------------------------------------------------------

SOURCES = {
    "dualtrain.data.files": "npz",
    "dualtrain.data.images": "image_folder",
    "dualtrain.data.tabular": "load_csv",
    "dualtrain.data.sources": "synthetic",
}


@pytest.mark.parametrize("module,function", SOURCES.items())
def test_a_source_declares_the_checks_of_its_keys(module: str, function: str) -> None:
    table: Mapping[str, Any] = importlib.import_module(module).CONFIG_KEYS
    assert function in table
    assert "num_classes" in table[function]
    assert all(callable(check) for check in table[function].values())


def test_a_source_checks_its_keys_before_it_is_called(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "images", per_class=2, classes=2)
    base = ["data=image_folder", f"data.path={tmp_path / 'images'}"]
    assert settings(*base).data.params["image_size"] == [64, 64]
    assert error(*base, "data.on_bad_file=ignore") == (
        "data.on_bad_file must be one of error, skip; got 'ignore'"
    )
    assert error(*base, "data.image_size=[64]") == (
        "data.image_size must be [height, width] in pixels, e.g. [64,64]; got [64]"
    )
    assert error(*base, "data.val_path=/no/such") == (
        "data.val_path=/no/such does not exist; give the path of an existing file or folder"
    )
    assert error(*base, "data.num_classes=1") == "data.num_classes must be an integer >= 2; got 1"
    assert error("data=npz", "data.path=null") == (
        "data.path has no value; set it with data.path=<file or folder>"
    )


def test_a_users_source_is_not_imported_to_check_its_keys(tmp_path: Path) -> None:
    """Its keys go to it unchecked: a module of the user's runs only when the run starts."""
    (tmp_path / "my_source_mod.py").write_text("raise RuntimeError('imported')\n")
    sys.path.insert(0, str(tmp_path))
    try:
        s = settings("data=python", "data.source=my_source_mod:load", "+data.path=/no/such")
    finally:
        sys.path.remove(str(tmp_path))
    assert s.data.params == {"path": "/no/such"}
    assert "my_source_mod" not in sys.modules
