"""The benchmark workloads: data, the Keras model (dualtrain's bench_* recipes) and the same
architecture written in torch.nn, plus the training FLOPs per sample that MFU is computed from."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Workload:
    name: str
    recipe: str  # dualtrain's recipe that runs exactly this workload
    shape: tuple[int, ...]  # one sample (channels last for images)
    batch_size: int
    train_samples: int
    model: dict[str, Any] = field(default_factory=dict)  # options of dualtrain.recipes.bench
    num_classes: int = 10

    def data(self, seed: int = 0, samples: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Synthetic train data of dualtrain's synthetic source (same values as the recipe's
        train split up to the split itself, which does not change the cost)."""
        from dualtrain.data.sources import synthetic

        return synthetic(seed, samples or self.train_samples, self.shape, self.num_classes)

    def train_flops_per_sample(self) -> float:
        """FLOPs of a training step per sample (forward and gradients; matmuls, convolutions
        and attention, 2 per multiply-add), as dualtrain's model summary counts them on torch
        (docs/summary.md), in a process of its own."""
        repo = Path(__file__).resolve().parents[1]
        done = subprocess.run(
            [sys.executable, "-m", "dualtrain.model_summary", "torch", self.recipe],
            cwd=repo, capture_output=True, text=True, check=True,
            env={**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"},
        )  # fmt: skip
        summary = json.loads(done.stdout.splitlines()[-1])[self.recipe]
        return float(summary["flops_per_sample"]["train_step"])


WORKLOADS = {
    "W1": Workload("W1", "bench_cnn", (28, 28, 1), 128, 4096, {"workload": "cnn"}),
    "W2": Workload("W2", "bench_mlp", (784,), 256, 4096, {"workload": "mlp"}),
    "W3": Workload("W3", "bench_transformer", (128, 128), 64, 2048, {"workload": "transformer"}),
}


def torch_model(workload: Workload) -> Any:
    """The same architecture in torch.nn, as a PyTorch user would write it (images NCHW)."""
    from torch import nn

    options = {k: v for k, v in workload.model.items() if k != "workload"}
    if workload.name == "W1":
        f = int(options.get("filters", 32))
        d = int(options.get("dense_units", 128))
        return nn.Sequential(
            nn.Conv2d(1, f, 3), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(f, 2 * f, 3), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(25 * 2 * f, d), nn.ReLU(), nn.Linear(d, 10),
        )  # fmt: skip
    if workload.name == "W2":
        u = int(options.get("units", 512))
        return nn.Sequential(
            nn.Linear(784, u), nn.ReLU(), nn.Linear(u, u), nn.ReLU(), nn.Linear(u, 10)
        )
    width = workload.shape[-1]

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            layer = nn.TransformerEncoderLayer(
                width, int(options.get("heads", 4)), int(options.get("ff_units", 512)),
                dropout=0.0, batch_first=True,
            )  # fmt: skip
            self.encoder = nn.TransformerEncoder(
                layer, int(options.get("layers", 2)), enable_nested_tensor=False
            )
            self.logits = nn.Linear(width, 10)

        def forward(self, x: Any) -> Any:
            return self.logits(self.encoder(x).mean(dim=1))

    return Encoder()
