"""How a model's outputs meet the data's targets: matching by name, the loss over every output,
and the metrics of each.

The data's targets are one array, a dict by name or a tuple (data/structure.py); a model returns
one tensor, a dict, or a list (a functional model's outputs, named by `model.output_names`). One
target meets the one output; a dict of targets meets the outputs of the same names; a tuple meets
the outputs in order. The same code runs in the steps of both backends (inside tf.function or a
captured torch graph), so it only picks and adds tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import keras

from dualtrain.data import DataInfo, structure
from dualtrain.errors import RunError


@dataclass(frozen=True)
class OutputMatch:
    """Which output each target meets.

    Attributes:
        targets: the data's target names (the keys of `pairs`).
        outputs: for each target, the name of the model output it meets (logged names).
        single: one target and one output.
    """

    target_kind: str
    targets: tuple[str, ...]
    outputs: tuple[str, ...]
    output_kind: str
    output_names: tuple[str, ...]  # every output of the model, in the order it returns them

    @property
    def single(self) -> bool:
        return self.target_kind == structure.ARRAY

    @property
    def several(self) -> bool:
        return self.target_kind in (structure.DICT, structure.TUPLE)

    def pairs(self, y: Any, y_pred: Any) -> list[tuple[str, Any, Any]]:
        """(output name, target, prediction) for every target."""
        if self.single:
            return [(self.outputs[0], y, y_pred)]
        ys = structure.named(y, "y")
        preds = self._by_name(y_pred)
        return [
            (out, ys[name], preds[out])
            for name, out in zip(self.targets, self.outputs, strict=True)
        ]

    def _by_name(self, y_pred: Any) -> dict[str, Any]:
        if isinstance(y_pred, Mapping):
            return dict(y_pred)
        return dict(zip(self.output_names, y_pred, strict=True))


def match_outputs(info: DataInfo, model: Any, y_pred: Any, said: str) -> OutputMatch:
    """Matches the data's targets to what the model returned on a sample batch.

    Raises:
        RunError: naming both sides where targets and outputs do not pair up.
    """
    kind = structure.kind(y_pred)
    if kind == structure.DICT:
        names = tuple(str(k) for k in y_pred)
    elif kind == structure.TUPLE:
        given = tuple(getattr(model, "output_names", None) or ())
        names = given if len(given) == len(y_pred) else tuple(str(i) for i in range(len(y_pred)))
    else:
        names = tuple(getattr(model, "output_names", None) or ("output",))[:1]
    targets = tuple(t.name for t in info.targets)
    if info.target_kind == structure.NONE:
        return OutputMatch(info.target_kind, (), (), kind, names)
    if info.target_kind == structure.ARRAY:
        if kind != structure.ARRAY:
            raise RunError(
                f"{said}: the model has {len(names)} outputs {list(names)} but the data has one "
                "target; return the targets as a dict by output name (or a tuple in output order)"
            )
        return OutputMatch(info.target_kind, targets, names, kind, names)
    if kind == structure.ARRAY:
        raise RunError(
            f"{said}: the data has {len(targets)} targets {list(targets)} but the model has one "
            "output; give the model one output per target"
        )
    if info.target_kind == structure.DICT:
        missing = sorted(set(targets) - set(names))
        if missing:
            raise RunError(
                f"{said}: the data's targets {sorted(targets)} do not match the model's outputs "
                f"{sorted(names)} (no output {missing}); name the data source's target keys "
                "after the model's outputs (the names of their last layers)"
            )
        return OutputMatch(info.target_kind, targets, targets, kind, names)
    if len(targets) != len(names):
        raise RunError(
            f"{said}: the data has {len(targets)} targets in a tuple but the model has "
            f"{len(names)} outputs {list(names)}; give one target per output, in output order"
        )
    return OutputMatch(info.target_kind, targets, names, kind, names)


def supervised_loss(
    loss: Any, match: OutputMatch, weights: Mapping[str, float] | None, said: str
) -> Callable[[Any, Any], Any]:
    """The recipe's loss over every output: a dict of losses by output name, or one loss for
    each, times `recipe.loss_weights` (1 where not given), summed."""
    weights = dict(weights or {})
    unknown = sorted(set(weights) - set(match.outputs))
    if unknown:
        raise RunError(
            f"{said}: recipe.loss_weights names {unknown}, which are not outputs with targets; "
            f"the outputs: {list(match.outputs)}"
        )
    if isinstance(loss, Mapping):
        missing = sorted(set(match.outputs) - set(loss))
        if missing:
            raise RunError(
                f"{said}: loss() gives losses for {sorted(loss)} but not for the outputs "
                f"{missing}; give one loss per output that has a target"
            )
    if match.single and not isinstance(loss, Mapping) and not weights:
        return loss  # the common case, called as it is
    per_output = {
        out: (loss[out] if isinstance(loss, Mapping) else loss, float(weights.get(out, 1.0)))
        for out in match.outputs
    }

    def total(y: Any, y_pred: Any) -> Any:
        terms = []
        for out, target, pred in match.pairs(y, y_pred):
            fn, weight = per_output[out]
            value = fn(target, pred)
            terms.append(value if weight == 1.0 else value * weight)
        return terms[0] if len(terms) == 1 else keras.ops.sum(keras.ops.stack(terms))

    return total


def with_model_losses(loss: Callable[[Any, Any], Any], model: Any) -> Callable[[Any, Any], Any]:
    """The loss plus the model's own losses (`model.losses`: its layers' weight and activity
    regularizers, and what they add with `add_loss`), in training and validation, as Keras's
    `fit` adds them. Unchanged for a model without any (after the sample call that built it)."""
    if not model.losses:
        return loss

    def total(y: Any, y_pred: Any) -> Any:
        own = model.losses  # read after the forward pass that made y_pred
        return loss(y, y_pred) + keras.ops.sum(keras.ops.stack(own)) if own else loss(y, y_pred)

    return total


@dataclass(frozen=True)
class TrackedMetric:
    """A recipe metric, the name it is logged under, and the output it follows (None: the only
    one)."""

    name: str
    metric: Any
    output: str | None


def tracked_metrics(
    made: list[Any] | dict[str, list[Any]], match: OutputMatch, said: str
) -> list[TrackedMetric]:
    """The recipe's metrics with their logged names: `<metric>` for a model with one output,
    `<output>/<metric>` for a dict of metrics by output."""
    if isinstance(made, Mapping):
        unknown = sorted(set(made) - set(match.outputs))
        if unknown:
            raise RunError(
                f"{said}: metrics() names outputs {unknown} that have no targets; the outputs: "
                f"{list(match.outputs)}"
            )
        return [TrackedMetric(f"{out}/{m.name}", m, out) for out, ms in made.items() for m in ms]
    if made and match.several:
        raise RunError(
            f"{said}: metrics() returns a list, but the model has several outputs "
            f"{list(match.outputs)}; return a dict of lists by output name"
        )
    return [TrackedMetric(m.name, m, None) for m in made]


def update_metrics(metrics: list[TrackedMetric], match: OutputMatch, y: Any, y_pred: Any) -> None:
    if not metrics:
        return
    pairs = {out: (target, pred) for out, target, pred in match.pairs(y, y_pred)}
    for tracked in metrics:
        if tracked.output is None:
            tracked.metric.update_state(y, y_pred)
        else:
            tracked.metric.update_state(*pairs[tracked.output])
