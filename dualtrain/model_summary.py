"""The model summary: parameters, each top-level layer's output shape, and FLOPs per sample.

Every training run logs it at its start and stores it in summary.json under `model`;
`python -m dualtrain mode=summary` prints it and trains nothing. The engines count the FLOPs
with their framework's own counter (engines/torch_flops.py, engines/tf_flops.py), both by one
definition, `COUNTED`, so that the two backends give the same figures (docs/summary.md).

`python -m dualtrain.model_summary <backend> [recipe ...]` prints the summaries of the
shipped recipes (all of them by default) on one backend as one line of JSON: the docs' table
and the test that the backends agree come from it. Nothing here imports a framework at import time.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The one definition of a FLOP that both backends count (docs/summary.md).
COUNTED = (
    "dense contractions only (matmul, batched matmul, einsum, convolution and transposed "
    "convolution, attention's two products), 2 FLOPs per multiply-add"
)
# Marks an op in `by_op` whose FLOPs the counter cannot see (a loop's body, an op without a rule).
NOT_COUNTED = " (not counted)"
# What FLOPs are counted on: this many train samples, then divided by it (contractions are
# linear in the batch).
SAMPLES = 2


@dataclass(frozen=True)
class Flops:
    """FLOPs of `SAMPLES` samples, as an engine counted them, by op (the framework's op names)."""

    forward: dict[str, int]  # the model's inference pass
    train_step: dict[str, int]  # each phase's training forward pass, loss and gradients
    counter: str  # which counter, in words

    def per_sample(self) -> dict[str, Any]:
        return {
            "forward": sum(self.forward.values()) / SAMPLES,
            "train_step": sum(self.train_step.values()) / SAMPLES,
            "by_op": {
                "forward": {op: n / SAMPLES for op, n in sorted(self.forward.items())},
                "train_step": {op: n / SAMPLES for op, n in sorted(self.train_step.items())},
            },
            "counter": self.counter,
            "counted": COUNTED,
        }


def describe(
    model: Any, flops: Flops | None, not_counted_because: str | None = None
) -> dict[str, Any]:
    """The summary of a built Keras model, as summary.json stores it under `model`."""
    return {
        "name": model.name,
        "trainable_params": _count(model.trainable_weights),
        "non_trainable_params": _count(model.non_trainable_weights),
        "layers": [
            {
                "name": layer.name,
                "type": type(layer).__name__,
                "output_shape": _output_shape(layer),
                "params": int(layer.count_params()) if layer.built else 0,
            }
            for layer in model.layers
        ],
        "flops_per_sample": flops.per_sample() if flops is not None else None,
        "flops_not_counted_because": not_counted_because,
    }


def lines(summary: dict[str, Any]) -> list[str]:
    """The summary as a compact table, one string per line."""
    trainable, frozen = summary["trainable_params"], summary["non_trainable_params"]
    out = [
        f"model {summary['name']}: {trainable + frozen:,} parameters ({trainable:,} trainable, "
        f"{frozen:,} non-trainable)"
    ]
    rows = [("layer", "type", "output shape", "params")] + [
        (
            layer["name"],
            layer["type"],
            _shape_text(layer["output_shape"]),
            f"{layer['params']:,}",
        )
        for layer in summary["layers"]
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row[:3], widths, strict=False)]
        out.append("  " + "  ".join([*cells, row[3].rjust(widths[3])]))
    flops = summary["flops_per_sample"]
    if flops is None:
        out.append(f"FLOPs: not counted: {summary['flops_not_counted_because']}")
    else:
        out.append(
            f"FLOPs per sample: forward {human(flops['forward'])}, train step "
            f"{human(flops['train_step'])} (dense contractions, 2 per multiply-add; "
            f"{flops['counter']})"
        )
        missing = sorted(
            {
                op.removesuffix(NOT_COUNTED)
                for ops in flops["by_op"].values()
                for op in ops
                if op.endswith(NOT_COUNTED)
            }
        )
        if missing:
            out.append(f"  not counted: the FLOPs of {', '.join(missing)} (docs/summary.md)")
    return out


def human(number: float) -> str:
    """1234567 -> '1.23 M'."""
    for scale, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(number) >= scale:
            return f"{number / scale:.3g} {unit}"
    return f"{number:.3g}"


def _count(weights: list[Any]) -> int:
    return int(sum(math.prod(w.shape) for w in weights))


def _output_shape(layer: Any) -> Any:
    """The shape of what the layer returns, with None for the batch, as lists (a dict or list
    of them for several outputs); None where the layer has no symbolic output (a layer called
    inside a subclassed model's `call`, which Keras's own summary shows as `?`)."""
    try:
        output = layer.output
    except (AttributeError, ValueError):
        return None
    if isinstance(output, dict):
        return {name: list(tensor.shape) for name, tensor in output.items()}
    if isinstance(output, (list, tuple)):
        return [list(tensor.shape) for tensor in output]
    return list(output.shape)


def _shape_text(shape: Any) -> str:
    if shape is None:
        return "?"
    if isinstance(shape, dict):
        return ", ".join(f"{name}: {_shape_text(s)}" for name, s in shape.items())
    if shape and isinstance(shape[0], list):
        return ", ".join(_shape_text(s) for s in shape)
    return "(" + ", ".join(str(n) for n in shape) + ")"


def shipped_recipes() -> list[str]:
    """The names of the recipes that ship with dualtrain (configs/recipe/*.yaml)."""
    return sorted(p.stem for p in (Path(__file__).parent / "configs" / "recipe").glob("*.yaml"))


def summarize_recipes(backend: str, recipes: list[str]) -> dict[str, dict[str, Any]]:
    """Each recipe's summary on `backend`, in this process (the backend is chosen here)."""
    from hydra import compose, initialize_config_module

    from dualtrain.cli import settings_from_config
    from dualtrain.run import build_engine

    out = {}
    with tempfile.TemporaryDirectory() as run_dir:
        for recipe in recipes:
            with initialize_config_module("dualtrain.configs", version_base="1.3"):
                cfg = compose(
                    "train", overrides=[f"recipe={recipe}", f"backend={backend}", "mode=summary"]
                )
            settings = settings_from_config(cfg, Path(run_dir))
            out[recipe] = build_engine(settings).model_summary()
    return out


def main(argv: list[str]) -> None:
    """`python -m dualtrain.model_summary <torch|tf> [recipe ...]`: JSON on stdout."""
    if not argv or argv[0] not in ("torch", "tf"):
        sys.exit("usage: python -m dualtrain.model_summary <torch|tf> [recipe ...]")
    backend, recipes = argv[0], argv[1:] or shipped_recipes()
    print(json.dumps(summarize_recipes(backend, recipes)))  # one line: the last on stdout


if __name__ == "__main__":
    main(sys.argv[1:])
