"""A trained model from a checkpoint, for use in Python, without running anything it names.

A checkpoint is data. What its model builder needs is stored in `trainer.json` as `model_spec`:
the recipe's name and module, its `recipe.model` options, and what the data is made of (each
input's and target's name, shape and dtype, each target's task, classes and class names).
Rebuilding the model from it calls no data source, and imports the recipe's module only when it
is a recipe that ships with dualtrain or the caller named that module
(`load_model(path, recipe="my_recipes.net")`): a crafted checkpoint cannot make dualtrain import
or call code of its choosing.

This module imports no framework at import time; `load_model` imports the chosen backend's.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dualtrain.checkpoint import find_checkpoint, read_checkpoint, read_record
from dualtrain.errors import ConfigError, RunError
from dualtrain.settings import RecipeSettings

if TYPE_CHECKING:
    from dualtrain.data import DataInfo

_RECIPES_PACKAGE = "dualtrain.recipes"


def model_spec(recipe: RecipeSettings, info: DataInfo) -> dict[str, Any]:
    """What a checkpoint records so its model can be rebuilt without the data (JSON)."""
    return {
        "recipe": recipe.name,
        "module": recipe.module,
        "model": dict(recipe.model),
        "data": info.to_json(),  # every input and target: name, shape, dtype, task, classes
    }


def shipped_recipe(module: str) -> bool:
    """Whether `module` is one of the recipe modules in dualtrain's own package."""
    return _ships(module, "recipes")


def _ships(module: str, package: str) -> bool:
    """Whether `module` is a module of `dualtrain.<package>` (checked on disk, importing
    nothing)."""
    prefix, _, name = module.rpartition(".")
    folder = Path(__file__).parent / package
    return (
        prefix == f"dualtrain.{package}"
        and name.isidentifier()
        and (folder / f"{name}.py").is_file()
    )


def trusted_module(spec_module: str, named: str | None, source: Path) -> str:
    """The module to import for a checkpoint's recipe: the stored one, if dualtrain ships it or
    the caller named the same one; anything else is refused before it is imported."""
    if named is not None:
        wanted = (
            f"{_RECIPES_PACKAGE}.{named}"
            if shipped_recipe(f"{_RECIPES_PACKAGE}.{named}")
            else named
        )
        if wanted != spec_module:
            raise ConfigError(
                f"{source} was written by recipe module {spec_module!r}, not {named!r}; "
                f"name the module it was trained with"
            )
        return spec_module
    if not shipped_recipe(spec_module):
        raise ConfigError(
            f"{source} names the recipe module {spec_module!r}, which does not ship with "
            "dualtrain; a module named inside a checkpoint is imported only when you name it "
            f"too: load_model(path, recipe={spec_module!r})"
        )
    return spec_module


def checkpoint_sections(path: Path, sections: list[str]) -> dict[str, Any]:
    """`sections` (`recipe`, `data`) of the config a checkpoint was trained with, for
    `mode=eval|export checkpoint.path=RUN` with nothing else: only where what they name to import
    ships with dualtrain (a recipe of dualtrain's, a data source of `dualtrain.data`); a module of
    the user's own must be named on the command line instead.

    Raises:
        ConfigError: the checkpoint cannot be read, or names a module of its own choosing.
    """
    import yaml

    source = find_checkpoint(path)
    try:
        config = yaml.safe_load(read_record(source)["config"])
        taken = {name: dict(config[name]) for name in sections}
    except (RunError, ValueError, TypeError, KeyError, yaml.YAMLError) as err:
        raise ConfigError(
            f"{source / 'trainer.json'} has no readable config ({type(err).__name__}); name the "
            "recipe and data on the command line"
        ) from err
    if "recipe" in taken and not shipped_recipe(str(taken["recipe"].get("module"))):
        raise ConfigError(
            f"{source} was trained with the recipe module {taken['recipe'].get('module')!r}, "
            "which does not ship with dualtrain; name its recipe on the command line "
            "(recipe=<name>, with --config-dir for your own)"
        )
    if "data" in taken and not _shipped_source(str(taken["data"].get("source"))):
        raise ConfigError(
            f"{source} was trained on the data source {taken['data'].get('source')!r}, which "
            "does not ship with dualtrain; name the data on the command line (data=<name>)"
        )
    return taken


def _shipped_source(source: str) -> bool:
    """Whether `module:function` names a function of a module in `dualtrain.data` (on disk)."""
    module, _, function = source.partition(":")
    return function.isidentifier() and _ships(module, "data")


def read_model_spec(record: dict[str, Any], source: Path) -> dict[str, Any]:
    """The checkpoint's `model_spec`, checked field by field (it is untrusted data)."""
    spec = record.get("model_spec")
    where = source / "trainer.json"
    if spec is None:
        raise RunError(
            f"{where} has no model_spec (it was written by an older dualtrain); evaluate it "
            "with mode=eval checkpoint.path=... and the recipe it was trained with instead"
        )
    if not _valid_spec(spec):
        raise RunError(f"{where} has a malformed model_spec; it is not a dualtrain checkpoint")
    if record.get("backend") not in ("torch", "tf"):
        raise RunError(f"{where} names backend {record.get('backend')!r}; expected torch or tf")
    return dict(spec)


def _valid_spec(spec: Any) -> bool:
    if not isinstance(spec, dict):
        return False
    data = spec.get("data", _older_data(spec))
    return (
        isinstance(spec.get("recipe"), str)
        and isinstance(spec.get("module"), str)
        and isinstance(spec.get("model"), dict)
        and isinstance(data, dict)
        and data.get("input_kind") in _KINDS
        and data.get("target_kind") in _KINDS
        and isinstance(data.get("inputs"), list)
        and isinstance(data.get("targets"), list)
        and 0 < len(data["inputs"]) <= 64
        and len(data["targets"]) <= 64
        and all(_valid_array(a) for a in [*data["inputs"], *data["targets"]])
    )


_KINDS = ("array", "dict", "tuple", "none")
_TASKS = (None, "classification", "multilabel", "regression")


def _valid_array(spec: Any) -> bool:
    """One input or target of a model_spec (see `dualtrain.data.ArraySpec`)."""
    if not isinstance(spec, dict) or set(spec) != _ARRAY_KEYS:
        return False
    shape, classes, count = spec["shape"], spec["classes"], spec["num_classes"]
    return (
        isinstance(spec["name"], str)
        and isinstance(shape, list)
        and len(shape) <= 8
        and all(_count(d) and d > 0 for d in shape)
        and spec["dtype"] in _DTYPES
        and spec["task"] in _TASKS
        and (count is None or _count(count))
        and (
            classes is None
            or (isinstance(classes, list) and all(isinstance(c, str) for c in classes))
        )
    )


_ARRAY_KEYS = {"name", "shape", "dtype", "task", "num_classes", "classes"}
# The dtypes the data layer hands a model (data/dataset.py): never an object dtype.
_DTYPES = ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16")


def _older_data(spec: dict[str, Any]) -> Any:
    """The `data` entry of a model_spec written before it described every input and target
    (one float input, one class target)."""
    shape, count, classes = spec.get("input_shape"), spec.get("num_classes"), spec.get("classes")
    if not isinstance(shape, list) or not _count(count):
        return None
    target = {"name": "y", "shape": [], "dtype": "int32", "task": "classification"}
    return {
        "inputs": [{"name": "x", "shape": shape, "dtype": "float32", "task": None,
                    "num_classes": None, "classes": None}],
        "targets": [{**target, "num_classes": count, "classes": classes}],
        "input_kind": "array",
        "target_kind": "array",
    }  # fmt: skip


def data_info(spec: dict[str, Any]) -> DataInfo:
    """The DataInfo a checked model_spec describes (no data: `x_train` is None)."""
    from dualtrain.data import ArraySpec, DataInfo

    data = spec.get("data") or _older_data(spec)

    def array(a: dict[str, Any]) -> ArraySpec:
        classes = tuple(a["classes"]) if a["classes"] is not None else None
        return ArraySpec(
            a["name"], tuple(a["shape"]), a["dtype"], a["task"], a["num_classes"], classes
        )

    return DataInfo(
        inputs=tuple(array(a) for a in data["inputs"]),
        targets=tuple(array(a) for a in data["targets"]),
        x_train=None,
        input_kind=data["input_kind"],
        target_kind=data["target_kind"],
    )


def _count(value: Any) -> bool:
    """A non-negative int of a sane size (JSON numbers can be anything)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 1 << 24


def load_model(path: str | Path, backend: str | None = None, recipe: str | None = None) -> Any:
    """The Keras model of a checkpoint, with its weights, for use in Python.

    ```python
    from dualtrain.run import load_model
    classifier = load_model("outputs/cnn/torch/2026-11-24_10-00-00")  # run or checkpoint dir
    mine = load_model("runs/a", recipe="my_recipes.net")  # a recipe of your own: name it
    ```

    A run with trainer.ema gives its averaged weights. The model is rebuilt by its recipe
    from the checkpoint's `model_spec`. No data is read:
    `DataInfo.x_train` is None, so statistics a model keeps (a normalization's mean) must be
    model variables, which the checkpoint restores.

    Args:
        path: a checkpoint directory, or a run directory (its newest checkpoint).
        backend: `torch` or `tf`; None: the Keras backend this process already runs, else the one
            that wrote the checkpoint.
        recipe: the recipe's module (`my_recipes.net`) or a shipped recipe's name (`cnn`); needed
            for a recipe that does not ship with dualtrain, whose module is imported only then.

    Returns:
        The Keras model, on `backend`.

    Raises:
        ConfigError: `path` holds no checkpoint; or the checkpoint names a recipe module that
            does not ship with dualtrain and `recipe` does not name it, or another one.
        RunError: the checkpoint cannot be read or has no valid `model_spec`.
    """
    from dualtrain.engines import running_backend, select_backend
    from dualtrain.recipe import load_recipe

    source = find_checkpoint(Path(path))
    checkpoint = read_checkpoint(source)
    spec = read_model_spec(checkpoint.trainer, source)
    module = trusted_module(spec["module"], recipe, source)
    if backend is None:
        backend = running_backend() or checkpoint.trainer["backend"]
    select_backend(backend)
    from dualtrain.engines.state import assign_variables, fresh_layer_names

    info = data_info(spec)
    settings = RecipeSettings(name=spec["recipe"], module=module, model=dict(spec["model"]))
    # Keras draws initializer seeds from Python's `random`: a run under way keeps its stream.
    python_rng = random.getstate()
    try:
        with fresh_layer_names():
            model = load_recipe(settings).build_model(info)
    finally:
        random.setstate(python_rng)
    # The run's moving average of the weights, where it kept one (trainer.ema).
    assign_variables(model.variables, checkpoint.weights(averaged=True), "model")
    return model
