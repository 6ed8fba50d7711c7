"""Hydra's own errors as dualtrain's: one line that says what is wrong and what would be right.

Hydra reports a bad override, a missing config option or a broken YAML file itself, in several
lines or a traceback, and exits 1. Here such errors are let through to `cli.main` and turned into
one line and exit code 2 (usage and config errors) like every other dualtrain error.
Nothing here imports torch, tensorflow or Keras.
"""

from __future__ import annotations

import contextlib
import difflib
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import (
    ConfigCompositionException,
    HydraException,
    MissingConfigException,
    OverrideParseException,
    SearchPathException,
)
from omegaconf.errors import OmegaConfBaseException

from dualtrain import compat
from dualtrain.errors import ConfigError, first_line
from dualtrain.settings import unknown_key_error

GRAMMAR_URL = "https://hydra.cc/docs/advanced/override_grammar/basic/"


@contextlib.contextmanager
def hydra_errors_raised(argv: Sequence[str], package_configs: Path) -> Iterator[None]:
    """Checks the command line as Hydra will parse it, then lets the errors Hydra meets while
    composing the config and starting the job reach the caller instead of Hydra's reporter.

    Hydra parses the command line and reports errors inside `@hydra.main`; compat hands out its
    parser and keeps its reporter out of the way (`compat.hydra_args_parser`,
    `compat.hydra_errors_unreported`). Where Hydra's internals differ, the command line is not
    checked here and Hydra reports its own errors as before.
    """
    parser = compat.hydra_args_parser()
    if parser is not None:
        parser.error = _raise_usage_error
        args = parser.parse_args(list(argv))
        check_overrides(args.overrides)
        check_optional_group_options(args.overrides, package_configs, args.config_dir)
    with compat.hydra_errors_unreported():
        yield


def _raise_usage_error(message: str) -> Any:
    raise ConfigError(f"{message}; usage: python -m dualtrain [key=value ...] [-m] "
                      "[--config-dir DIR] [--cfg job] (see --help)")  # fmt: skip


def check_overrides(overrides: Sequence[str]) -> None:
    """Raises ConfigError for the first override that Hydra's grammar cannot read or that names
    no key, before Hydra composes anything."""
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    for override in parsed:
        if not override.key_or_group:
            raise ConfigError(
                f"the override {override.input_line!r} names no key; write key=value, e.g. "
                "trainer.max_epochs=3"
            )


def describe(err: BaseException, multirun: bool = False) -> tuple[str, int]:
    """The one line, and the exit code, for an error raised while Hydra set up the run."""
    if isinstance(err, ConfigError):
        return str(err), err.exit_code
    yaml_error = _yaml_error(err)
    if yaml_error is not None:
        return _yaml_message(yaml_error), 2
    if isinstance(err, OverrideParseException):
        return _parse_message(err.override, err.message), 2
    if isinstance(err, MissingConfigException):
        return _missing_config_message(err), 2
    if isinstance(err, SearchPathException):
        return f"{first_line(err)}; give --config-dir a directory that exists", 2
    if isinstance(err, ConfigCompositionException):
        return _composition_message(err), 2
    if isinstance(err, OSError) and err.filename is not None:
        key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
        return (
            f"cannot write the run directory: {err.strerror or err}: {err.filename}; "
            f"choose a directory that can be created and written with {key}=<dir>",
            2,
        )
    if isinstance(err, OmegaConfBaseException):
        return f"the config cannot be resolved: {first_line(err)}{_where(err)}", 2
    if isinstance(err, HydraException) or _raised_in_hydra(err):
        return _one_line(err), 2
    return f"{type(err).__name__}: {_one_line(err)} (set HYDRA_FULL_ERROR=1 for the traceback)", 1


def _parse_message(override: str, detail: str) -> str:
    detail = " ".join(line for line in detail.splitlines() if not line.startswith("See http"))
    if "missing EQUAL" in detail:
        return (
            f"the override {override!r} has no value; write {override}=<value> "
            f"(or ~{override} to delete the key)"
        )
    detail = detail.replace(f"Error parsing override '{override}' ", "")
    return (
        f"cannot parse the override {override!r} ({detail}); write key=value, and quote values "
        f"with spaces or brackets, e.g. 'data.image_size=[64,64]'; see {GRAMMAR_URL}"
    )


def _missing_config_message(err: MissingConfigException) -> str:
    missing = str(err.missing_cfg_file or "")
    group, _, option = missing.rpartition("/")
    if not group or not err.options:
        return f"cannot find the config {missing!r}; {first_line(err)}"
    return option_error(group, option, list(err.options))


def option_error(group: str, option: str, options: Sequence[str]) -> str:
    """`recipe=cnnn` -> its valid options and the nearest one."""
    message = f"{group}={option}: no such option; choose one of {', '.join(sorted(options))}"
    near = difflib.get_close_matches(option, options, n=1, cutoff=0.6)
    return message + (f"; did you mean {group}={near[0]}?" if near else "")


def _composition_message(err: ConfigCompositionException) -> str:
    text = str(err)
    missing_key = re.match(r"Could not override '([^']+)'", text)
    if missing_key and isinstance(err.__cause__, OmegaConfBaseException):
        key = missing_key.group(1)
        unknown = unknown_key_error(key)
        if unknown is not None:
            return str(unknown)
        # A key that the section passes on (a data source argument, a model keyword argument,
        # an optimizer argument its YAML does not set): Hydra needs it added with +.
        line = re.search(r"use \+(\S+)", text)
        add = "+" + (line.group(1) if line else f"{key}=<value>")
        return f"{key} is not in the config yet; add it with {add}"
    present = re.match(r"Could not append to config. An item is already at '([^']+)'", text)
    if present:
        line = re.search(r"remove \+ prefix: '([^']+)'", text)
        change = line.group(1) if line else f"{present.group(1)}=<value>"
        return f"{present.group(1)} is already in the config; change it without +: {change}"
    absent = re.match(r"Could not delete from config. '([^']+)' does not exist", text)
    if absent:
        unknown = unknown_key_error(absent.group(1))
        return f"cannot delete {absent.group(1)}: {unknown or 'the config has no such key'}"
    merging = re.match(r"Error merging override (\S+)", text)
    if merging and err.__cause__ is not None:
        return f"cannot set {merging.group(1)}: {first_line(err.__cause__)}"
    cause = err.__cause__
    return _one_line(err) + (f": {first_line(cause)}" if cause is not None else "")


def _yaml_error(err: BaseException) -> yaml.YAMLError | None:
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, yaml.YAMLError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _yaml_message(err: yaml.YAMLError) -> str:
    mark = getattr(err, "problem_mark", None)
    where = f"{mark.name}, line {mark.line + 1}, column {mark.column + 1}" if mark else "a config"
    problem = str(getattr(err, "problem", None) or err)
    tag = re.search(r"tag '(?:tag:yaml\.org,2002:)?([^']+)'", problem)
    if isinstance(err, yaml.constructor.ConstructorError) and tag:
        return (
            f"{where}: the YAML tag !!{tag.group(1)} is not allowed; configs hold plain values "
            "(strings, numbers, true/false, null, lists, mappings); name Python code by its "
            "import path as a string, e.g. module: my_recipe"
        )
    return (
        f"{where}: invalid YAML: {problem}; fix the file's syntax (indentation, colons, brackets)"
    )


def _where(err: OmegaConfBaseException) -> str:
    key = getattr(err, "full_key", None)
    return f" (at {key})" if key else ""


def _one_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines()]
    text = " ".join(line for line in lines if line and not line.startswith("See http"))
    return text or type(err).__name__


def _raised_in_hydra(err: BaseException) -> bool:
    """Whether the error comes from Hydra or OmegaConf (a bad command line or config) rather
    than from dualtrain's code."""
    tb = err.__traceback__
    module = ""
    while tb is not None:
        module = str(tb.tb_frame.f_globals.get("__name__", ""))
        tb = tb.tb_next
    return module.split(".")[0] in ("hydra", "omegaconf")


def check_optional_group_options(
    overrides: Sequence[str], package_configs: Path, config_dir: str | None
) -> None:
    """Raises ConfigError for an option of an optional group (`- optional debug: null` in
    train.yaml) that no config directory has: Hydra skips it without a word, so a misspelt
    debug=fast_dev_rn would start a full training run."""
    if any(o.lstrip("+~").startswith("hydra.searchpath") for o in overrides):
        return  # configs from other places too; Hydra finds them, this does not look
    try:
        defaults = yaml.safe_load((package_configs / "train.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return
    optional = {
        str(key).split()[1]
        for entry in defaults.get("defaults", [])
        if isinstance(entry, dict)
        for key in entry
        if str(key).startswith("optional ")
    }
    directories = [package_configs] + ([Path(config_dir)] if config_dir else [])
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        value = override.value()
        if override.key_or_group not in optional or override.package or not isinstance(value, str):
            continue
        group = override.key_or_group
        options = sorted({f.stem for d in directories for f in (d / group).glob("*.yaml")})
        if value not in options:
            raise ConfigError(option_error(group, value, options))
