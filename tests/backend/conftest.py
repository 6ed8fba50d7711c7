"""In-process tests of one backend. The suite runs once per backend, each in its own process:

    DUALTRAIN_TEST_BACKEND=torch pytest tests/backend
    DUALTRAIN_TEST_BACKEND=tf pytest tests/backend

Keras fixes its backend at import time, so the backend is selected here, before any test module
imports Keras.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_module

from dualtrain.cli import settings_from_config
from dualtrain.engines import select_backend
from dualtrain.settings import Settings

BACKEND = os.environ.get("DUALTRAIN_TEST_BACKEND", "torch")
select_backend(BACKEND)


def make_settings(run_dir: Path, *overrides: str) -> Settings:
    """The real configs, composed as the CLI composes them, for this process's backend."""
    with initialize_config_module("dualtrain.configs", version_base="1.3"):
        cfg = compose(
            "train", overrides=[f"backend={BACKEND}", "logger.progress=false", *overrides]
        )
    return settings_from_config(cfg, run_dir)


@pytest.fixture
def backend() -> str:
    return BACKEND


def step_ops() -> Any:
    """What the engines' steps run Keras's layers under: on torch dualtrain's own ops
    (compat.torch_step_ops), on tf nothing."""
    if BACKEND == "torch":
        from dualtrain import compat

        return compat.torch_step_ops()
    return contextlib.nullcontext()
