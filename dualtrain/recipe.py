"""What a recipe provides, and how dualtrain loads one.

A recipe is a Python module written once with Keras 3 layers, `keras.ops`, `keras.losses` and
`keras.metrics`. It defines:

- `build_model(data: DataInfo, **model) -> keras.Model`   (required; `model` is `recipe.model`)
- `loss() -> keras.losses.Loss` or any `(y_true, y_pred) -> scalar` written in `keras.ops`
                                                           (required)
- `metrics() -> list[keras.metrics.Metric]`                (optional; names appear as `val/<name>`)

and, if it brings its own data, any function named by `data.source` (see `data=python`).
Importing the module imports Keras, so recipes are loaded only after the backend is chosen.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from dualtrain.data import DataInfo
from dualtrain.errors import RunError
from dualtrain.settings import RecipeSettings


@dataclass(frozen=True)
class Recipe:
    name: str
    module: ModuleType
    model_kwargs: dict[str, Any]

    def build_model(self, data: DataInfo) -> Any:
        try:
            return self.module.build_model(data, **self.model_kwargs)
        except TypeError as err:
            if "argument" not in str(err):
                raise
            raise RunError(
                f"recipe {self.name}: build_model does not take the keys of recipe.model "
                f"{sorted(self.model_kwargs)}: {err}"
            ) from None

    def loss(self) -> Callable[[Any, Any], Any]:
        return self.module.loss()

    def metrics(self) -> list[Any]:
        make = getattr(self.module, "metrics", None)
        return list(make()) if make is not None else []


def load_recipe(settings: RecipeSettings) -> Recipe:
    """Imports the recipe module and checks that it defines what a recipe must."""
    module = importlib.import_module(settings.module)
    missing = [
        name for name in ("build_model", "loss") if not callable(getattr(module, name, None))
    ]
    if missing:
        raise RunError(
            f"recipe {settings.name}: module {settings.module} must define "
            + " and ".join(f"{name}()" for name in missing)
        )
    return Recipe(name=settings.name, module=module, model_kwargs=dict(settings.model))
