"""What each engine sets up in its process for speed on a CPU: on torch, glibc's malloc keeps the
memory a step frees (backend.keep_host_memory); on tf, TensorFlow's oneDNN ops are on.

Both change process-wide state, so each is checked in a fresh process of its own.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from tests.backend.conftest import BACKEND, make_settings

LINUX_GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
SMALL = ["recipe=mlp", "data=synthetic", "data.num_samples=64", "data.shape=[8]"]
X86 = platform.machine().lower() in ("x86_64", "amd64")

# Allocates and fills a 64 MiB block, frees it, and prints how much of it the process still holds
# (resident memory after the free, less before the allocation). 64 MiB is above the 32 MiB up to
# which glibc raises its mmap threshold by itself: by default the block is mmap'd, and unmapped
# when freed, so the next block of its size is faulted in, page by page, again.
_KEPT_AFTER_FREE = """
import os, sys
import numpy as np
if sys.argv[1] == "keep":
    from dualtrain.engines.torch import keep_freed_host_memory
    assert keep_freed_host_memory() is None
def resident():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
before = resident()
block = np.ones(64 << 20, dtype=np.uint8)
del block
print(resident() - before)
"""


def _kept_after_free(mode: str) -> int:
    result = subprocess.run(
        [sys.executable, "-c", _KEPT_AFTER_FREE, mode], capture_output=True, text=True, check=True
    )
    return int(result.stdout.split()[-1])


@pytest.mark.slow  # a subprocess that imports torch
@pytest.mark.skipif(BACKEND != "torch" or not LINUX_GLIBC, reason="torch engine, glibc")
def test_freed_host_memory_stays_with_the_process() -> None:
    block = 64 << 20
    assert _kept_after_free("default") < block // 4  # glibc handed it back to the OS
    assert _kept_after_free("keep") > block * 3 // 4  # kept, for the next block to reuse


@pytest.mark.skipif(BACKEND != "torch", reason="the torch engine's setting")
@pytest.mark.parametrize("keep", [True, False])
def test_torch_engine_keeps_host_memory_as_configured(
    keep: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dualtrain.engines.torch as torch_engine
    from dualtrain.data import load_data
    from dualtrain.recipe import load_recipe

    calls: list[str] = []
    monkeypatch.setattr(torch_engine, "keep_freed_host_memory", lambda: calls.append("kept"))
    settings = make_settings(tmp_path, *SMALL, f"backend.keep_host_memory={keep}")
    torch_engine.TorchEngine(  # built: its steps are made, keep_freed_host_memory with them
        settings, load_recipe(settings.recipe), load_data(settings.data, settings.seed)
    )
    assert calls == (["kept"] if keep else [])


_ONEDNN = """
from dualtrain.engines import select_backend
select_backend("tf")
from tensorflow.python.util import _pywrap_util_port
print(_pywrap_util_port.IsMklEnabled())
"""


@pytest.mark.slow  # a subprocess that imports TensorFlow, three times
@pytest.mark.skipif(BACKEND != "tf" or not X86, reason="tf engine, x86")
@pytest.mark.parametrize("user_value,enabled", [(None, "True"), ("0", "False"), ("1", "True")])
def test_tf_runs_onednn_unless_the_user_says_otherwise(
    user_value: str | None, enabled: str
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    if user_value is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = user_value
    result = subprocess.run(
        [sys.executable, "-c", _ONEDNN], capture_output=True, text=True, env=env, check=True
    )
    assert result.stdout.split()[-1] == enabled
