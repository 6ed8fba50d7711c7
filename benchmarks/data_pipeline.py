"""Does the image pipeline keep up? An image_folder run against the same images already in memory.

Writes a folder of JPEG images (two classes, several sizes, decoded and resized to
`--size` square on every read), and the same images decoded once into a .npz file. Then trains the
cnn recipe on both, on each backend, each run in its own process:

- `folder`: `data=image_folder` (torch: `data.num_workers` DataLoader worker processes decode;
  tf: tf.data's parallel map decodes), the files read and decoded again every epoch;
- `memory`: `data=npz` with the decoded arrays (the same samples, split and batch order).

It reports each run's steady-state `train_samples_per_sec` (summary.json: epochs after the
first) and the ratio folder / memory per backend: 1.0 means decoding is hidden behind training.

Usage, from the repository root:

    python benchmarks/data_pipeline.py [--images 2000] [--size 64] [--epochs 3] [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "data_pipeline.json"
BACKENDS = ("torch", "tf")


def write_images(root: Path, count: int, seed: int = 0) -> None:
    """count JPEGs in root/<class>/ (red-ish and green-ish noise, 80-128 px a side)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(count):
        label = i % 2
        h, w = (int(s) for s in rng.integers(80, 129, size=2))
        pixels = rng.integers(0, 90, size=(h, w, 3))
        pixels[..., label] += 150
        folder = root / ("red", "green")[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels.astype("uint8")).save(folder / f"{i:05d}.jpg", quality=90)


def write_decoded(root: Path, size: int, out: Path) -> float:
    """The folder's images as image_folder decodes them, in its order, into one .npz; returns
    how many images a second one process decodes (read, decode, resize), for scale."""
    from dualtrain.data.images import image_folder

    data = image_folder(str(root), seed=0, image_size=(size, size))
    started = time.perf_counter()
    x = data.x[:]
    rate = len(x) / (time.perf_counter() - started)
    np.savez(out, x=x, y=data.y)
    return rate


def run(backend: str, kind: str, data: list[str], epochs: int, workers: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as run_dir:
        command = [
            sys.executable, "-m", "dualtrain", "recipe=cnn", f"backend={backend}", *data,
            f"trainer.max_epochs={epochs}", "logger.progress=false", "logger=[jsonl]",
            "checkpoint.every_n_epochs=0", f"hydra.run.dir={run_dir}",
        ]  # fmt: skip
        if kind == "folder":
            command.append(f"data.num_workers={workers}")
        started = time.perf_counter()
        subprocess.run(command, cwd=REPO_ROOT, check=True, capture_output=True, timeout=1800)
        wall = time.perf_counter() - started
        summary: dict[str, Any] = json.loads((Path(run_dir) / "summary.json").read_text())
    return {
        "backend": backend,
        "data": kind,
        "train_samples_per_sec": summary["train_samples_per_sec"],
        "train_seconds": summary["train_seconds"],
        "process_seconds": round(wall, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=64, help="data.image_size, square")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2, help="torch DataLoader workers")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder, decoded = Path(tmp) / "images", Path(tmp) / "decoded.npz"
        write_images(folder, args.images)
        decode_rate = write_decoded(folder, args.size, decoded)
        print(f"one process decodes {decode_rate:,.0f} images/s", file=sys.stderr)
        sources = {
            "folder": ["data=image_folder", f"data.path={folder}",
                       f"data.image_size=[{args.size},{args.size}]"],
            "memory": ["data=npz", f"data.path={decoded}"],
        }  # fmt: skip
        runs = []
        for round_ in range(args.repeats):
            for backend in BACKENDS:
                for kind, data in sources.items():
                    result = run(backend, kind, data, args.epochs, args.workers)
                    runs.append({"round": round_, **result})
                    print(json.dumps(runs[-1]), file=sys.stderr)

    rows = []
    for backend in BACKENDS:
        speed = {
            kind: statistics.median(
                r["train_samples_per_sec"]
                for r in runs
                if (r["backend"], r["data"]) == (backend, kind)
            )
            for kind in sources
        }
        rows.append(
            {"backend": backend, **{f"{k}_samples_per_sec": v for k, v in speed.items()},
             "folder_over_memory": speed["folder"] / speed["memory"]}
        )  # fmt: skip
    print("| backend | folder samples/s | in-memory samples/s | folder / in-memory |")
    print("|---|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['backend']} | {row['folder_samples_per_sec']:,.0f} | "
            f"{row['memory_samples_per_sec']:,.0f} | {row['folder_over_memory']:.2f}x |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    config = {k: v for k, v in vars(args).items() if k != "out"}
    load = os.getloadavg()
    args.out.write_text(
        json.dumps(
            {"config": config, "load_average": load, "summary": rows, "runs": runs}, indent=2
        )
        + "\n"
    )
    print(f"load average {load[0]:.1f}; wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
