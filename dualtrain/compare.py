"""Runs side by side: `python -m dualtrain.compare RUN_DIR...` and the comparison of every sweep.

For any run directories (of either backend, any recipe), it prints a Markdown table of final
metrics and throughput, and draws their loss and metric curves into one PNG: `--png PATH`, or
comparison.png in `--out DIR` (with comparison.md and .json), beside `--json`, or in the first
directory given. A directory that is not a run itself, such as a multirun sweep directory or a
parity run, stands for the runs under it.

After a multirun (`python -m dualtrain -m backend=torch,tf`), `SweepComparison`, a Hydra
callback set in train.yaml, writes comparison.md, comparison.json and comparison.png into the
sweep directory. Nothing here imports a framework.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from dualtrain.errors import ConfigError, DualtrainError, RunError


@dataclass(frozen=True)
class Run:
    """What a run directory holds: summary.json (may be absent while it runs) and metrics.jsonl."""

    path: Path
    summary: dict[str, Any]
    lines: list[dict[str, Any]]
    overrides: tuple[str, ...]  # from .hydra/overrides.yaml, as the user typed them

    @property
    def backend(self) -> str:
        return str(self.summary.get("backend") or _first(self.lines, "backend") or "?")


def find_runs(paths: list[Path]) -> list[Run]:
    """The runs in `paths`: each a run directory, or a directory with run directories below it.

    Raises:
        ConfigError: for a path that holds no run.
    """
    runs: list[Run] = []
    for path in paths:
        if not path.is_dir():
            raise ConfigError(
                f"{path} is not a directory; give run directories or sweep directories"
            )
        if _is_run(path):
            found = [path]
        else:
            found = sorted((d for d in path.rglob("*") if d.is_dir() and _is_run(d)), key=_natural)
        if not found:
            raise ConfigError(
                f"{path} holds no run (no metrics.jsonl or summary.json in it or below it); give "
                "run directories or sweep directories"
            )
        runs.extend(read_run(d) for d in found)
    return runs


def read_run(path: Path) -> Run:
    summary = _read_json(path / "summary.json") if (path / "summary.json").is_file() else {}
    lines = []
    metrics = path / "metrics.jsonl"
    texts = metrics.read_text(encoding="utf-8").splitlines() if metrics.is_file() else []
    for number, text in enumerate(texts, 1):
        try:
            lines.append(json.loads(text))
        except ValueError as err:
            # A run killed while writing leaves at most a partial last line; skip it.
            if number != len(texts):
                raise RunError(f"{metrics}: line {number} is not JSON") from err
    return Run(path, summary, lines, _overrides(path))


def labels(runs: list[Run]) -> list[str]:
    """What tells the runs apart: the overrides they do not share, else their directory names."""
    common = set.intersection(*(set(r.overrides) for r in runs)) if runs else set()
    names = [" ".join(_short(o) for o in r.overrides if o not in common) for r in runs]
    if len(set(names)) < len(runs) or not all(names):
        names = [str(r.path) for r in runs]
        shared = _common_parent([r.path for r in runs])
        if shared is not None and len(runs) > 1:
            names = [str(r.path.resolve().relative_to(shared)) for r in runs]
    return names


def table(runs: list[Run]) -> list[dict[str, Any]]:
    """One row per run: final val metrics, last train loss, throughput, steps, time, status."""
    rows = []
    for run, label in zip(runs, labels(runs), strict=True):
        final = run.summary.get("final") or {}
        val = final.get("val") or _last(run.lines, "val")
        train = final.get("train") or _last(run.lines, "train")
        row: dict[str, Any] = {
            "run": label,
            "backend": run.backend,
            "recipe": run.summary.get("recipe"),
            "status": run.summary.get("status", "running"),
            "steps": run.summary.get("steps", _last(run.lines, "train").get("step")),
        }
        row.update({f"val/{k}": v for k, v in val.items() if k not in _NOT_METRICS})
        row["train/loss"] = train.get("loss")
        row["samples/s"] = run.summary.get("train_samples_per_sec")
        row["wall s"] = run.summary.get("wall_seconds")
        row["path"] = str(run.path)
        rows.append(row)
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns and c != "path"]
    lines = [
        "| " + " | ".join(columns) + " |",
        "|" + "|".join("---" if c in _TEXT_COLUMNS else "---:" for c in columns) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def plot(runs: list[Run], path: Path) -> None:
    """Train loss, val loss and each val metric against the step, one line per run."""
    from dualtrain.plots import pyplot

    plt = pyplot()
    series = ["train/loss", "val/loss"]
    for run in runs:
        for line in run.lines:
            if line.get("split") == "val":
                new = [f"val/{k}" for k in line if k not in _NOT_METRICS]
                series += [name for name in new if name not in series]
    fig, axes = plt.subplots(1, len(series), figsize=(4.6 * len(series), 3.8), squeeze=False)
    for run, label in zip(runs, labels(runs), strict=True):
        for axis, name in zip(axes[0], series, strict=True):
            split, _, key = name.partition("/")
            points = [
                (line["step"], line[key])
                for line in run.lines
                if line.get("split") == split and key in line
            ]
            if points:
                marker = "." if split == "val" else None
                axis.plot(*zip(*points, strict=True), marker=marker, label=label)
    for axis, name in zip(axes[0], series, strict=True):
        axis.set_title(name)
        axis.set_xlabel("optimizer step")
        if name.endswith("loss"):
            plain_log_y(axis)
    axes[0][0].legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plain_log_y(axis: Any) -> None:
    """A log y axis labelled in plain numbers (0.02, 0.05, 0.1), as many as fit without overlap.

    Labelling every minor tick (2, 3, ... 9 times each power of ten) piles the labels of a decade
    into a few pixels once an axis spans more than a decade. The labels here follow the densest
    series whose closest labels stay apart at this axis's drawn height: all of 1..9, then 1-2-3-5,
    then 1-2-5, then powers of ten alone.
    """
    from matplotlib.ticker import LogLocator

    axis.set_yscale("log")
    axis.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0,)))
    axis.yaxis.set_minor_locator(LogLocator(base=10, subs=tuple(range(2, 10))))
    axis.yaxis.set_major_formatter(_plain_log_labels(major=True))
    axis.yaxis.set_minor_formatter(_plain_log_labels(major=False))


# Label series of a log axis, densest first, with the smallest gap between two of their labels
# in decades: log10(10/9) for 1..9, log10(3/2) for 1-2-3-5, log10(2) for 1-2-5.
_LOG_SERIES = (
    (frozenset(range(1, 10)), math.log10(10 / 9)),
    (frozenset({1, 2, 3, 5}), math.log10(3 / 2)),
    (frozenset({1, 2, 5}), math.log10(2)),
    (frozenset({1}), 1.0),
)


def _plain_log_labels(major: bool) -> Any:
    from matplotlib import rcParams
    from matplotlib.font_manager import FontProperties
    from matplotlib.ticker import Formatter

    class PlainLogLabels(Formatter):
        def __init__(self) -> None:
            self.shown: frozenset[int] = frozenset({1})

        def set_locs(self, locs: Any) -> None:
            # Called before each draw's labels: the axis's current limits and size.
            super().set_locs(locs)
            axis: Any = self.axis
            if axis is None or getattr(axis, "axes", None) is None:  # not drawn on an Axes
                return
            low, high = sorted(axis.get_view_interval())
            decades = math.log10(high / low) if low > 0 and high > low else 1.0
            axes = axis.axes
            height = axes.get_window_extent().height  # pixels, at the drawing's dpi
            points = FontProperties(size=rcParams["ytick.labelsize"]).get_size_in_points()
            label_px = 1.6 * points * axes.figure.dpi / 72
            per_decade = height / max(decades, 1e-9)
            self.shown = next(
                (series for series, gap in _LOG_SERIES if gap * per_decade >= label_px),
                frozenset({1}),
            )

        def __call__(self, value: float, pos: int | None = None) -> str:
            if value <= 0:
                return ""
            exponent = math.floor(math.log10(value) + 1e-9)
            coefficient = round(value / 10.0**exponent)
            if major or coefficient in self.shown:
                return f"{value:g}"
            return ""

    return PlainLogLabels()


def write_comparison(runs: list[Run], directory: Path) -> list[Path]:
    """comparison.md, comparison.json and comparison.png in `directory`; returns their paths."""
    rows = table(runs)
    files = [directory / f"comparison.{ext}" for ext in ("md", "json", "png")]
    files[0].write_text(markdown(rows) + "\n", encoding="utf-8")
    files[1].write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    plot(runs, files[2])
    return files


class SweepComparison(Callback):
    """Hydra callback: after a multirun, compares its jobs in the sweep directory."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        try:
            runs = find_runs([sweep_dir])
            files = write_comparison(runs, sweep_dir)
        except (DualtrainError, OSError, ValueError) as err:
            print(f"dualtrain: warning: no sweep comparison: {err}", file=sys.stderr)
            return
        print(markdown(table(runs)))
        print("comparison: " + ", ".join(str(f) for f in files))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m dualtrain.compare",
        description=(
            "Final metrics and throughput of dualtrain runs, and their curves in a PNG. Without "
            "--png, the PNG goes into --out, else beside --json, else into the first directory "
            "given; never into the working directory unless it is one of those."
        ),
    )
    parser.add_argument("runs", nargs="+", type=Path, help="run directories or sweep directories")
    parser.add_argument(
        "--out",
        type=Path,
        help="write comparison.md, comparison.json and comparison.png into this directory",
    )
    parser.add_argument(
        "--png", type=Path, help="the curves here (default: comparison.png, placed as above)"
    )
    parser.add_argument("--json", type=Path, help="also write the table as JSON here")
    args = parser.parse_args(argv)
    try:
        runs = find_runs(args.runs)
        rows = table(runs)
        print(markdown(rows))
        written = []
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            written = write_comparison(runs, args.out)
        png = args.png or _default_png(args.out, args.json, args.runs[0])
        if png not in written:
            plot(runs, png)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    except DualtrainError as err:
        print(f"dualtrain: error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    if written:
        print("comparison: " + ", ".join(str(f) for f in written))
    print(f"curves: {png}")


def _default_png(out: Path | None, json_path: Path | None, first: Path) -> Path:
    """Where the curves go when --png is not given: with the other files the user asked for, or
    with the runs; the working directory may be the repository or anywhere else."""
    if out is not None:
        return out / "comparison.png"
    if json_path is not None:
        return json_path.parent / "comparison.png"
    return first / "comparison.png"


_TEXT_COLUMNS = ("run", "backend", "recipe", "status")
# Keys of a metrics.jsonl line that are not metric values.
_NOT_METRICS = ("step", "epoch", "split", "backend", "time", "lr", "samples_per_sec")


def _is_run(path: Path) -> bool:
    return (path / "metrics.jsonl").is_file() or (path / "summary.json").is_file()


def _natural(path: Path) -> list[Any]:
    """Sorts sweep job directories 0, 1, 2, ..., 10 rather than 0, 1, 10, 2."""
    return [int(p) if p.isdigit() else p for p in path.parts]


def _overrides(path: Path) -> tuple[str, ...]:
    import yaml

    file = path / ".hydra" / "overrides.yaml"
    if not file.is_file():
        return ()
    content = yaml.safe_load(file.read_text(encoding="utf-8")) or []
    # What parity mode adds to its one-backend runs says nothing about them.
    return tuple(str(o) for o in content if str(o) not in ("mode=parity", "parity.worker=true"))


def _short(override: str) -> str:
    """optimizer.lr=0.0020554062603827007 -> optimizer.lr=0.002055 (sweepers pick long floats)."""
    key, sep, value = override.partition("=")
    try:
        number = float(value)
    except ValueError:
        return override
    return f"{key}{sep}{number:.4g}" if "." in value and len(value) > 8 else override


def _read_json(path: Path) -> dict[str, Any]:
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise RunError(f"{path} is not valid JSON: {err}") from err
    return content if isinstance(content, dict) else {}


def _last(lines: list[dict[str, Any]], split: str) -> dict[str, Any]:
    for line in reversed(lines):
        if line.get("split") == split:
            return line
    return {}


def _first(lines: list[dict[str, Any]], key: str) -> Any:
    return next((line[key] for line in lines if key in line), None)


def _common_parent(paths: list[Path]) -> Path | None:
    resolved = [p.resolve() for p in paths]
    parent = resolved[0].parent
    while not all(p.is_relative_to(parent) for p in resolved):
        if parent == parent.parent:
            return None
        parent = parent.parent
    return parent


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.4g}"
    return str(value)


if __name__ == "__main__":
    main()
