"""Writes docs/summary.md's table: every shipped recipe's parameters and FLOPs on both backends.

    python scripts/flops_table.py [--dry-run]

Runs `python -m dualtrain.model_summary torch` and `... tf` side by side (one process per
backend: Keras fixes its backend per process) and replaces the block between
`<!-- figures:start flops -->` and `<!-- figures:end flops -->` in docs/summary.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from readme_figures import rewrite  # scripts/ is not a package

REPO = Path(__file__).resolve().parents[1]
BACKENDS = ("torch", "tf")


def summaries() -> dict[str, dict[str, Any]]:
    """backend -> recipe -> its model summary."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    procs = {
        backend: subprocess.Popen(
            [sys.executable, "-m", "dualtrain.model_summary", backend],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for backend in BACKENDS
    }
    out = {}
    for backend, proc in procs.items():
        stdout, stderr = proc.communicate()
        if proc.returncode != 0:
            sys.exit(f"flops_table: the {backend} process failed:\n{stderr[-3000:]}")
        out[backend] = json.loads(stdout.splitlines()[-1])
    return out


def table(counted: dict[str, dict[str, Any]]) -> str:
    rows = [
        "| recipe | parameters (trainable + not) | forward, torch | forward, tf "
        "| train step, torch | train step, tf | largest difference |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for recipe, model in counted["torch"].items():
        flops = {b: counted[b][recipe]["flops_per_sample"] for b in BACKENDS}
        pairs = [(flops["torch"][w], flops["tf"][w]) for w in ("forward", "train_step")]
        difference = max(abs(a - b) / min(a, b) for a, b in pairs)
        params = f"{model['trainable_params']:,} + {model['non_trainable_params']:,}"
        cells = [f"{n:,.0f}" for pair in pairs for n in pair]
        rows.append(f"| `{recipe}` | {params} | {' | '.join(cells)} | {100 * difference:.1f}% |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="print the table; write nothing")
    args = parser.parse_args()
    block = table(summaries())
    if args.dry_run:
        print(block)
        return
    doc = REPO / "docs" / "summary.md"
    doc.write_text(rewrite(doc.read_text(encoding="utf-8"), {"flops": block}), encoding="utf-8")
    print(block)


if __name__ == "__main__":
    main()
