"""Where a dualtrain torch step's time goes, and what bounds its MFU.

    python benchmarks/step_profile.py --workload W1 --threads 1 --steps 30

Trains one of the benchmark workloads (workloads.py) with dualtrain's torch engine in this process,
as `python -m dualtrain recipe=bench_*` runs it (the whole step as one captured graph), then:
- counts the FLOPs of one step as dualtrain's model summary does (torch's own counter,
  `torch.utils.flop_counter`, over the forward pass and the gradients: docs/summary.md);
- measures the fp32 matmul rate with the same threads, interleaved with the timed steps;
- profiles the same steps again with `torch.profiler` and splits the kernels' time into the ops
  that do the FLOPs (convolutions, matmuls, forward and backward; their time includes the ops
  they call) and the ops that only move memory (pooling, activations and their backward,
  copies, sums).
Prints the step's MFU (FLOPs per second over the matmul rate), the FLOP ops' own rate, and each
op's share of the time. The MFU ceiling if every FLOP op ran at the matmul rate and the memory ops
took no time is 100%; this shows how far each of the two is from that.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from workloads import WORKLOADS

# The ATen ops that do a step's FLOPs (as torch's FLOP counter counts them).
FLOP_OPS = (
    "aten::mkldnn_convolution",
    "aten::convolution_backward",
    "aten::mm",
    "aten::addmm",
    "aten::bmm",
    "aten::baddbmm",
    "aten::_scaled_dot_product_flash_attention_for_cpu",
    "aten::_scaled_dot_product_flash_attention_for_cpu_backward",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="W1", choices=sorted(WORKLOADS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--out", type=Path, default=None, help="also write the result as JSON")
    args = parser.parse_args()
    os.environ["KERAS_BACKEND"] = "torch"
    result = profile(WORKLOADS[args.workload], args.threads, args.steps)
    print(report(result))
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2))


def _engine(workload: Any, run_dir: Path) -> Any:
    from hydra import compose, initialize_config_module

    from dualtrain.cli import settings_from_config
    from dualtrain.data import load_data
    from dualtrain.engines import engine_class, select_backend
    from dualtrain.recipe import load_recipe

    select_backend("torch")
    shape = ",".join(str(n) for n in workload.shape)
    with initialize_config_module("dualtrain.configs", version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[f"recipe={workload.recipe}", "backend=torch", f"data.shape=[{shape}]"],
        )
    settings = settings_from_config(cfg, run_dir)
    data = load_data(settings.data, settings.seed)
    return engine_class("torch")(settings, load_recipe(settings.recipe), data)


def matmul_rate(torch: Any, size: int = 1024, repeats: int = 8) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2 * size**3 / (time.perf_counter() - start))
    return best


def profile(workload: Any, threads: int, steps: int) -> dict[str, Any]:
    import tempfile

    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as run_dir:
        engine = _engine(workload, Path(run_dir))
    batches = list(engine.train_batches(0))
    for batch in batches[:3]:  # the first step captures the graphs
        engine.train_step([batch])
    engine.train_metrics()
    # The step's FLOPs as dualtrain's model summary counts them (docs/summary.md), per sample.
    counted = engine.model_summary()["flops_per_sample"]
    size = engine.batch_size(batches[3])
    flops = {op: round(n * size) for op, n in counted["by_op"]["train_step"].items()}
    step_flops = round(counted["train_step"] * size)

    # Timed steps in bursts of ten, each followed by a matmul burst: both see the same machine.
    def step(i: int) -> None:
        engine.train_step([batches[4 + i % (len(batches) - 4)]])

    rates, seconds = [], 0.0
    for i in range(steps):
        start = time.perf_counter()
        step(i)
        seconds += time.perf_counter() - start
        if i % 10 == 9 or i == steps - 1:
            rates.append(matmul_rate(torch))
    matmul = max(rates)
    # Then the same steps again under the profiler, for where the time goes.
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(steps):
            step(i)
    engine.train_metrics()
    ops: collections.Counter[str] = collections.Counter()
    flop_seconds = 0.0
    for event in prof.key_averages():
        if event.key.startswith("aten::"):
            ops[event.key] += event.self_cpu_time_total / 1e6 / steps  # seconds per step
        if event.key in FLOP_OPS:
            flop_seconds += event.cpu_time_total / 1e6 / steps
    per_step = seconds / steps
    return {
        "workload": workload.name,
        "threads": threads,
        "steps": steps,
        "step_seconds": per_step,
        "step_flops": step_flops,
        "flops_by_op": flops,
        "matmul_flops_per_second": matmul,
        "mfu": step_flops / per_step / matmul,
        "flop_ops_seconds": flop_seconds,
        "flop_ops_rate_over_matmul": step_flops / flop_seconds / matmul if flop_seconds else None,
        "profiled_seconds": sum(ops.values()),
        "ops": dict(ops.most_common(16)),
        "whole_step_graph": bool(engine.step_capture().get("whole_step")),
    }


def report(result: dict[str, Any]) -> str:
    step, profiled = result["step_seconds"], result["profiled_seconds"]
    lines = [
        f"{result['workload']}, {result['threads']} thread(s), {result['steps']} steps; "
        f"whole step as one graph: {result['whole_step_graph']}",
        f"step: {step * 1e3:.1f} ms, {result['step_flops'] / 1e9:.3f} GFLOP "
        f"({', '.join(f'{k} {v / 1e9:.3f}' for k, v in result['flops_by_op'].items())})",
        f"matmul rate: {result['matmul_flops_per_second'] / 1e9:.1f} GFLOP/s; "
        f"MFU {100 * result['mfu']:.1f}%",
        f"FLOP ops: {100 * result['flop_ops_seconds'] / profiled:.1f}% of the kernels' time, at "
        f"{100 * (result['flop_ops_rate_over_matmul'] or 0):.1f}% of the matmul rate; the rest "
        "moves memory (no FLOPs)",
        "",
        "| op | ms/step | share |",
        "|---|---:|---:|",
    ]
    for op, seconds in result["ops"].items():
        kind = " (FLOPs)" if op in FLOP_OPS else ""
        lines.append(f"| `{op}`{kind} | {seconds * 1e3:.2f} | {100 * seconds / profiled:.1f}% |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
