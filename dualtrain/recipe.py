"""What a recipe provides, and how dualtrain loads one.

A recipe is a Python module written once with Keras 3 layers, `keras.ops`, `keras.losses` and
`keras.metrics`. It defines these functions:

- `build_model(data: DataInfo, **model) -> keras.Model`, required: `model` is `recipe.model`; any
  model style: functional, Sequential, a subclassed `keras.Model`.
- `loss()`, required unless `phases` is defined: a `keras.losses.Loss` or any
  `(y_true, y_pred) -> scalar` written in `keras.ops`, or a dict of them by output name (weighted
  by `recipe.loss_weights`; one loss for several outputs applies to each).
- `metrics([data])`, optional: a list of `keras.metrics.Metric`, or a dict of lists by output
  name; logged as `val/<name>`, or `val/<output>/<name>`.
- `phases(model) -> list[Phase]`, optional: the recipe's own training step, as a sequence of
  phases, each with its loss, its variables and its own optimizer; the engines compute the
  gradients. Without it, the step is one phase: `loss` on all variables.
- `update_metrics(metrics, model, x, y)`, optional, with `phases`: how val metrics are updated;
  by default `metric.update_state(y, model(x, training=False))`.

and, if it brings its own data, any function named by `data.source` (see `data=python`).
Importing the module imports Keras, so recipes are loaded only after the backend is chosen.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from dualtrain.data import DataInfo
from dualtrain.errors import RunError
from dualtrain.settings import RecipeSettings


@dataclass(frozen=True)
class Phase:
    """One part of a training step, written once with `keras.ops`.

    Args:
        name: names its logged loss (`<name>_loss`) and its optimizer.
        loss: `(model, x, y, training) -> scalar`; runs the model itself, so a phase can use any
            part of it (a GAN's generator and discriminator) and any target (an autoencoder's x).
        variables: `model -> variables` this phase updates; None: all trainable variables.
        optimizer: this phase's optimizer options over the `optimizer` config, e.g.
            `{"lr": 2e-4, "beta_1": 0.5}`.
    """

    name: str
    loss: Callable[[Any, Any, Any, bool], Any]
    variables: Callable[[Any], list[Any]] | None = None
    optimizer: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Recipe:
    """A loaded recipe module: what the engines call to build the model, its loss and metrics.

    Made by `load_recipe`, which has checked that the module defines what a recipe must.

    Attributes:
        name: the recipe's name (`recipe.name`).
        module: the imported recipe module.
        model_kwargs: `recipe.model`, the keyword arguments of the module's `build_model`.
        loss_weights: `recipe.loss_weights`: output name -> weight of that output's loss.
    """

    name: str
    module: ModuleType
    model_kwargs: dict[str, Any]
    loss_weights: Mapping[str, float] | None = None

    def build_model(self, data: DataInfo) -> Any:
        """Calls the module's `build_model(data, **model_kwargs)`.

        Args:
            data: what the model is built for: its inputs and targets.

        Returns:
            The Keras model.

        Raises:
            RunError: `build_model` does not take the keys of `recipe.model`.
        """
        # Bound before the call: a TypeError raised inside build_model is the recipe's own, not
        # a key of recipe.model that it does not take.
        try:
            inspect.signature(self.module.build_model).bind(data, **self.model_kwargs)
        except TypeError as err:
            raise RunError(
                f"recipe {self.name}: build_model does not take the keys of recipe.model "
                f"{sorted(self.model_kwargs)}: {err}"
            ) from err
        return self.module.build_model(data, **self.model_kwargs)

    def loss(self) -> Any:
        """The recipe's loss.

        Returns:
            One `(y_true, y_pred) -> scalar`, or a dict of them by output name.
        """
        return self.module.loss()

    @property
    def has_phases(self) -> bool:
        """Whether the module defines its own training step (`phases`)."""
        return callable(getattr(self.module, "phases", None))

    def phases(self, model: Any, loss_fn: Callable[[Any, Any], Any] | None = None) -> list[Phase]:
        """The phases of one training step.

        Args:
            model: the model `build_model` returned.
            loss_fn: the recipe's loss over every output, for a recipe without `phases`;
                None: the module's `loss()`.

        Returns:
            The module's `phases(model)`, or without it one supervised phase: `loss_fn` on all
            trainable variables.

        Raises:
            RunError: `phases(model)` returned no phase, or two with the same name.
        """
        if not self.has_phases:
            supervised = loss_fn if loss_fn is not None else self.loss()
            return [
                Phase("model", lambda m, x, y, training: supervised(y, m(x, training=training)))
            ]
        phases = list(self.module.phases(model))
        names = [phase.name for phase in phases]
        if not phases or len(set(names)) != len(names):
            raise RunError(
                f"recipe {self.name}: phases() must return one or more Phase objects with "
                f"distinct names; got {names}"
            )
        return phases

    def update_metrics(self, metrics: list[Any], model: Any, x: Any, y: Any) -> None:
        """Updates the val metrics with one batch: the module's `update_metrics`, or
        `metric.update_state(y, model(x, training=False))` for each metric.

        Args:
            metrics: the Keras metrics to update.
            model: the model, called in inference mode.
            x: the batch's inputs.
            y: the batch's targets.
        """
        custom = getattr(self.module, "update_metrics", None)
        if custom is not None:
            custom(metrics, model, x, y)
            return
        y_pred = model(x, training=False)
        for metric in metrics:
            metric.update_state(y, y_pred)

    def metrics(self, data: DataInfo) -> list[Any] | dict[str, list[Any]]:
        """The recipe's metrics.

        Args:
            data: passed to the module's `metrics(data)` where it takes an argument (a metric
                that needs the class count when it is made, as MeanIoU does).

        Returns:
            A list of Keras metrics, or a dict of lists by output name; empty without `metrics`.
        """
        make = getattr(self.module, "metrics", None)
        if make is None:
            return []
        made = make(data) if inspect.signature(make).parameters else make()
        if isinstance(made, Mapping):
            return {
                str(k): list(v) if isinstance(v, (list, tuple)) else [v] for k, v in made.items()
            }
        return list(made)


def load_recipe(settings: RecipeSettings) -> Recipe:
    """Imports the recipe module and checks that it defines what a recipe must.

    Args:
        settings: the `recipe` section of the config: name, module, model keyword arguments.

    Returns:
        The loaded recipe.

    Raises:
        RunError: the module lacks `build_model`, or `loss` where it has no `phases`.
    """
    module = importlib.import_module(settings.module)
    required = (
        ("build_model",) if callable(getattr(module, "phases", None)) else ("build_model", "loss")
    )
    missing = [name for name in required if not callable(getattr(module, name, None))]
    if missing:
        raise RunError(
            f"recipe {settings.name}: module {settings.module} must define "
            + " and ".join(f"{name}()" for name in missing)
        )
    weights = getattr(settings, "loss_weights", None)
    return Recipe(
        name=settings.name,
        module=module,
        model_kwargs=dict(settings.model),
        loss_weights=dict(weights) if weights else None,
    )
