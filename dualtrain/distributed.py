"""Who this process is in a distributed run, read from the launcher's environment.

Framework-free: torchrun sets RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT (and the
TORCHELASTIC_* variables); a tf.distribute multi-worker job reads TF_CONFIG. The engines that run
the collectives live in `dualtrain.engines.torch_ddp` and `dualtrain.engines.tf_distribute`.
"""

from __future__ import annotations

import json
import os
import time
from datetime import datetime
from typing import Any

from dualtrain.errors import ConfigError


def under_torchrun() -> bool:
    """Whether torchrun (or another launcher with its env:// variables) started this process."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def restart_count() -> int:
    """How many times torchrun's elastic agent has restarted the workers (0: first attempt)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


def tf_config() -> dict[str, Any] | None:
    """TF_CONFIG as a dict (None when unset).

    Raises:
        ConfigError: when it is set but is not the JSON that tf.distribute expects.
    """
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return None
    try:
        config = json.loads(raw)
        _ = config["cluster"]["worker"], config["task"]["type"], int(config["task"]["index"])
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(
            "TF_CONFIG must be JSON such as "
            '{"cluster": {"worker": ["host1:port", "host2:port"]}, '
            f'"task": {{"type": "worker", "index": 0}}}}; got {raw!r}'
        ) from err
    return config


def is_writer(strategy: str = "none") -> bool:
    """Whether this process writes logs, metrics, checkpoints and summary.json: torchrun's rank 0,
    or tf.distribute's chief (the `chief` task, else worker 0). A single process always writes."""
    if under_torchrun():
        return int(os.environ["RANK"]) == 0
    if strategy == "multi_worker":
        config = tf_config()
        if config is None:
            return True
        task = config["task"]
        if "chief" in config["cluster"]:
            return bool(task["type"] == "chief")
        return task["type"] == "worker" and int(task["index"]) == 0
    return True


def register_shared_now() -> None:
    """Registers the `${shared_now:<strftime pattern>}` resolver that names the default run
    directory: Hydra's `${now:...}`, except that under torchrun every rank gets the same time, so
    that all ranks share one run directory (with `now`, each rank's start second names its own).

    Under torchrun the first rank to ask stores its start time in torchrun's agent store (the TCP
    store at MASTER_ADDR:MASTER_PORT that the process group uses too); the others read it. The
    agent keeps the store across elastic restarts, so restarted workers find the same directory
    and resume from its checkpoints. Imports torch, and only under torchrun. (Hydra re-registers
    `now` itself when it starts, hence a resolver of another name.)
    """
    from omegaconf import OmegaConf

    shared = under_torchrun() and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    cache: dict[str, float] = {}

    def shared_now(pattern: str) -> str:
        if "time" not in cache:
            cache["time"] = _shared_start_time() if shared else time.time()
        return datetime.fromtimestamp(cache["time"]).strftime(pattern)

    OmegaConf.register_new_resolver("shared_now", shared_now, use_cache=True, replace=True)
    # The run directory's other part, registered with shared_now because both name it.
    OmegaConf.register_new_resolver("run_group", run_group, replace=True)


def run_group(mode: str, backend: str) -> str:
    """`${run_group:${mode},${backend.name}}`, the default run directory's middle part: a
    training run's backend; eval, export and parity are named by their mode, as parity runs both
    backends and eval and export run on the checkpoint's, whichever `backend` says."""
    return backend if mode == "train" else mode


def _shared_start_time() -> float:
    from datetime import timedelta

    import torch.distributed as dist

    store = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        is_master=False,
        timeout=timedelta(seconds=60),
    )
    key = f"dualtrain/start_time/{os.environ.get('TORCHELASTIC_RUN_ID', '')}"
    # compare_set: the first rank's value wins; every rank gets the stored one back.
    value = store.compare_set(key, "", repr(time.time()))
    return float(value.decode())
