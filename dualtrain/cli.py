"""The command line: Hydra composes the config; dualtrain validates it, picks the backend, runs.

This is the only module that sees Hydra (dualtrain.api, the Python API, composes through it).
Nothing here imports torch, tensorflow or Keras, so `python -m dualtrain --help` and config
errors stay fast and framework-free.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from dualtrain import compat, config_errors, distributed, rundir
from dualtrain.checkpoint import find_checkpoint
from dualtrain.errors import ConfigError, DualtrainError
from dualtrain.settings import Settings

if TYPE_CHECKING:
    from dualtrain.parity import CommandFor

_PACKAGE_CONFIGS = Path(__file__).parent / "configs"


def main() -> None:
    """`python -m dualtrain [overrides]`: see `--help`."""
    if "--help" in sys.argv[1:] or "-h" in sys.argv[1:]:
        _share_config_repository_in_help()
    try:
        with config_errors.hydra_errors_raised(sys.argv[1:], _PACKAGE_CONFIGS):
            _hydra_main()
    except Exception as err:  # from Hydra: the job reports its own errors and exits
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        multirun = any(a in ("-m", "--multirun") for a in sys.argv[1:])
        _exit_with(*config_errors.describe(err, multirun))


# The default run directory's ${shared_now:...}: under torchrun, one time (and dir) for all ranks.
distributed.register_shared_now()


def _share_config_repository_in_help() -> None:
    """Makes `--help` take well under a second: Hydra's help copies the whole config repository
    for every config group, which took most of `--help`'s 2 s; compat keeps one copy (and leaves
    Hydra's own path where its internals differ)."""
    compat.share_hydra_config_repository()


@hydra.main(config_path="configs", config_name="train", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> float | None:
    """Runs one job and returns its monitored metric (`checkpoint.monitor`), which sweepers such
    as Optuna's optimize."""
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN:
        # A process holds one Keras backend, so every job of a sweep runs in a process of its own.
        return _run_job_in_new_process(hydra_cfg, cfg)
    try:
        settings = prepare_job(cfg, hydra_cfg)
        result = run(settings, command_for=commands_for(hydra_cfg))
    except DualtrainError as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":  # asked for: the chain, then the line
            traceback.print_exception(err)
        _exit_with(str(err), err.exit_code)
    except KeyboardInterrupt:
        _exit_with("interrupted; summary.json records where the run stopped", 130)
    except OSError as err:  # a full disk, a read-only directory: say which file, not a traceback
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        where = f" {err.filename}" if err.filename else ""
        _exit_with(
            f"cannot write{where}: {err.strerror or err}; free some space or choose a writable "
            "hydra.run.dir (files written before stay as they were)",
            1,
        )
    except Exception as err:  # a bug or a framework error: one line unless the user asks for more
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        _exit_with(f"{type(err).__name__}: {err} (set HYDRA_FULL_ERROR=1 for the traceback)", 1)
    return monitored_value(result, settings.checkpoint.monitor)


def compose_job(
    overrides: Sequence[str], config_dir: str | Path | None = None
) -> tuple[DictConfig, DictConfig]:
    """The config that `python -m dualtrain [--config-dir DIR] OVERRIDES` runs, composed with
    Hydra's compose API (for `dualtrain.fit` in a notebook), and its `hydra` node, as the command
    line's job sees it: `runtime.output_dir` is the run directory, absolute.

    Raises:
        ConfigError: with the command line's one line, for what Hydra refuses too.
    """
    if config_dir is not None and not Path(config_dir).is_dir():
        raise ConfigError(
            f"config_dir={config_dir} is not a directory; give the directory that holds your "
            "recipe/ folder, as for --config-dir"
        )
    try:
        return _composed(list(overrides), config_dir)
    except ConfigError:
        raise
    except Exception as err:
        message, code = config_errors.describe(err)
        if code != 2:
            raise  # not a config mistake: the caller gets the traceback
        raise ConfigError(message) from err


def _composed(overrides: list[str], config_dir: str | Path | None) -> tuple[DictConfig, DictConfig]:
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    # What the command line checks before Hydra parses it (config_errors.hydra_errors_raised).
    config_errors.check_overrides(overrides)
    config_errors.check_optional_group_options(
        overrides, _PACKAGE_CONFIGS, None if config_dir is None else str(config_dir)
    )
    if config_dir is not None:  # what --config-dir does, in the compose API's terms
        overrides.append(f"hydra.searchpath=[{quoted(f'file://{Path(config_dir).resolve()}')}]")
    # Each call names its run directory by its own time, not by the first call's.
    distributed.register_shared_now()
    # Hydra allows one initialization per process: one the caller made is set aside, and back after.
    global_hydra = GlobalHydra.instance()
    outer = global_hydra.hydra if global_hydra.is_initialized() else None
    global_hydra.clear()
    try:
        with initialize_config_module("dualtrain.configs", version_base="1.3"):
            cfg = compose("train", overrides=overrides, return_hydra_config=True)
    finally:  # (initialize_config_module has put back an instance of its own by now)
        if outer is not None:
            GlobalHydra.instance().clear()
            GlobalHydra.instance().initialize(outer)
    hydra_cfg = cfg.hydra
    hydra_cfg.runtime.output_dir = str(Path(str(hydra_cfg.run.dir)).absolute())
    job = copy.deepcopy(cfg)
    with open_dict(job):
        del job["hydra"]
    return job, hydra_cfg


def prepare_job(cfg: DictConfig, hydra_cfg: Any, claim: bool = True) -> Settings:
    """The validated settings of a composed job, which runs in `hydra_cfg.runtime.output_dir`.

    Puts the user's config directories on Python's import path (their recipes' modules). With
    `claim`, claims the run directory for this process (unless another process of the job holds
    it) and writes `.hydra/` there; nothing is written before the directory is this run's
    (hydra.output_subdir=null: Hydra does not write .hydra/ before the config is even checked).
    """
    _add_user_config_dirs_to_path(hydra_cfg)
    # As typed: an override may hold ${...}, which is not to be resolved here.
    typed: Any = OmegaConf.to_container(hydra_cfg.overrides.task)
    overrides = [str(o) for o in typed]
    cfg = _model_from_checkpoint(cfg, overrides)
    settings = settings_from_config(cfg, Path(hydra_cfg.runtime.output_dir))
    if claim and rundir.claims(settings):
        rundir.claim(settings)
        rundir.write_hydra_files(
            settings.run_dir, cfg, OmegaConf.create({"hydra": hydra_cfg}), overrides
        )
    return settings


def commands_for(hydra_cfg: Any) -> CommandFor:
    """How parity and export start their jobs: this job's command line, with their overrides."""
    return lambda overrides, run_dir: _job_command(hydra_cfg, overrides, run_dir)


def job_command(hydra_cfg: Any) -> list[str]:
    """`python -m dualtrain` with this job's overrides and run directory: the job in a new
    process, as a multirun starts each of its jobs."""
    return _job_command(hydra_cfg, [], Path(hydra_cfg.runtime.output_dir))


def _model_from_checkpoint(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """`mode=eval|export checkpoint.path=RUN` needs nothing else: the recipe (with its model
    options) and the data come from the checkpoint's own config, unless the command line names
    them (`recipe=...`, `data=...` or any of their keys)."""
    try:
        mode, path = OmegaConf.select(cfg, "mode"), OmegaConf.select(cfg, "checkpoint.path")
    except OmegaConfBaseException:
        return cfg  # settings_from_config says what cannot be resolved
    if mode not in ("eval", "export") or not path:
        return cfg
    named = {_override_key(o).split(".")[0].split("/")[0] for o in overrides}
    missing = [section for section in ("recipe", "data") if section not in named]
    if not missing:
        return cfg
    from dualtrain.loading import checkpoint_sections

    taken = checkpoint_sections(Path(str(path)), missing)
    cfg = cfg.copy()
    with open_dict(cfg):
        for section, content in taken.items():
            cfg[section] = content
    return cfg


def settings_from_config(cfg: DictConfig, run_dir: Path) -> Settings:
    """Turns the composed config into validated settings; imports no framework."""
    try:
        plain: Any = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as err:
        raise ConfigError(
            f"{err.full_key} has no value; set it, e.g. data=python data.source=my_module:load_data"
            if err.full_key == "data.source"
            else f"{err.full_key} has no value; set it with {err.full_key}=<value>"
        ) from err
    except OmegaConfBaseException as err:
        raise ConfigError(f"the config cannot be resolved: {err}") from err
    return Settings.from_config(plain, run_dir=run_dir, config_yaml=OmegaConf.to_yaml(cfg))


def run(settings: Settings, command_for: CommandFor | None = None) -> dict[str, Any]:
    """Runs the job that `mode` names and returns its result (for train, the summary).

    `command_for(overrides, run_dir)` makes the command line of a job in a new process; parity
    and export start one per backend with it.
    """
    from dualtrain import export, parity
    from dualtrain import run as jobs

    if settings.mode == "eval":
        return jobs.evaluate(settings)
    if settings.mode == "lr_find":
        from dualtrain import lr_find

        return lr_find.run(settings)
    if settings.mode == "summary":
        return jobs.summarize(settings)
    if settings.mode == "export" and settings.export.worker:
        return export.run_worker(settings)
    if settings.mode == "parity" and settings.parity.worker:
        return parity.run_worker(settings)
    if settings.mode == "train" and not settings.export.formats:
        return jobs.train(settings)
    if command_for is None:
        raise ValueError(
            f"mode={settings.mode} with export.formats starts processes: give command_for"
        )
    if settings.mode == "parity":
        return parity.compare_backends(settings, command_for)
    if settings.mode == "export":
        source = find_checkpoint(Path(str(settings.checkpoint.path)))
        return export.export_checkpoint(settings, source, command_for)
    summary = jobs.train(settings)
    try:
        # The final weights, as the run's newest checkpoint holds them.
        summary["export"] = export.export_checkpoint(
            settings, find_checkpoint(settings.run_dir), command_for
        )
    finally:
        # The MLflow run (rank 0's) has ended: the report goes in after.
        if "mlflow" in settings.logger.loggers and distributed.is_writer(settings.backend.strategy):
            from dualtrain.logging.mlflow import log_export_report

            log_export_report(settings.run_dir)
    return summary


def monitored_value(result: dict[str, Any], monitor: str) -> float | None:
    """`val/accuracy` -> result["final"]["val"]["accuracy"] of a summary (None if absent)."""
    split, _, name = monitor.partition("/")
    value = (result.get("final") or {}).get(split, {}).get(name)
    return float(value) if isinstance(value, (int, float)) else None


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


def _job_command(hydra_cfg: Any, overrides: list[str], run_dir: Path) -> list[str]:
    """`python -m dualtrain` with this job's overrides, `overrides` replacing any of the same key,
    the user's config directories, and `run_dir` as hydra.run.dir."""
    replaced = {_override_key(o) for o in overrides}
    task = [o for o in hydra_cfg.overrides.task if _override_key(o) not in replaced]
    command = [sys.executable, "-m", "dualtrain"]
    for directory in _user_config_dirs(hydra_cfg):  # options before the overrides (argparse)
        command += ["--config-dir", directory]
    command += [*task, *overrides]
    command += [o for o in hydra_cfg.overrides.hydra if o.startswith("hydra.searchpath")]
    command.append(f"hydra.run.dir={quoted(str(run_dir))}")
    return command


def quoted(value: str) -> str:
    """A value quoted for Hydra's override grammar (a path may hold spaces, commas, quotes)."""
    escaped = value.replace("\\", "\\\\").replace("'", "\\'")
    return f"'{escaped}'"


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _run_job_in_new_process(hydra_cfg: Any, cfg: DictConfig) -> float | None:
    output_dir = Path(hydra_cfg.runtime.output_dir)
    code = subprocess.call(job_command(hydra_cfg))
    if code != 0:
        sys.exit(code)  # the job already printed its error; stop the sweep as Hydra would
    try:
        summary = json.loads((output_dir / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # a job that writes no summary (eval, parity) has no monitored value
    return monitored_value(summary, str(OmegaConf.select(cfg, "checkpoint.monitor")))
