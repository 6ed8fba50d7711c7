"""The engines, one per backend, chosen by name and imported only when chosen.

`select_backend` must run before anything imports Keras: Keras fixes its backend per process at
import time, and importing an engine module imports its framework.
"""

from __future__ import annotations

import importlib
import os
import platform
import sys
import tempfile
from typing import TYPE_CHECKING

from dualtrain.errors import ConfigError, RunError

if TYPE_CHECKING:
    from dualtrain.engines.base import Engine

# dualtrain's backend name -> (Keras backend name, module of its engine, engine class)
_ENGINES = {
    "torch": ("torch", "dualtrain.engines.torch", "TorchEngine"),
    "tf": ("tensorflow", "dualtrain.engines.tensorflow", "TensorFlowEngine"),
}


def running_backend() -> str | None:
    """The backend (dualtrain's name) of the Keras this process has imported, or None."""
    if "keras" not in sys.modules:
        return None
    current = sys.modules["keras"].backend.backend()
    return next((name for name, entry in _ENGINES.items() if entry[0] == current), current)


def process_backend() -> str | None:
    """The backend of this process's Keras: the one it runs, else the one KERAS_BACKEND names
    (what Keras takes when imported); None when that is none of dualtrain's."""
    keras = sys.modules.get("keras")
    keras_name = keras.backend.backend() if keras is not None else os.environ.get("KERAS_BACKEND")
    return next((name for name, entry in _ENGINES.items() if entry[0] == keras_name), None)


def select_backend(name: str, import_framework: bool = True) -> None:
    """Fixes Keras's backend for this process; fails if Keras already runs another one.

    `import_framework=False` only sets the environment, so that code which imports Keras later
    (a user's data source) gets this backend, while mistakes found before it cost no import.
    """
    if name not in _ENGINES:
        raise ConfigError(f"backend must be one of {', '.join(_ENGINES)}; got {name!r}")
    keras_name = _ENGINES[name][0]
    if "keras" in sys.modules:
        current = sys.modules["keras"].backend.backend()
        if current != keras_name:
            raise RunError(
                f"this process already runs Keras on {current}; backend={name} needs a new process "
                "(Keras fixes its backend at import time)"
            )
    os.environ["KERAS_BACKEND"] = keras_name
    importlib.import_module("dualtrain.threads").configure_threads(name)  # docs/shared-machines.md
    if name == "tf" and "tensorflow" not in sys.modules:
        if platform.machine().lower() in ("x86_64", "amd64"):
            _use_onednn()
        if import_framework and "TF_CPP_MIN_LOG_LEVEL" not in os.environ:
            _import_tensorflow_quietly()


def _use_onednn() -> None:
    """TensorFlow's oneDNN ops on x86, unless the user has set TF_ENABLE_ONEDNN_OPTS.

    TensorFlow turns them on by default only on CPUs with AVX-512 VNNI/BF16, AVX-VNNI or AMX; on
    others it runs its own Eigen kernels. On an AVX2 CPU oneDNN made the benchmark workloads
    faster (docs/performance.md, "Measured choices"), and it runs the convolutions that torch
    runs, so the backends agree more closely (docs/parity.md). Read once, when
    TensorFlow is imported; `TF_ENABLE_ONEDNN_OPTS=0` keeps TensorFlow's own kernels.
    """
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")


# Printed by TensorFlow on import whatever TF_CPP_MIN_LOG_LEVEL says (before absl reads it).
_TF_START_UP_NOTICES = ("All log messages before absl::InitializeLog()", "oneDNN custom operations")


def _import_tensorflow_quietly() -> None:
    """Imports TensorFlow with its start-up notices dropped; everything else it prints is kept.

    A user who sets TF_CPP_MIN_LOG_LEVEL sees TensorFlow's output as TensorFlow prints it.
    """
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            importlib.import_module("tensorflow")
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines(keepends=True):
                if not any(notice in line for notice in _TF_START_UP_NOTICES):
                    sys.stderr.write(line)


# Distributed engines: (backend, strategy) -> (module, engine class). Under torchrun the torch
# engine is always the distributed one ("torchrun"); tf's comes from backend.strategy.
_DISTRIBUTED_ENGINES = {
    ("torch", "torchrun"): ("dualtrain.engines.torch_ddp", "DistributedTorchEngine"),
    ("tf", "mirrored"): ("dualtrain.engines.tf_distribute", "DistributedTensorFlowEngine"),
    ("tf", "multi_worker"): ("dualtrain.engines.tf_distribute", "DistributedTensorFlowEngine"),
}


def engine_class(name: str, strategy: str = "none") -> type[Engine]:
    """The engine class of a backend and distribution strategy; imports Keras and that backend's
    framework."""
    select_backend(name)
    _, module, cls = _ENGINES[name]
    module, cls = _DISTRIBUTED_ENGINES.get((name, strategy), (module, cls))
    return getattr(importlib.import_module(module), cls)


__all__ = ["engine_class", "process_backend", "running_backend", "select_backend"]
