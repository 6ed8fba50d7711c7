"""dualtrain's thread settings for shared machines (dualtrain/threads.py), and the benchmark that
measures them (benchmarks/shared_machine.py).

The frameworks read these settings once, when they load (libgomp at `import torch`), so what a
fresh process ends up with is checked in subprocesses: torch's own libgomp is loaded there with
ctypes, without importing torch, to read what it took from the environment. The checks that
import torch or TensorFlow, and the benchmark's smoke run, are marked slow.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from dualtrain import threads
from dualtrain.threads import (
    allowed_cores,
    busy_cores_of_others,
    cgroup_cpu_limit,
    configure_threads,
    thread_environment,
    torch_threads,
)
from tests.conftest import REPO

THREAD_VARIABLES = (
    "OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "MKL_NUM_THREADS",
    "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "DUALTRAIN_THREADS", "OMP_DISPLAY_ENV",
)  # fmt: skip


def _libgomp() -> str | None:
    """torch's bundled libgomp, found without importing torch."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "lib" / "libgomp.so.1"
    return str(path) if path.is_file() else None


LIBGOMP = _libgomp()


# -- the decisions, in process ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "cores,busy,cpus,expected",
    [
        (2, 0.0, 2, 2),  # a quiet machine: what torch picks by itself
        (2, None, 2, 2),  # load unknown (no /proc/stat): the cores
        (2, 0.2, 2, 2),  # a little noise still leaves both cores
        (2, 0.3, 2, 1),  # a core shared with another process: one thread
        (2, 1.0, 2, 1),
        (2, 4.0, 2, 1),  # the issue's load: never fewer than one
        (16, 3.6, 16, 12),
        (2, 6.4, 64, 2),  # a quota of 2 on a 64-CPU host a tenth busy
        (2, 32.0, 64, 1),  # ... half busy: the same half of the quota's cores counts as taken
    ],
)
def test_torch_gets_the_free_cores(
    cores: int, busy: float | None, cpus: int, expected: int
) -> None:
    assert torch_threads(cores, busy, cpus) == expected


def test_torch_environment_and_what_the_user_set_wins() -> None:
    assert thread_environment("torch", {}, cores=2, schedulable=2, busy=0.0) == {
        "OMP_NUM_THREADS": "2"
    }
    assert thread_environment("torch", {}, cores=2, schedulable=2, busy=3.0) == {
        "OMP_NUM_THREADS": "1"
    }
    # The user's thread count stays, whatever the load.
    assert thread_environment("torch", {"OMP_NUM_THREADS": "2"}, 2, 2, busy=3.0) == {}
    # A wait policy of the user's is theirs: the thread count is still chosen, no wait variable.
    user = {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "1000"}
    assert thread_environment("torch", user, 2, 2, busy=0.0) == {"OMP_NUM_THREADS": "2"}
    for off in ("off", "OFF", "0", "false"):
        assert thread_environment("torch", {"DUALTRAIN_THREADS": off}, 2, 2, busy=3.0) == {}
    assert thread_environment("torch", {"DUALTRAIN_THREADS": "auto"}, 2, 2, busy=3.0) == {
        "OMP_NUM_THREADS": "1"
    }


def test_tf_environment_only_under_a_quota() -> None:
    # TensorFlow counts the CPUs of the affinity by itself: nothing to add there.
    assert thread_environment("tf", {}, cores=2, schedulable=2) == {}
    assert thread_environment("tf", {}, cores=1, schedulable=4) == {
        "TF_NUM_INTRAOP_THREADS": "1",
        "TF_NUM_INTEROP_THREADS": "1",
    }
    assert thread_environment("tf", {"TF_NUM_INTEROP_THREADS": "2"}, 1, 4) == {
        "TF_NUM_INTRAOP_THREADS": "1"
    }
    assert thread_environment("tf", {"DUALTRAIN_THREADS": "off"}, 1, 4) == {}
    assert thread_environment("jax", {}, 1, 4) == {}


def _cgroup(tmp_path: Path, membership: str, files: dict[str, str]) -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (tmp_path / "membership").write_text(membership)
    return root, tmp_path / "membership"


def test_cgroup_quota_v2(tmp_path: Path) -> None:
    root, membership = _cgroup(
        tmp_path,
        "0::/jobs/mine\n",
        {
            "cgroup.controllers": "cpu memory",
            "cpu.max": "max 100000",
            "jobs/cpu.max": "300000 100000",
            "jobs/mine/cpu.max": "150000 100000",
        },
    )
    assert cgroup_cpu_limit(root, membership) == 1.5
    (root / "jobs/mine/cpu.max").write_text("max 100000")
    assert cgroup_cpu_limit(root, membership) == 3.0  # the parent's quota holds
    (root / "jobs/cpu.max").write_text("max 100000")
    assert cgroup_cpu_limit(root, membership) is None


def test_cgroup_quota_v1_and_a_container_path(tmp_path: Path) -> None:
    # v1 with cpu and cpuacct mounted together; the path names the host's hierarchy, which the
    # container does not see: the mount's own quota counts.
    root, membership = _cgroup(
        tmp_path,
        "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n0::/\n",
        {"cpu,cpuacct/cpu.cfs_quota_us": "50000\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"},
    )
    assert cgroup_cpu_limit(root, membership) == 0.5
    (root / "cpu,cpuacct/cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_limit(root, membership) is None
    assert cgroup_cpu_limit(root, tmp_path / "missing") is None


def test_allowed_cores() -> None:
    assert allowed_cores({0, 1, 2, 3}) == 4
    assert allowed_cores({0, 1, 2, 3}, quota=1.5) == 2  # rounded up
    assert allowed_cores({0, 1, 2, 3}, quota=0.2) == 1
    assert allowed_cores({0, 1}, quota=8.0) == 2
    assert allowed_cores() == len(os.sched_getaffinity(0))


def test_busy_cores_count_only_the_allowed_cpus_and_not_this_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stat = tmp_path / "stat"
    stat.write_text(
        "cpu  900 0 100 5000 0 0 0 0 0 0\n"
        "cpu0 100 0 50 2000 0 0 0 0 0 0\n"
        "cpu1 400 10 20 2000 30 5 5 0 0 0\n"  # idle and iowait are not busy
        "cpu2 999 0 0 1 0 0 0 0 0 0\n"
        "intr 12345\n"
    )
    assert threads._cpu_ticks({0, 1}, stat) == 150 + 440
    assert threads._cpu_ticks({2}, stat) == 999
    assert threads._cpu_ticks({0}, tmp_path / "missing") is None

    # 150 ticks of the two CPUs in 0.5 s, 0.25 s of them this process's own: 2.5 cores of others.
    ticks = iter([1000, 1150])
    clock = iter([10.0, 10.5])
    own = iter([3.0, 3.25])
    monkeypatch.setattr(threads, "_cpu_ticks", lambda cpus: next(ticks))
    monkeypatch.setattr(threads.time, "perf_counter", lambda: next(clock))
    monkeypatch.setattr(threads.time, "process_time", lambda: next(own))
    monkeypatch.setattr(threads.time, "sleep", lambda seconds: None)
    monkeypatch.setattr(threads.os, "sysconf", lambda name: 100)
    assert busy_cores_of_others({0, 1}) == pytest.approx(2.5)


@pytest.mark.skipif(not Path("/proc/stat").is_file(), reason="Linux /proc/stat")
def test_busy_cores_see_a_busy_process() -> None:
    cpu = min(os.sched_getaffinity(0))
    spinner = subprocess.Popen(
        [sys.executable, "-c", f"import os; os.sched_setaffinity(0, {{{cpu}}})\nwhile True: pass"]
    )
    try:
        time.sleep(0.3)
        # The loop keeps its CPU busy, or other processes do: either way about a core or more.
        assert busy_cores_of_others({cpu}, seconds=0.3) >= 0.6
    finally:
        spinner.kill()
        spinner.wait()


def _configure_in_process(
    monkeypatch: pytest.MonkeyPatch, backend: str, environ: dict[str, str], busy: float
) -> dict[str, str]:
    monkeypatch.delitem(sys.modules, {"torch": "torch", "tf": "tensorflow"}[backend], False)
    monkeypatch.setattr(threads, "allowed_cpus", lambda: {0, 1, 2, 3})
    monkeypatch.setattr(threads, "cgroup_cpu_limit", lambda: None)
    monkeypatch.setattr(threads, "busy_cores_of_others", lambda cpus: busy)
    return configure_threads(backend, environ)


def test_configure_sets_the_environment_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    environ: dict[str, str] = {}
    with caplog.at_level("INFO", logger="dualtrain"):
        assert _configure_in_process(monkeypatch, "torch", environ, busy=1.0) == {
            "OMP_NUM_THREADS": "3"
        }
    assert environ == {"OMP_NUM_THREADS": "3"}
    assert "threads: OMP_NUM_THREADS=3 (cores this process may use: 4" in caplog.text
    # select_backend runs again later in a run: the variable is there, nothing changes.
    assert _configure_in_process(monkeypatch, "torch", environ, busy=3.0) == {}
    assert environ == {"OMP_NUM_THREADS": "3"}


def test_configure_leaves_an_imported_framework_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    # The user imported torch first (and may have called torch.set_num_threads): too late for
    # libgomp's environment, and their threads.
    monkeypatch.setitem(sys.modules, "torch", types.ModuleType("torch"))
    monkeypatch.setitem(sys.modules, "tensorflow", types.ModuleType("tensorflow"))
    monkeypatch.setattr(threads, "cgroup_cpu_limit", lambda: 1.0)
    environ: dict[str, str] = {}
    assert configure_threads("torch", environ) == {}
    assert configure_threads("tf", environ) == {}
    assert environ == {}


class _Readings:
    """A wall clock, busy ticks (100 a second) and this process's CPU time that a test moves."""

    def __init__(self) -> None:
        self.now, self.ticks, self.own = 0.0, 0, 0.0
        self.reads = 0

    def pass_seconds(self, seconds: float, others: float, own: float) -> None:
        """`seconds` go by with `others` cores busy elsewhere and `own` cores of this process."""
        self.now += seconds
        self.ticks += round(100 * seconds * (others + own))
        self.own += seconds * own

    def read_ticks(self, cpus: set[int]) -> int | None:
        self.reads += 1
        return self.ticks


def test_the_thread_count_follows_load_that_comes_and_goes(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(threads.os, "sysconf", lambda name: 100)
    readings, changes = _Readings(), []
    follower = threads.LoadFollower(
        2, {0, 1}, 2, changes.append, interval=2.0, clock=lambda: readings.now,
        ticks=readings.read_ticks, own=lambda: readings.own,
    )  # fmt: skip
    run = types.SimpleNamespace()
    follower.on_train_begin(run)  # type: ignore[arg-type]

    def steps(seconds: float, others: float, own: float) -> None:  # steps of 0.25 s (exact sums)
        for _ in range(round(seconds / 0.25)):
            readings.pass_seconds(0.25, others, own)
            follower.on_step_end(run, False)  # type: ignore[arg-type]

    steps(4.0, others=0.1, own=1.9)  # quiet: both cores stay
    assert changes == [] and readings.reads == 3  # the start and every 2 s, not every step
    with caplog.at_level("INFO", logger="dualtrain"):
        steps(2.0, others=1.6, own=0.4)  # 4 busy processes arrive on the 2 cores
    assert changes == [1] and follower.threads == 1
    said = "threads: torch now runs 1 thread(s), was 2 (other processes kept 1.6 of 2 cores busy"
    assert f"{said} over the last 2.0 s; OMP_NUM_THREADS fixes the count)" in caplog.text
    steps(4.0, others=1.6, own=0.4)  # still there: no change
    steps(2.0, others=0.9, own=0.5)  # one core still busy elsewhere: one thread
    assert changes == [1]
    steps(2.0, others=0.0, own=1.0)  # the load left
    assert changes == [1, 2] and follower.threads == 2
    steps(2.0, others=1.6, own=0.4)
    follower.on_train_end(run)  # type: ignore[arg-type]
    assert changes == [1, 2, 1, 2]  # the process gets back the count the run started with


def test_the_follower_stops_where_proc_stat_is_unreadable() -> None:
    clock = iter(range(100))
    follower = threads.LoadFollower(
        2, {0, 1}, 2, lambda n: pytest.fail("no reading, no change"), interval=1.0,
        clock=lambda: float(next(clock)), ticks=lambda cpus: None, own=lambda: 0.0,
    )  # fmt: skip
    run = types.SimpleNamespace()
    follower.on_train_begin(run)  # type: ignore[arg-type]
    for _ in range(5):
        follower.on_step_end(run, False)  # type: ignore[arg-type]
    assert next(clock) == 1  # read the clock once, at the start


def test_a_follower_only_where_dualtrain_chose_torchs_threads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(threads, "_torch_choice", None)
    assert threads.load_follower("torch", None) is None  # the user's or torch's own threads
    monkeypatch.setattr(threads, "_torch_choice", (2, {0, 1}))
    assert threads.load_follower("tf", None) is None  # tf's pools share out work by themselves
    assert threads.load_follower("torch", True) is None  # trainer.deterministic keeps the count


# -- a fresh process: what the framework's libraries read ------------------------------------------

# select_backend as a run calls it first, then loads torch's libgomp (not torch) and prints what
# dualtrain set, what libgomp will use, and its displayed settings (OMP_DISPLAY_ENV, on stderr).
_TORCH_PROCESS = """
import ctypes, json, os, sys
from dualtrain.engines import select_backend
before = dict(os.environ)
select_backend("torch", import_framework=False)
set_here = {k: v for k, v in os.environ.items() if before.get(k) != v and k != "KERAS_BACKEND"}
gomp = ctypes.CDLL(sys.argv[1])
print(json.dumps({"set": set_here, "omp_max_threads": gomp.omp_get_max_threads(),
                  "torch_imported": "torch" in sys.modules}))
"""


def _fresh_process(code: str, *args: str, **env: str) -> tuple[dict, str]:
    clean = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
    result = subprocess.run(
        [sys.executable, "-c", code, *args],
        env={**clean, "PYTHONPATH": str(REPO), **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(result.stdout.splitlines()[-1]), result.stderr


@pytest.mark.skipif(LIBGOMP is None, reason="torch with its bundled libgomp")
def test_a_fresh_torch_process_gets_the_free_cores() -> None:
    report, _ = _fresh_process(_TORCH_PROCESS, str(LIBGOMP))
    chosen = int(report["set"]["OMP_NUM_THREADS"])
    assert set(report["set"]) == {"OMP_NUM_THREADS"}  # no wait policy: libgomp's own
    assert 1 <= chosen <= len(os.sched_getaffinity(0))
    assert report["omp_max_threads"] == chosen  # what torch's team will be
    assert not report["torch_imported"]


@pytest.mark.skipif(LIBGOMP is None, reason="torch with its bundled libgomp")
@pytest.mark.parametrize(
    "user,threads_expected",
    [({"OMP_NUM_THREADS": "3"}, 3), ({"DUALTRAIN_THREADS": "off"}, None)],
)
def test_a_fresh_torch_process_keeps_the_users_settings(
    user: dict[str, str], threads_expected: int | None
) -> None:
    wait = {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "1000", "OMP_DISPLAY_ENV": "VERBOSE"}
    report, displayed = _fresh_process(_TORCH_PROCESS, str(LIBGOMP), **user, **wait)
    assert report["set"] == {}
    # off: libgomp's own default, one thread per CPU of the affinity.
    expected = threads_expected or len(os.sched_getaffinity(0))
    assert report["omp_max_threads"] == expected
    assert f"OMP_NUM_THREADS = '{expected}'" in displayed
    assert "OMP_WAIT_POLICY = 'PASSIVE'" in displayed
    assert "GOMP_SPINCOUNT = '1000'" in displayed


_TF_PROCESS = """
import json, os, sys
import dualtrain.threads
dualtrain.threads.cgroup_cpu_limit = lambda: float(sys.argv[1])  # a quota, as a container has
from dualtrain.engines import select_backend
select_backend("tf", import_framework=False)
print(json.dumps({"set": {k: os.environ.get(k) for k in
                          ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS")},
                  "tf_imported": "tensorflow" in sys.modules}))
"""


def test_a_fresh_tf_process_runs_within_its_quota() -> None:
    cpus = len(os.sched_getaffinity(0))
    report, _ = _fresh_process(_TF_PROCESS, "1.0")
    expected = "1" if cpus > 1 else None
    assert report["set"] == {
        "TF_NUM_INTRAOP_THREADS": expected,
        "TF_NUM_INTEROP_THREADS": expected,
        "OMP_NUM_THREADS": None,  # torch's variable: TensorFlow with oneDNN reads it too
    }
    assert not report["tf_imported"]
    report, _ = _fresh_process(_TF_PROCESS, "1.0", TF_NUM_INTEROP_THREADS="2")
    assert report["set"]["TF_NUM_INTEROP_THREADS"] == "2"
    report, _ = _fresh_process(_TF_PROCESS, str(float(cpus)))  # a quota of every CPU
    assert report["set"]["TF_NUM_INTRAOP_THREADS"] is None


# -- the frameworks themselves (slow: they are imported) -------------------------------------------

_TORCH_IMPORTED = """
import json, os, sys
user = sys.argv[1] == "user"
if user:  # the user's own choice, before dualtrain runs
    import torch
    torch.set_num_threads(1)
from dualtrain.engines import engine_class
engine_class("torch")  # as a run starts: select_backend, then the engine and torch
import torch
print(json.dumps({"env": os.environ.get("OMP_NUM_THREADS"), "torch": torch.get_num_threads()}))
"""


@pytest.mark.slow  # imports torch, twice
def test_torch_runs_the_threads_chosen_unless_the_user_chose() -> None:
    report, _ = _fresh_process(_TORCH_IMPORTED, "dualtrain")
    assert report["env"] is not None and report["torch"] == int(report["env"])
    report, _ = _fresh_process(_TORCH_IMPORTED, "user")
    assert report == {"env": None, "torch": 1}


# A torch run that chose 2 threads on a quiet machine, then meets 3 busy processes started once
# it trains: its log says it went down to one thread.
_LATE_LOAD = """
import subprocess, sys
import dualtrain.threads
from dualtrain.callbacks import Callback
dualtrain.threads.busy_cores_of_others = lambda cpus, seconds=0.1: 0.0  # quiet at the start
dualtrain.threads.FOLLOW_SECONDS = 0.5
spin = "while True: pass"
loads = []
class Load(Callback):
    def on_train_begin(self, run):
        loads.extend(subprocess.Popen([sys.executable, "-c", spin]) for _ in range(3))
dualtrain.threads.Load = Load
sys.argv = ["dualtrain", *sys.argv[1:]]
try:
    from dualtrain.cli import main
    main()
finally:
    for p in loads:
        p.kill()
"""


@pytest.mark.slow  # a torch run under load
@pytest.mark.skipif(len(os.sched_getaffinity(0)) != 2, reason="this project's 2 cores")
def test_a_torch_run_follows_load_that_comes_after_it_chose_its_threads(tmp_path: Path) -> None:
    clean = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
    result = subprocess.run(
        [sys.executable, "-c", _LATE_LOAD, "recipe=mlp", "backend=torch", "data=synthetic",
         "data.num_samples=20000", "trainer.max_epochs=3", "logger.progress=false",
         "+callbacks.load._target_=dualtrain.threads.Load", f"hydra.run.dir={tmp_path}"],
        env={**clean, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    log_text = (tmp_path / "dualtrain.log").read_text()
    assert "threads: OMP_NUM_THREADS=2 (cores this process may use: 2" in log_text
    assert "threads: torch now runs 1 thread(s), was 2 (other processes kept" in log_text


_TF_IMPORTED = """
import json, os, sys
import dualtrain.threads
dualtrain.threads.cgroup_cpu_limit = lambda: 1.0
from dualtrain.engines import select_backend
select_backend("tf")
import tensorflow as tf
x = tf.random.normal((256, 256))
for _ in range(3):
    tf.matmul(x, x)
names = [open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task")]
print(json.dumps({"inter_op_threads": names.count("tf_Compute")}))
"""


@pytest.mark.slow  # imports TensorFlow
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="a quota below the CPUs")
def test_tf_runs_one_inter_op_thread_under_a_quota_of_one_cpu() -> None:
    # TensorFlow names its inter-op pool's threads tf_Compute; without the quota it runs one
    # per CPU.
    report, _ = _fresh_process(_TF_IMPORTED, TF_CPP_MIN_LOG_LEVEL="2")
    assert report == {"inter_op_threads": 1}


# -- benchmarks/shared_machine.py ------------------------------------------------------------------


def _benchmark_module() -> types.ModuleType:
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location(
            "shared_machine", REPO / "benchmarks" / "shared_machine.py"
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(REPO / "benchmarks"))


def test_benchmark_report_arithmetic() -> None:
    bench = _benchmark_module()
    rates = {  # (backend, settings, condition) -> samples/s in rounds 0, 1, 2
        ("torch", "old", "quiet"): [30.0, 32.0, 28.0],
        ("torch", "old", "loaded"): [1.0, 3.0, 2.0],
        ("torch", "new", "quiet"): [31.0, 30.0, 33.0],
        ("torch", "new", "loaded"): [9.0, 8.0, 10.0],
        ("tf", "old", "quiet"): [30.0, 30.0, 30.0],
        ("tf", "old", "loaded"): [10.0, 12.0, 11.0],
        ("tf", "new", "quiet"): [30.0, 30.0, 30.0],
        ("tf", "new", "loaded"): [10.0, 12.0, 11.0],
    }
    runs = [
        {"backend": b, "settings": s, "condition": c, "round": i, "samples_per_sec": rate,
         "threads": "OMP_NUM_THREADS=1" if (b, s, c) == ("torch", "new", "loaded") else "",
         "background_cores": 0.1 * i}
        for (b, s, c), values in rates.items() for i, rate in enumerate(values)
    ]  # fmt: skip
    args = types.SimpleNamespace(
        backends=["torch", "tf"], conditions=["quiet", "loaded"], rounds=3, load=4,
        samples=5120, epochs=4,
    )  # fmt: skip
    report: dict = {"runs": runs, "environment": {"allowed_cores": 2}}
    report["table"] = bench.summarize(report, args)
    report["new_vs_old"] = bench.new_vs_old(report, args)
    report["goal"] = bench.goal(report["table"])
    torch_new = next(
        r for r in report["table"] if (r["backend"], r["settings"]) == ("torch", "new")
    )
    loaded = torch_new["conditions"]["loaded"]
    assert (
        loaded["samples_per_sec"] == 9.0
        and torch_new["conditions"]["quiet"]["samples_per_sec"] == 31.0
    )
    assert loaded["vs_quiet"] == pytest.approx(9 / 31)
    assert loaded["vs_quiet_per_round"] == pytest.approx([9 / 31, 8 / 30, 10 / 33])
    assert loaded["set_by_dualtrain"] == ["OMP_NUM_THREADS=1"]
    assert torch_new["background_cores"] == pytest.approx(0.1)
    assert torch_new["background_cores_max"] == pytest.approx(0.2)
    quiet_cost = next(
        c for c in report["new_vs_old"] if (c["backend"], c["condition"]) == ("torch", "quiet")
    )
    assert quiet_cost["per_round"] == pytest.approx([31 / 30, 30 / 32, 33 / 28])
    assert quiet_cost["median"] == pytest.approx(31 / 30)
    # torch 9/31 = 0.29 of its quiet rate, tf 11/30 = 0.37: not met.
    assert report["goal"] == {"torch": pytest.approx(9 / 31), "tf": pytest.approx(11 / 30),
                              "met": False}  # fmt: skip
    table = bench.markdown(report, args)
    assert "| torch | new | -, OMP_NUM_THREADS=1 | 31 | 9 | 0.290 | 0.290, 0.267, 0.303 |" in table
    assert "not met" in table


@pytest.mark.slow  # trains 4 times per backend in subprocesses
@pytest.mark.parametrize("backend", ["torch", "tf"])
def test_benchmark_smoke(backend: str, tmp_path: Path) -> None:
    out = tmp_path / "shared_machine.json"
    clean = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
    result = subprocess.run(
        [sys.executable, "benchmarks/shared_machine.py", "--smoke", "--backends", backend,
         "--out", str(out)],
        cwd=REPO, env={**clean, "PYTHONPATH": str(REPO)},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert not report["failures"]
    runs = report["runs"]
    assert {(r["settings"], r["condition"]) for r in runs} == {
        (s, c) for s in ("old", "new") for c in ("quiet", "loaded")
    }
    for run in runs:
        assert run["backend"] == backend and run["samples_per_sec"] > 0
        assert run["load_processes"] == (1 if run["condition"] == "loaded" else 0)
        assert (run["load_cores"] > 0) == (run["condition"] == "loaded")  # the loop ran
        if run["settings"] == "old":
            assert run["threads"] == ""  # DUALTRAIN_THREADS=off: nothing set
        elif backend == "torch":
            assert run["threads"].startswith("OMP_NUM_THREADS=")
    assert {(r["backend"], r["settings"]) for r in report["table"]} == {
        (backend, "old"),
        (backend, "new"),
    }
    for row in report["table"]:
        quiet = row["conditions"]["quiet"]["samples_per_sec"]
        loaded = row["conditions"]["loaded"]
        assert loaded["vs_quiet"] == pytest.approx(loaded["samples_per_sec"] / quiet)
        assert f"| {backend} | {row['settings']} |" in result.stdout
    assert report["goal"] is None  # one backend: nothing to compare
