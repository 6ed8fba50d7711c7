"""How many batches and optimizer steps a run takes: the loop runs them, the engines' learning-rate
schedules decay over them. Plain arithmetic on the settings, below both."""

from __future__ import annotations

import math

from dualtrain.settings import TrainerSettings


def planned_steps(trainer: TrainerSettings, full_batches: int) -> int:
    """The optimizer steps a run will take: what `cosine` schedules decay over by default.
    `full_batches`: the train split's batches per epoch (`split.num_batches(batch_size)`)."""
    total = steps_per_epoch(trainer, full_batches) * trainer.max_epochs
    return min(total, trainer.max_steps) if trainer.max_steps > 0 else total


def batches_per_epoch(trainer: TrainerSettings, full: int, split: str = "train") -> int:
    """The batches an epoch trains on (or a validation reads), of the split's `full` ones: all,
    or `limit_<split>_batches` of them; with `overfit_batches`, that many train batches."""
    if split == "train" and trainer.overfit_batches:
        return min(full, trainer.overfit_batches)
    limit = trainer.limit_train_batches if split == "train" else trainer.limit_val_batches
    if isinstance(limit, int):
        return min(full, limit)
    return max(1, int(full * limit))


def steps_per_epoch(trainer: TrainerSettings, full_batches: int) -> int:
    """Optimizer steps per epoch: `grad_accum_steps` batches make one (the last may have fewer)."""
    return math.ceil(batches_per_epoch(trainer, full_batches) / trainer.grad_accum_steps)
