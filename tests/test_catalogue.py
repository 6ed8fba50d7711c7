"""A catalogue of bad inputs: each one ends the run with one line that says what is wrong.

Every case runs `python -m dualtrain` in a new process, in a run directory of its own
(`<tmp>/run`), after writing the files it needs (`<tmp>/files`). For every case:

- the exit code is the expected one (2: a usage or config error, 1: a failure at run time);
- stderr has exactly one line starting `dualtrain: error:`, holding the expected text;
- stderr has no traceback;
- cases not marked `slow` import no framework (torch, tensorflow) before they fail.

To add a case, add a `Case` to `CASES`. To add an assertion for every case, add a function to
`CHECKS`; it receives the case and its `Outcome`. `Case.prepare_run_dir` is the hook for cases
that need something in the run directory before the command runs (e.g. an earlier run whose
files must be left as they were); `Outcome.before` holds what it returned, for a check to
compare with the run directory afterwards.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import REPO
from tests.data_files import write_csv, write_image_folder

Writer = Callable[[Path], Any]  # writes one file (or folder) at the path it is given


@dataclass(frozen=True)
class Case:
    """One bad input: the command line, the files it names, and how the run must end.

    `overrides` may name `{files}`, the folder the `files` are written into.
    """

    id: str
    overrides: tuple[str, ...]
    code: int
    message: str  # a part of the error line
    files: Mapping[str, Writer] = field(default_factory=dict)  # name under {files} -> writer
    slow: bool = False  # imports a framework before it fails (or trains): seconds, not a second
    prepare_run_dir: Callable[[Path], Any] | None = None  # returns what Outcome.before holds


@dataclass(frozen=True)
class Outcome:
    result: subprocess.CompletedProcess[str]
    imported: dict[str, bool]  # framework name -> whether the process imported it
    run_dir: Path
    files: Path
    before: Any = None  # what the case's prepare_run_dir returned


# -- files the cases write ----------------------------------------------------------------------


def _arrays(n: int = 100, classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 4)).astype("float32"), np.arange(n) % classes


def npz(**changes: Any) -> Writer:
    """A .npz of 100 samples of 4 features and 3 classes, with `changes` to its arrays."""

    def write(path: Path) -> None:
        x, y = _arrays()
        arrays: dict[str, Any] = {"x": x, "y": y}
        arrays.update({k: v(x, y) if callable(v) else v for k, v in changes.items()})
        np.savez(path, **{k: v for k, v in arrays.items() if v is not None})

    return write


def text(content: str) -> Writer:
    return lambda path: path.write_text(content)


def truncated_npz(path: Path) -> None:
    npz()(path)
    path.write_bytes(path.read_bytes()[:300])


def with_nan(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x = x.copy()
    x[7, 2] = np.nan
    return x


def csv_with_na(path: Path) -> None:
    write_csv(path, num_rows=60)
    lines = path.read_text().splitlines()
    lines[9] = lines[9].replace(lines[9].split(",")[1], "NA", 1)
    path.write_text("\n".join(lines) + "\n")


def images(classes: int, empty: tuple[str, ...] = ()) -> Writer:
    def write(path: Path) -> None:
        write_image_folder(path, per_class=3, classes=classes)
        for name in empty:
            (path / name).mkdir()

    return write


def empty_class_folders(path: Path) -> None:
    (path / "cats").mkdir(parents=True)
    (path / "dogs").mkdir()


# -- the catalogue -------------------------------------------------------------------------------

MLP = ("recipe=mlp",)
NPZ = (*MLP, "data=npz", "data.path={files}/d.npz")
CSV = (*MLP, "data=csv", "data.path={files}/t.csv", "data.target=kind")
IMAGES = ("data=image_folder", "data.path={files}/images", "data.image_size=[8,8]")

CASES = [
    # Data: features and labels that do not pair up, shapes with nothing in them.
    Case("npz-fewer-labels", NPZ, 1, "has 100 samples of features and 90 labels",
         {"d.npz": npz(y=lambda x, y: y[:90])}),
    Case("npz-fewer-val-labels", NPZ, 1, "has 20 val samples of features and 19 val labels",
         {"d.npz": npz(x_val=lambda x, y: x[:20], y_val=lambda x, y: y[:19])}),
    Case("npz-no-features", NPZ, 1, "samples of shape (0,) with no values",
         {"d.npz": npz(x=np.zeros((100, 0), "float32"))}),
    Case("synthetic-shape-0", (*MLP, "data=synthetic", "data.shape=[0]"), 2,
         "data.shape must be a sample's shape, a list of integers each at least 1"),
    Case("synthetic-num-samples-negative", ("data=synthetic", "data.num_samples=-5"), 2,
         "data.num_samples must be a positive integer"),
    Case("synthetic-num-samples-0", ("data=synthetic", "data.num_samples=0"), 2,
         "data.num_samples must be a positive integer"),
    Case("synthetic-num-samples-too-few", ("data=synthetic", "data.num_samples=5"), 2,
         "data.num_samples=5 is too few to split into train and val"),
    Case("npz-too-few-to-split", NPZ, 1, "has 6 samples of 3 classes: 2 for val and 4 for train",
         {"d.npz": npz(x=lambda x, y: x[:6], y=lambda x, y: y[:6])}),
    # Data: files that are empty, cut short, or of another kind.
    Case("npz-empty", NPZ, 1, "d.npz is empty (0 bytes)", {"d.npz": text("")}),
    Case("npz-truncated", NPZ, 1, "d.npz is a truncated or damaged .npz file",
         {"d.npz": truncated_npz}),
    Case("npz-not-npz", NPZ, 1, "d.npz is not a .npz file", {"d.npz": text("x,y\n1,0\n")}),
    Case("npz-object-array", NPZ, 1, "array x holds Python objects (dtype object)",
         {"d.npz": npz(x=np.array([[1.0], [2]], dtype=object))}),
    Case("npz-missing-arrays", NPZ, 2, "has no array x or y; it has features, labels",
         {"d.npz": npz(x=None, y=None, features=np.zeros((4, 2)), labels=np.zeros(4))}),
    Case("npz-missing-file", (*MLP, "data=npz", "data.path={files}/nope.npz"), 2,
         "nope.npz does not exist; give the path of an existing file or folder"),
    Case("npz-no-path", (*MLP, "data=npz"), 2, "data.path has no value"),
    Case("npz-nan-features", NPZ, 1, "NaN or Inf features, the first at sample 7",
         {"d.npz": npz(x=with_nan)}),
    Case("npz-text-features", NPZ, 1, "features of dtype <U1; expected finite float features",
         {"d.npz": npz(x=np.full((100, 2), "a"))}),
    Case("npz-labels-out-of-range", (*NPZ, "data.num_classes=2"), 1,
         "33 labels outside the class range 0..1, the first at sample 2 (label 2)",
         {"d.npz": npz()}),
    Case("npz-negative-labels", NPZ, 1, "with minimum -1; expected class indices",
         {"d.npz": npz(y=lambda x, y: y - 1)}),
    Case("csv-empty", CSV, 1, "t.csv is empty (0 bytes); expected a CSV file with a header row",
         {"t.csv": text("")}),
    Case("csv-header-only", CSV, 1, "has a header row and no rows below it",
         {"t.csv": text("size,weight,color,kind\n")}),
    Case("csv-short-row", CSV, 1, "line 3 has 2 values for 4 columns",
         {"t.csv": text("size,weight,color,kind\n1,2,red,a\n1,b\n")}),
    Case("csv-missing-target", (*CSV, "data.target=label"), 2,
         "data.target=label is not a column of data.path=", {"t.csv": write_csv}),
    Case("csv-no-target", (*MLP, "data=csv", "data.path={files}/t.csv"), 2,
         "data.target has no value", {"t.csv": write_csv}),
    Case("csv-text-in-a-numeric-column", CSV, 1,
         "column 'weight' holds numbers but 1 rows hold text, the first on line 10 ('NA')",
         {"t.csv": csv_with_na}),
    Case("csv-categorical-bogus", (*CSV, "data.categorical=bogus"), 2,
         "data.categorical must be one of onehot, index", {"t.csv": write_csv}),
    Case("images-one-class", IMAGES, 1, "has 1 class folders; expected one sub-folder",
         {"images": images(classes=1)}),
    Case("images-none", IMAGES, 1, "has no image files", {"images": empty_class_folders}),
    Case("images-an-empty-class", IMAGES, 1, "has class folders with no image files",
         {"images": images(classes=2, empty=("purple",))}),
    Case("images-size-0", (*IMAGES, "data.image_size=[0,0]"), 2,
         "data.image_size must be [height, width] in pixels", {"images": images(classes=2)}),
    Case("images-color-mode", (*IMAGES, "data.color_mode=cmyk"), 2,
         "data.color_mode must be one of rgb, grayscale", {"images": images(classes=2)}),
    Case("python-no-module", ("data=python", "data.source=no_such_module:load"), 2,
         "cannot find the Python module 'no_such_module'"),
    Case("python-no-source", ("data=python",), 2, "data.source has no value"),
    # Config values.
    Case("max-epochs-negative", ("trainer.max_epochs=-1",), 2,
         "trainer.max_epochs must be a positive integer; got -1"),
    Case("max-epochs-0", ("trainer.max_epochs=0",), 2, "trainer.max_epochs must be a positive"),
    Case("max-steps-text", ("trainer.max_steps=abc",), 2, "trainer.max_steps must be an integer"),
    Case("lr-text", ("optimizer.lr=abc",), 2, "optimizer.lr must be a positive number"),
    Case("lr-negative", ("optimizer.lr=-1",), 2, "optimizer.lr must be a positive number"),
    Case("optimizer-unknown", ("optimizer=nope",), 2, "optimizer=nope: no such option"),
    Case("backend-jax", ("backend=jax",), 2, "backend=jax: no such option; choose one of tf"),
    Case("backend-name-jax", ("backend.name=jax",), 2, "backend must be one of torch, tf"),
    Case("recipe-unknown", ("recipe=nope",), 2, "recipe=nope: no such option"),
    Case("mode-unknown", ("mode=nope",), 2, "mode must be one of train, eval, export, parity"),
    Case("seed-text", ("seed=abc",), 2, "seed must be an integer >= 0"),
    Case("batch-size-0", ("data.batch_size=0",), 2, "data.batch_size must be a positive integer"),
    Case("batch-size-text", ("data.batch_size=abc",), 2, "data.batch_size must be a positive"),
    Case("val-fraction-1.5", ("data.val_fraction=1.5",), 2, "data.val_fraction must be a number"),
    Case("val-fraction-0", ("data.val_fraction=0",), 2, "data.val_fraction must be a number"),
    Case("num-workers-negative", ("data.num_workers=-1",), 2, "data.num_workers must be"),
    Case("num-classes-1", ("data=synthetic", "data.num_classes=1"), 2,
         "data.num_classes must be an integer >= 2"),
    Case("log-every-0", ("trainer.log_every_n_steps=0",), 2, "trainer.log_every_n_steps must be"),
    Case("grad-clip-negative", ("trainer.grad_clip_norm=-1",), 2, "trainer.grad_clip_norm must"),
    Case("on-nonfinite-unknown", ("trainer.on_nonfinite=ignore",), 2,
         "trainer.on_nonfinite must be one of stop, skip"),
    Case("unknown-key", ("foo=1",), 2, "the config has no key foo"),
    Case("checkpoint-path-missing", ("checkpoint.path={files}/nope",), 2,
         "nope does not exist; give a run directory or a checkpoint directory"),
    Case("init-from-missing", ("init_from={files}/nope",), 2,
         "nope does not exist; give a run directory or a checkpoint directory"),
    # Found only once a framework is imported.
    Case("npz-fewer-labels-on-tf", (*NPZ, "backend=tf"), 1,
         "has 100 samples of features and 90 labels", {"d.npz": npz(y=lambda x, y: y[:90])},
         slow=True),
    Case("model-does-not-fit-the-data", ("recipe=cnn", "data=synthetic", "data.shape=[4]",
         "data.num_samples=64"), 1, "recipe cnn takes images of shape (height, width, channels)",
         slow=True),
]  # fmt: skip


# -- running a case ------------------------------------------------------------------------------

# Runs the CLI in this interpreter and records which frameworks the process imported by the time
# it exits: the error line is written by then.
_PROBE = """
import json, os, sys
sys.argv = ["dualtrain", *json.loads(sys.argv[1])]
code = 0
try:
    from dualtrain.cli import main
    main()
except SystemExit as exit:
    code = exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1)
finally:
    with open(os.environ["CATALOGUE_PROBE_OUT"], "w") as f:
        json.dump({name: name in sys.modules for name in ("torch", "tensorflow")}, f)
sys.exit(code)
"""


@pytest.fixture
def run_case(tmp_path: Path) -> Callable[[Case], Outcome]:
    """Runs a case's command line with one OpenMP thread (the test machines are shared)."""

    def run(case: Case) -> Outcome:
        files = tmp_path / "files"
        files.mkdir()
        for name, write in case.files.items():
            write(files / name)
        run_dir = tmp_path / "run"
        before = case.prepare_run_dir(run_dir) if case.prepare_run_dir else None
        args = [arg.format(files=files) for arg in case.overrides]
        probe = tmp_path / "probe.json"
        result = subprocess.run(
            [sys.executable, "-c", _PROBE,
             json.dumps([*args, "logger.progress=false", f"hydra.run.dir={run_dir}"])],
            cwd=REPO,
            env={**os.environ, "OMP_NUM_THREADS": "1", "CATALOGUE_PROBE_OUT": str(probe)},
            capture_output=True,
            text=True,
            timeout=300,
        )  # fmt: skip
        imported = json.loads(probe.read_text()) if probe.is_file() else {}
        return Outcome(result, imported, run_dir, files, before)

    return run


def check_exit_code(case: Case, outcome: Outcome) -> None:
    assert outcome.result.returncode == case.code, outcome.result.stderr


def check_one_error_line(case: Case, outcome: Outcome) -> None:
    stderr = outcome.result.stderr
    lines = [line for line in stderr.splitlines() if line.startswith("dualtrain: error:")]
    assert len(lines) == 1, stderr
    assert case.message.format(files=outcome.files) in lines[0], stderr


def check_no_traceback(case: Case, outcome: Outcome) -> None:
    assert "Traceback" not in outcome.result.stderr, outcome.result.stderr


def check_no_framework_imported(case: Case, outcome: Outcome) -> None:
    if not case.slow:
        assert outcome.imported == {"torch": False, "tensorflow": False}, outcome.imported


CHECKS: list[Callable[[Case, Outcome], None]] = [
    check_exit_code,
    check_one_error_line,
    check_no_traceback,
    check_no_framework_imported,
]


def test_case_ids_are_unique() -> None:
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize(
    "case",
    [pytest.param(c, id=c.id, marks=[pytest.mark.slow] if c.slow else []) for c in CASES],
)
def test_a_bad_input_ends_the_run_with_one_line(
    case: Case, run_case: Callable[[Case], Outcome]
) -> None:
    outcome = run_case(case)
    for check in CHECKS:
        check(case, outcome)
