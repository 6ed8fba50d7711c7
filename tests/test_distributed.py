"""Distributed training on 127.0.0.1, two processes, each backend: torchrun (gloo) and
tf.distribute's MultiWorkerMirroredStrategy with TF_CONFIG.

Every run is a subprocess in its own session, killed with its children when it overruns or the
test fails. Start-up (Keras and a framework, a few seconds per process) dominates, so each run
trains 8 steps of the cnn recipe, dropout off (its masks depend on the batch shape, which
differs between 1 and 2 processes), logging the loss of every step.

Tolerance: a 2-process step computes the same global batch's mean-loss gradient as 1 process,
but adds the two halves' partial sums in the all-reduce instead of inside one batch's reduction,
so float32 results may differ in the last bits, and Adam carries that on. Measured on this
machine over 20 steps: equal to the last bit for 15 steps, then 1.3e-5 relative (torch); equal
throughout (tf). The tests allow 1e-4 relative; a real mistake (a gradient not averaged, a shard
trained twice) is off by more than 1e-2 within two steps.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import REPO

pytestmark = [pytest.mark.xdist_group("distributed"), pytest.mark.slow]

RTOL = 1e-4  # see the module docstring
STEPS = 8
RUN = [
    "recipe=cnn",
    "recipe.model.dropout=0",
    f"trainer.max_steps={STEPS}",
    "trainer.log_every_n_steps=1",
    "checkpoint.every_n_steps=4",
    "logger=[jsonl]",
    "logger.progress=false",
]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def _env(**extra: str) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", **extra}


def _launch(
    commands: list[tuple[list[str], dict[str, str]]],
    cwd: Path,
    timeout: float,
    wait_for: int | None = None,
) -> list[tuple[int | None, str]]:
    """Runs the commands side by side; returns each one's exit code (None: killed) and output
    (stdout and stderr). Waits for the first `wait_for` of them (default: all), then kills every
    process group still running; so also at the timeout, or on any error."""
    procs, outputs = [], []
    try:
        for i, (command, env) in enumerate(commands):
            out = (cwd / f".out-{time.monotonic_ns()}-{i}.txt").open("w+")
            outputs.append(out)
            procs.append(
                subprocess.Popen(
                    command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        for proc in procs[:wait_for]:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass  # the output says how far it got; the caller's asserts fail on the exit code
    finally:
        was_killed = [proc.poll() is None for proc in procs]
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    results = []
    for proc, out, killed in zip(procs, outputs, was_killed, strict=True):
        out.seek(0)
        results.append((None if killed else proc.returncode, out.read()))
        out.close()
    return results


def _ok(result: tuple[int | None, str]) -> str:
    code, output = result
    assert code == 0, output[-3000:]
    return output


def _losses(run_dir: Path) -> dict[int, float]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {line["step"]: line["loss"] for line in lines if line["split"] == "train"}


def _assert_same_losses(got: dict[int, float], expected: dict[int, float]) -> None:
    assert sorted(got) == sorted(expected)
    for step, loss in expected.items():
        assert got[step] == pytest.approx(loss, rel=RTOL), (step, got, expected)


def _dump(directory: Path) -> list[str]:
    return [
        "+callbacks.dump._target_=tests.distributed_helpers.DumpWeights",
        f"+callbacks.dump.directory='{directory}'",
    ]


def _assert_ranks_equal(directory: Path, ranks: int) -> None:
    weights = [dict(np.load(directory / f"rank-{r}.npz")) for r in range(ranks)]
    for other in weights[1:]:
        assert other.keys() == weights[0].keys()
        for name, value in weights[0].items():
            np.testing.assert_array_equal(other[name], value, err_msg=name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _summary(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "summary.json").read_text())


def test_torchrun_two_ranks_match_one_process_and_resume_across_world_sizes(
    tmp_path: Path,
) -> None:
    # 2 ranks (default run dir: the ranks must agree on it) beside 1 process, same global batch.
    two, one = tmp_path / "two", tmp_path / "one"
    two.mkdir()
    both = _launch(
        [
            ([*TORCHRUN, "-m", "dualtrain", *RUN, *_dump(tmp_path / "w2")], _env()),
            (
                [sys.executable, "-m", "dualtrain", *RUN, f"hydra.run.dir={one}"],
                _env(),
            ),
        ],
        cwd=two,
        timeout=120,
    )
    for result in both:
        _ok(result)
    run_dirs = list((two / "outputs" / "cnn" / "torch").iterdir())
    assert len(run_dirs) == 1, run_dirs  # one shared run directory, not one per rank
    two_dir = run_dirs[0]
    _assert_same_losses(_losses(two_dir), _losses(one))
    _assert_ranks_equal(tmp_path / "w2", 2)
    summary = _summary(two_dir)
    assert summary["status"] == "completed"
    assert summary["distributed"] == {
        "world_size": 2, "backend": "gloo", "strategy": "torchrun", "rank": 0,
    }  # fmt: skip
    assert len((two_dir / "metrics.jsonl").read_text().splitlines()) == STEPS + 1  # rank 0 only

    # The 2-rank run's step-4 checkpoint continues in 1 process; and the reverse, under torchrun
    # with --max-restarts=1 and a checkpoint every step: rank 0 crashes after step 6, torchrun
    # restarts both ranks, which find their run directory again and resume from its newest
    # checkpoint (step 5: the crash comes before step 6 is saved) rather than the given one.
    middle = "checkpoints/step-000000004"
    fault = [
        "+callbacks.fault._target_=tests.distributed_helpers.Fault",
        "+callbacks.fault.rank=1",
        "+callbacks.fault.step=6",
        "+callbacks.fault.action=exit",
        "checkpoint.every_n_steps=1",
    ]
    resumed = _launch(
        [
            ([sys.executable, "-m", "dualtrain", *RUN, f"checkpoint.path={two_dir / middle}",
              f"hydra.run.dir={tmp_path / 'two-then-one'}"], _env()),
            ([*TORCHRUN, "--max-restarts=1", "-m", "dualtrain", *RUN, *fault,
              f"checkpoint.path={one / middle}", f"hydra.run.dir={tmp_path / 'one-then-two'}"],
             _env()),
        ],
        cwd=tmp_path,
        timeout=150,
    )  # fmt: skip
    _ok(resumed[0])
    restarted = _ok(resumed[1])
    later = {s: v for s, v in _losses(one).items() if s > 4}
    _assert_same_losses(_losses(tmp_path / "two-then-one"), later)
    # Steps 5 and 6 are logged twice (before and after the restart); the later line counts.
    _assert_same_losses(_losses(tmp_path / "one-then-two"), later)
    assert "resuming from the run directory's newest checkpoint" in restarted, restarted[-3000:]
    # From the run directory's own checkpoints (step 5 unless rank 1 got further first).
    own = re.findall(r"resumed from \S*one-then-two/checkpoints/step-0*(\d+) ", restarted)
    assert own and int(own[-1]) >= 5, restarted[-3000:]
    assert _summary(tmp_path / "one-then-two")["status"] == "completed"


def test_a_hanging_rank_fails_the_job_within_the_collective_timeout(tmp_path: Path) -> None:
    # Two ranks started as torchrun would start them, without its agent (which would tear the
    # job down itself): rank 1 stops answering after step 2; rank 0 must not wait past 4 s.
    port = _free_port()
    fault = [
        "+callbacks.fault._target_=tests.distributed_helpers.Fault",
        "+callbacks.fault.rank=1", "+callbacks.fault.step=2", "+callbacks.fault.action=hang",
        "backend.collective_timeout_s=4", f"hydra.run.dir={tmp_path / 'run'}",
    ]  # fmt: skip
    world = {"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    command = [sys.executable, "-m", "dualtrain", *RUN, *fault]
    started = time.monotonic()
    rank0, _ = _launch(
        [(command, _env(RANK="0", **world)), (command, _env(RANK="1", **world))],
        cwd=tmp_path,
        timeout=60,
        wait_for=1,  # rank 1 hangs until killed here
    )
    code, output = rank0
    assert code == 1, output[-3000:]
    errors = [line for line in output.splitlines() if line.startswith("dualtrain: error:")]
    assert len(errors) == 1, output[-3000:]
    assert "rank 0 of 2: the gradient all-reduce failed" in errors[0]
    assert "backend.collective_timeout_s=4 s" in errors[0]
    assert "Traceback" not in output
    assert _summary(tmp_path / "run")["status"] == "failed"
    assert time.monotonic() - started < 60


def _tf_config(ports: list[int], index: int) -> str:
    workers = [f"127.0.0.1:{p}" for p in ports]
    return json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})


def _multi_worker(args: list[str], ports: list[int]) -> list[tuple[list[str], dict[str, str]]]:
    command = [sys.executable, "-m", "dualtrain", *args, "backend.strategy=multi_worker"]
    return [(command, _env(TF_CONFIG=_tf_config(ports, i))) for i in range(len(ports))]


def test_tf_multi_worker_matches_one_process_and_resumes_across_world_sizes(
    tmp_path: Path,
) -> None:
    run = ["backend=tf", *RUN]
    two, one = tmp_path / "two", tmp_path / "one"
    # Each worker is told the same run directory (no launcher shares one); only the chief writes.
    results = _launch(
        [
            *_multi_worker(
                [*run, f"hydra.run.dir={two}", *_dump(tmp_path / "w2")],
                [_free_port(), _free_port()],
            ),
            ([sys.executable, "-m", "dualtrain", *run, f"hydra.run.dir={one}"], _env()),
        ],
        cwd=tmp_path,
        timeout=150,
    )
    for result in results:
        _ok(result)
    _assert_same_losses(_losses(two), _losses(one))
    _assert_ranks_equal(tmp_path / "w2", 2)
    summary = _summary(two)
    assert summary["distributed"]["world_size"] == 2
    assert summary["distributed"]["strategy"] == "multi_worker"

    middle = "checkpoints/step-000000004"
    resumed = _launch(
        [
            (
                [
                    sys.executable,
                    "-m",
                    "dualtrain",
                    *run,
                    f"checkpoint.path={two / middle}",
                    f"hydra.run.dir={tmp_path / 'two-then-one'}",
                ],
                _env(),
            ),
            *_multi_worker(
                [
                    *run,
                    f"checkpoint.path={one / middle}",
                    f"hydra.run.dir={tmp_path / 'one-then-two'}",
                ],
                [_free_port(), _free_port()],
            ),
        ],
        cwd=tmp_path,
        timeout=150,
    )
    for result in resumed:
        _ok(result)
    later = {s: v for s, v in _losses(one).items() if s > 4}
    _assert_same_losses(_losses(tmp_path / "two-then-one"), later)
    _assert_same_losses(_losses(tmp_path / "one-then-two"), later)


def test_the_slurm_launcher_config_composes(tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    (result,) = _launch(
        [
            (
                [
                    sys.executable,
                    "-m",
                    "dualtrain",
                    "hydra/launcher=slurm",
                    "hydra.launcher.partition=gpu",
                    "--cfg",
                    "hydra",
                    "-p",
                    "hydra.launcher",
                ],
                _env(),
            )
        ],
        cwd=tmp_path,
        timeout=60,
    )
    output = _ok(result)
    assert "hydra_submitit_launcher.submitit_launcher.SlurmLauncher" in output
    assert "partition: gpu" in output
    assert "tasks_per_node: 1" in output


# The shipped recipe with two named inputs (numbers, and category ids through an Embedding) and
# two named outputs: each global batch of dicts is sharded by sample on both backends.
TWO_TOWERS = [
    "recipe=two_towers",
    f"trainer.max_steps={STEPS}",
    "trainer.log_every_n_steps=1",
    "logger=[jsonl]",
    "logger.progress=false",
]


def test_several_inputs_and_outputs_train_under_torchrun_and_multi_worker(
    tmp_path: Path,
) -> None:
    runs = {name: tmp_path / name for name in ("torchrun", "torch", "multi_worker", "tf")}
    results = _launch(
        [
            ([*TORCHRUN, "-m", "dualtrain", *TWO_TOWERS, f"hydra.run.dir={runs['torchrun']}"],
             _env()),
            ([sys.executable, "-m", "dualtrain", *TWO_TOWERS, f"hydra.run.dir={runs['torch']}"],
             _env()),
            *_multi_worker(
                ["backend=tf", *TWO_TOWERS, f"hydra.run.dir={runs['multi_worker']}"],
                [_free_port(), _free_port()],
            ),
            ([sys.executable, "-m", "dualtrain", "backend=tf", *TWO_TOWERS,
              f"hydra.run.dir={runs['tf']}"], _env()),
        ],
        cwd=tmp_path,
        timeout=180,
    )  # fmt: skip
    for result in results:
        _ok(result)
    _assert_same_losses(_losses(runs["torchrun"]), _losses(runs["torch"]))
    _assert_same_losses(_losses(runs["multi_worker"]), _losses(runs["tf"]))
    for name in ("torchrun", "multi_worker"):
        summary = _summary(runs[name])
        assert summary["distributed"]["world_size"] == 2
        assert set(summary["final"]["val"]) == {"loss", "kind/accuracy", "value/mae"}
