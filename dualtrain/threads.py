"""Thread settings that hold up on a shared machine: torch gets as many threads as cores are free.

torch runs its CPU kernels on an OpenMP team (GNU libgomp) of one thread per CPU by default, and a
team thread that waits spins for about 3 ms (libgomp's `GOMP_SPINCOUNT` of 300,000) before it
sleeps. With other processes on the cores, each parallel op waits for whichever team thread the
scheduler has put aside, while its partner spins away the share of CPU time they both need: a
small Conv1D model trained at 0.08 of its quiet rate under 4 busy processes on 2 cores (0.003-0.02
with other work on the machine as well), where TensorFlow, whose pools hand work to whichever
thread is free, kept 0.4 (docs/shared-machines.md).

`configure_threads` runs in `dualtrain.engines.select_backend`, before the framework is imported
(libgomp reads its environment once, when `import torch` loads it), and sets:

- torch: `OMP_NUM_THREADS` = the cores this process may use (its CPU affinity, fewer under a
  cgroup CPU quota) less the cores that other processes keep busy, measured over 0.1 s there and
  then; at least 1. On a quiet machine that is what torch picks by itself; on a busy one, one
  thread, which has no team to wait for. The wait policy stays libgomp's: where the cores are
  free, its spinning is what makes two threads pay (a passive policy ran the same model at 0.44x
  on the quiet machine, shorter spins collapsed under load as the default does).
- tf: `TF_NUM_INTRAOP_THREADS` and `TF_NUM_INTEROP_THREADS` = the cores this process may use, but
  only where a cgroup quota allows fewer than TensorFlow counts (it reads the affinity only).

Nothing is set that the environment already has (the user's `OMP_NUM_THREADS`, `OMP_WAIT_POLICY`,
`GOMP_SPINCOUNT`, TensorFlow's variables win), nothing for a framework that this process has
already imported (its threads are the user's: a `torch.set_num_threads` call stays), and nothing
at all with `DUALTRAIN_THREADS=off`, which leaves both frameworks to their own defaults.

Where dualtrain chose torch's threads, `LoadFollower` (a callback of the run) chooses them again
every `FOLLOW_SECONDS` of training by the same rule, from the load since its last look: load that
comes or goes during a run is followed, between steps (docs/shared-machines.md). Not with
`trainer.deterministic=true`, whose runs keep the thread count they start with.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from pathlib import Path

from dualtrain.callbacks import Callback, TrainingRun

log = logging.getLogger("dualtrain")

OFF_VARIABLE = "DUALTRAIN_THREADS"
# What this module may set, per backend; a user's value of any of them is kept.
TORCH_VARIABLES = ("OMP_NUM_THREADS",)
TF_VARIABLES = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")
# A core counts as free when other processes use less than this much of it: a torch team thread
# that shares its core with a busy process makes the whole team wait (see the module's doc).
FREE_CORE_SLACK = 0.25
PROBE_SECONDS = 0.1
# How often a run looks at the load again (LoadFollower): /proc/stat is read between steps at
# most this often, about 50 us each time.
FOLLOW_SECONDS = 2.0
_FRAMEWORK_MODULE = {"torch": "torch", "tf": "tensorflow"}


def cgroup_cpu_limit(
    root: Path = Path("/sys/fs/cgroup"), membership: Path = Path("/proc/self/cgroup")
) -> float | None:
    """The CPUs a cgroup CPU quota allows this process (e.g. 1.5), or None without a quota.

    cgroup v2 (`cpu.max`) and v1 (`cpu.cfs_quota_us` / `cpu.cfs_period_us`); the smallest quota
    on the way from this process's cgroup up to the root of the mounted hierarchy counts.
    """
    try:
        lines = membership.read_text().splitlines()
    except OSError:
        return None
    limits = []
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            mount = root if (root / "cgroup.controllers").exists() else root / "unified"
            limits += _quotas(mount, path, _v2_quota)
        elif "cpu" in controllers.split(","):
            names = (controllers, "cpu", "cpu,cpuacct", "cpuacct,cpu")
            v1 = [root / n for n in names if (root / n / "cpu.cfs_quota_us").exists()]
            if v1:
                limits += _quotas(v1[0], path, _v1_quota)
    return min(limits) if limits else None


def _quotas(mount: Path, path: str, read: Callable[[Path], float | None]) -> list[float]:
    """The quotas (in CPUs) of the cgroup at `path` under `mount` and of its parents that exist
    here (inside a container the path may name the host's hierarchy: then the mount's own)."""
    found = []
    current = mount / path.strip("/")
    while True:
        if current.is_dir():
            quota = read(current)
            if quota is not None:
                found.append(quota)
        if current == mount or mount not in current.parents:
            return found
        current = current.parent


def _v2_quota(directory: Path) -> float | None:
    try:
        quota, period = (directory / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    return None if quota == "max" else int(quota) / int(period)


def _v1_quota(directory: Path) -> float | None:
    try:
        quota = int((directory / "cpu.cfs_quota_us").read_text())
        period = int((directory / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota <= 0 or period <= 0 else quota / period


def allowed_cpus() -> set[int]:
    """The CPUs this process may run on (its affinity; all of them where that is unknown)."""
    if hasattr(os, "sched_getaffinity"):
        return set(os.sched_getaffinity(0))
    return set(range(os.cpu_count() or 1))


def allowed_cores(cpus: Iterable[int] | None = None, quota: float | None = None) -> int:
    """How many cores this process may keep busy: its CPUs, fewer under a cgroup quota (rounded
    up: a quota of 1.5 CPUs runs two threads for three quarters of the time)."""
    count = len(set(cpus)) if cpus is not None else len(allowed_cpus())
    if quota is not None:
        count = min(count, math.ceil(quota))
    return max(1, count)


def _cpu_ticks(cpus: set[int], stat: Path = Path("/proc/stat")) -> int | None:
    """Busy clock ticks of these CPUs since boot (user, nice, system, irq, softirq, steal)."""
    try:
        text = stat.read_text()
    except OSError:
        return None
    busy = 0
    for line in text.splitlines():
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cpus:
            continue
        ticks = [int(t) for t in fields[:8]]
        busy += sum(ticks) - ticks[3] - ticks[4]  # less idle and iowait
    return busy


def _busy_since(ticks: int, own: float, elapsed: float, ticks_now: int, own_now: float) -> float:
    """Cores kept busy by other processes between two readings `elapsed` seconds apart: the busy
    time of the CPUs read less this process's own CPU time."""
    busy = (ticks_now - ticks) / os.sysconf("SC_CLK_TCK") - (own_now - own)
    return max(0.0, busy / elapsed) if elapsed > 0 else 0.0


def busy_cores_of_others(cpus: set[int], seconds: float = PROBE_SECONDS) -> float | None:
    """Cores of `cpus` that other processes kept busy over the next `seconds` (this process
    sleeps meanwhile; its own CPU time is subtracted); None where /proc/stat is not readable."""
    before, own_before, started = _cpu_ticks(cpus), time.process_time(), time.perf_counter()
    if before is None:
        return None
    time.sleep(seconds)
    after, own_after = _cpu_ticks(cpus), time.process_time()
    if after is None:
        return None
    return _busy_since(before, own_before, time.perf_counter() - started, after, own_after)


def switched_off(environ: Mapping[str, str]) -> bool:
    """`DUALTRAIN_THREADS=off` (or 0, false, no): the frameworks' own defaults."""
    return environ.get(OFF_VARIABLE, "").strip().lower() in ("off", "0", "false", "no")


def torch_threads(cores: int, busy: float | None, cpus: int | None = None) -> int:
    """torch's team: the `cores` this process may use that other processes leave free, >= 1.

    `busy`: cores of this process's `cpus` that other processes keep busy; under a cgroup quota
    (`cores` < `cpus`) the same fraction of this process's cores counts as taken.
    """
    if busy is None:
        return cores
    if cpus and cpus > cores:
        busy = busy * cores / cpus
    return max(1, min(cores, math.floor(cores - busy + FREE_CORE_SLACK)))


def thread_environment(
    backend: str,
    environ: Mapping[str, str],
    cores: int,
    schedulable: int,
    busy: float | None = None,
) -> dict[str, str]:
    """The variables to set for `backend` (those the environment has are left out).

    `cores`: the cores this process may use; `schedulable`: the CPUs its affinity allows (what
    the frameworks count by themselves); `busy`: cores other processes keep busy (torch only).
    """
    if switched_off(environ):
        return {}
    wanted: dict[str, str] = {}
    if backend == "torch":
        wanted["OMP_NUM_THREADS"] = str(torch_threads(cores, busy, schedulable))
    elif backend == "tf" and cores < schedulable:
        wanted = {name: str(cores) for name in TF_VARIABLES}
    return {name: value for name, value in wanted.items() if name not in environ}


def configure_threads(
    backend: str, environ: MutableMapping[str, str] | None = None
) -> dict[str, str]:
    """Sets this process's thread variables for `backend` before its framework is imported;
    returns what it set (nothing once the framework is imported, or where the user has set them).

    Runs at every `select_backend`; only the first call sets anything, later ones find the
    variables there.
    """
    env = os.environ if environ is None else environ
    module = _FRAMEWORK_MODULE.get(backend)
    if module is None or module in sys.modules:
        return {}
    variables = TORCH_VARIABLES if backend == "torch" else TF_VARIABLES
    if all(name in env for name in variables):
        return {}
    cpus = allowed_cpus()
    cores = allowed_cores(cpus, cgroup_cpu_limit())
    busy = None
    if backend == "torch" and "OMP_NUM_THREADS" not in env and not switched_off(env):
        busy = busy_cores_of_others(cpus)
    chosen = thread_environment(backend, env, cores, len(cpus), busy)
    env.update(chosen)
    if environ is None and "OMP_NUM_THREADS" in chosen:
        global _torch_choice
        _torch_choice = (cores, cpus)
    if chosen:
        others = "unknown" if busy is None else f"{busy:.1f}"
        log.info(
            "threads: %s (cores this process may use: %d; kept busy by other processes: %s; "
            "DUALTRAIN_THREADS=off leaves the framework's defaults)",
            " ".join(f"{k}={v}" for k, v in chosen.items()),
            cores,
            others,
        )
    return chosen


# What configure_threads chose torch's threads for in this process: (cores, cpus); None where it
# chose nothing (the user's, the framework's or an earlier import's threads stand).
_torch_choice: tuple[int, set[int]] | None = None


class LoadFollower(Callback):
    """torch's thread count, chosen again as the load of other processes changes during a run.

    Every `interval` seconds, at the end of a step (in the training thread: OpenMP's thread count
    belongs to the thread that sets it), the cores other processes kept busy since the last look
    give the count by `torch_threads`'s rule; where it differs from the one running, one log
    line says so and `set_threads` (`torch.set_num_threads`) changes it. The run's end puts back
    the count it started with.

    Args:
        cores, cpus: the cores this process may use, and the CPUs of its affinity.
        threads: the count running now.
        set_threads: changes it.
        interval: seconds between looks (None: `FOLLOW_SECONDS`).
        clock, ticks, own: the wall clock, the CPUs' busy ticks (None: unreadable) and this
            process's CPU time; tests give their own.
    """

    def __init__(
        self,
        cores: int,
        cpus: set[int],
        threads: int,
        set_threads: Callable[[int], None],
        interval: float | None = None,
        clock: Callable[[], float] = time.perf_counter,
        ticks: Callable[[set[int]], int | None] = _cpu_ticks,
        own: Callable[[], float] = time.process_time,
    ) -> None:
        self.cores, self.cpus, self.threads, self.started_with = cores, cpus, threads, threads
        self._set = set_threads
        self.interval = FOLLOW_SECONDS if interval is None else interval
        self._clock, self._ticks, self._own = clock, ticks, own
        self._mark: tuple[float, int, float] | None = None

    def on_train_begin(self, run: TrainingRun) -> None:
        self._look()

    def on_step_end(self, run: TrainingRun, epoch_ends: bool) -> None:
        if self._mark is not None and self._clock() - self._mark[0] >= self.interval:
            self.follow()

    def on_train_end(self, run: TrainingRun) -> None:
        # The process as the run found it: a later run in it (dualtrain.fit) starts from there.
        if self.threads != self.started_with:
            self._set(self.started_with)
            self.threads = self.started_with

    def follow(self) -> None:
        """Chooses the count again from the load since the last look."""
        looked = self._look()
        if looked is None:
            return
        busy, seconds = looked
        wanted = torch_threads(self.cores, busy, len(self.cpus))
        if wanted != self.threads:
            log.info(
                "threads: torch now runs %d thread(s), was %d (other processes kept %.1f of "
                "%d cores busy over the last %.1f s; OMP_NUM_THREADS fixes the count)",
                wanted,
                self.threads,
                busy,
                len(self.cpus),
                seconds,
            )
            self._set(wanted)
            self.threads = wanted

    def _look(self) -> tuple[float, float] | None:
        """Takes a reading; returns the others' busy cores since the last one and the seconds
        between them (None: the first reading, or /proc/stat unreadable, after which the
        follower stops looking)."""
        now, ticks, own = self._clock(), self._ticks(self.cpus), self._own()
        before, self._mark = self._mark, (None if ticks is None else (now, ticks, own))
        if before is None or ticks is None:
            return None
        seconds = now - before[0]
        return _busy_since(before[1], before[2], seconds, ticks, own), seconds


def load_follower(backend: str, deterministic: bool | None) -> LoadFollower | None:
    """The run's LoadFollower: torch, where `configure_threads` chose the threads and nothing
    has changed them since; None otherwise (tf's pools hand work to whichever thread is free,
    and `trainer.deterministic=true` keeps the count the run starts with)."""
    if backend != "torch" or _torch_choice is None or deterministic:
        return None
    import torch

    threads = int(torch.get_num_threads())
    if str(threads) != os.environ.get("OMP_NUM_THREADS"):  # torch.set_num_threads by the user
        return None
    cores, cpus = _torch_choice
    return LoadFollower(cores, cpus, threads, torch.set_num_threads)


__all__ = [
    "LoadFollower",
    "allowed_cores",
    "busy_cores_of_others",
    "cgroup_cpu_limit",
    "configure_threads",
    "load_follower",
    "thread_environment",
    "torch_threads",
]
