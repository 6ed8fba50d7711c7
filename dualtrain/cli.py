"""The command line: Hydra composes the config; dualtrain validates it, picks the backend, runs.

This is the only module that sees Hydra. Nothing here imports torch, tensorflow or Keras, so
`python -m dualtrain --help` and config errors stay fast and framework-free.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, NoReturn

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from dualtrain.errors import ConfigError, DualtrainError
from dualtrain.settings import Settings

_PACKAGE_CONFIGS = Path(__file__).parent / "configs"


def main() -> None:
    """`python -m dualtrain [overrides]`: see `--help`."""
    _hydra_main()


@hydra.main(config_path="configs", config_name="train", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN:
        # A process holds one Keras backend, so every job of a sweep runs in a process of its own.
        _run_in_new_process(hydra_cfg)
        return
    _add_user_config_dirs_to_path(hydra_cfg)
    try:
        settings = settings_from_config(cfg, Path(hydra_cfg.runtime.output_dir))
        run(settings)
    except DualtrainError as err:
        _exit_with(str(err), err.exit_code)
    except KeyboardInterrupt:
        _exit_with("interrupted; summary.json records where the run stopped", 130)
    except Exception as err:  # a bug or a framework error: one line unless the user asks for more
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        _exit_with(f"{type(err).__name__}: {err} (set HYDRA_FULL_ERROR=1 for the traceback)", 1)


def settings_from_config(cfg: DictConfig, run_dir: Path) -> Settings:
    """Turns the composed config into validated settings; imports no framework."""
    try:
        plain: Any = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as err:
        raise ConfigError(
            f"{err.full_key} has no value; set it, e.g. data=python data.source=my_module:load_data"
            if err.full_key == "data.source"
            else f"{err.full_key} has no value; set it with {err.full_key}=<value>"
        ) from None
    except OmegaConfBaseException as err:
        raise ConfigError(f"the config cannot be resolved: {err}") from None
    return Settings.from_config(plain, run_dir=run_dir, config_yaml=OmegaConf.to_yaml(cfg))


def run(settings: Settings) -> None:
    """Runs the job that `mode` names."""
    from dualtrain import run as jobs

    {"train": jobs.train, "eval": jobs.evaluate}[settings.mode](settings)


def _exit_with(message: str, code: int) -> NoReturn:
    print("dualtrain: error: " + " ".join(message.split()), file=sys.stderr)
    sys.exit(code)


def _user_config_dirs(hydra_cfg: Any) -> list[str]:
    """Directories the user added with --config-dir or hydra.searchpath (not the package's own)."""
    dirs = []
    for source in hydra_cfg.runtime.config_sources:
        if source.schema == "file" and Path(source.path).resolve() != _PACKAGE_CONFIGS.resolve():
            dirs.append(source.path)
    return dirs


def _add_user_config_dirs_to_path(hydra_cfg: Any) -> None:
    """Lets a user's recipe YAML name a Python module that sits next to it."""
    for directory in reversed(_user_config_dirs(hydra_cfg)):
        if directory not in sys.path:
            sys.path.insert(0, directory)


def _run_in_new_process(hydra_cfg: Any) -> None:
    command = [sys.executable, "-m", "dualtrain", *hydra_cfg.overrides.task]
    for directory in _user_config_dirs(hydra_cfg):
        command += ["--config-dir", directory]
    command += [o for o in hydra_cfg.overrides.hydra if o.startswith("hydra.searchpath")]
    output_dir = str(hydra_cfg.runtime.output_dir).replace("\\", "\\\\").replace("'", "\\'")
    command.append(f"hydra.run.dir='{output_dir}'")
    code = subprocess.call(command)
    if code != 0:
        sys.exit(code)  # the job already printed its error; stop the sweep as Hydra would
