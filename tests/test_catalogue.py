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

import dataclasses
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import probe_cli
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
    message: str | tuple[str, ...]  # a part of the error line, or several parts
    files: Mapping[str, Writer] = field(default_factory=dict)  # name under {files} -> writer
    slow: bool = False  # imports a framework before it fails (or trains): seconds, not a second
    prepare_run_dir: Callable[[Path], Any] | None = None  # returns what Outcome.before holds

    @property
    def names_run_dir(self) -> bool:
        return any(arg.startswith("hydra.run.dir=") for arg in self.overrides)


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


def user_recipe(content: str) -> Writer:
    """A user's config directory with `recipe/mine.yaml`."""

    def write(path: Path) -> None:
        (path / "recipe").mkdir(parents=True)
        (path / "recipe" / "mine.yaml").write_text(content)

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
    Case("npz-text-features", NPZ, 1, "features of dtype <U1; expected numbers: finite floats",
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
    # Mistakes that Hydra meets: overrides, keys, group options, options, YAML, the run dir.
    Case("key-unknown-in-group", ("trainer.foo=1",), 2,
         ("trainer has no key foo; its keys:", "max_epochs")),
    Case("key-unknown-added", ("+trainer.foo=1",), 2, "trainer has no key foo"),
    Case("key-near-miss", ("trainer.epochs=3",), 2, "did you mean trainer.max_epochs?"),
    Case("key-near-miss-added", ("+trainer.max_epoch=5",), 2,
         ("has no key max_epoch", "did you mean trainer.max_epochs?")),
    Case("key-near-miss-backend", ("+backend.jit=true",), 2,
         ("backend has no key jit", "did you mean backend.jit_compile?")),
    Case("key-near-miss-logger", ("+logger.tensorbord=true",), 2,
         "did you mean logger.tensorboard?"),
    Case("mlflow-key-unknown", ("logger=[jsonl,mlflow]", "+logger.mlflow.tracking_url=x"), 2,
         "logger.mlflow has no key tracking_url; its keys: tracking_uri, experiment"),
    Case("logger-target-unknown", ("+logger.mine={{_target_:nowhere.Mine}}",), 2,
         "logger.mine._target_=nowhere.Mine cannot be imported; give a dotted path to a Logger"),
    Case("key-near-miss-checkpoint", ("+checkpoint.every_n_epoch=2",), 2,
         "did you mean checkpoint.every_n_epochs?"),
    Case("key-near-miss-parity", ("+parity.step=3",), 2, "did you mean parity.steps?"),
    Case("key-near-miss-export", ("+export.format=[onnx]",), 2, "did you mean export.formats?"),
    Case("key-near-miss-recipe", ("+recipe.modle={{}}",), 2,
         ("recipe has no key modle", "did you mean recipe.model?")),
    Case("key-near-miss-scheduler", ("scheduler=cosine", "+scheduler.warmup=3"), 2,
         "did you mean scheduler.warmup_steps?"),
    Case("key-near-miss-top-level", ("+sed=3",), 2,
         ("the config has no key sed", "did you mean seed?")),
    Case("optimizer-key-added", ("+optimizer.betaa=0.9",), 2,
         ("optimizer=adam has no key betaa", "optimizer.beta_1")),
    Case("optimizer-key", ("optimizer.betaa=0.9",), 2,
         ("optimizer has no key betaa", "did you mean optimizer.beta_1")),
    Case("optimizer-key-of-another", ("+optimizer.momentum=0.9",), 2,
         "optimizer=adam has no key momentum"),
    Case("optimizer-key-sgd", ("optimizer=sgd", "+optimizer.nestrov=true"), 2,
         "did you mean optimizer.nesterov?"),
    Case("optimizer-key-set-by-dualtrain", ("+optimizer.learning_rate=0.1",), 2,
         "optimizer.learning_rate is set from optimizer.lr"),
    Case("passed-on-key-without-plus-optimizer", ("optimizer.weight_decay=0.1",), 2,
         "add it with +optimizer.weight_decay=0.1"),
    Case("passed-on-key-without-plus-data", ("data.noise=2",), 2, "add it with +data.noise=2"),
    Case("passed-on-key-without-plus-model", ("recipe.model.width=3",), 2,
         "add it with +recipe.model.width=3"),
    Case("plus-on-a-known-key", ("+trainer.max_epochs=3",), 2,
         "already in the config; change it without +: trainer.max_"),
    Case("delete-unknown-key", ("~trainer.foo",), 2,
         "cannot delete trainer.foo: trainer has no key foo"),
    Case("override-without-value", ("trainer.max_epochs",), 2,
         "has no value; write trainer.max_epochs=<value>"),
    Case("override-without-key", ("=3",), 2, "the override '=3' names no key; write key=value"),
    Case("override-unparsable", ("a=[1,",), 2,
         ("cannot parse the override 'a=[1,'", "write key=value")),
    Case("group-option-near-miss", ("recipe=cnnn",), 2,
         ("recipe=cnnn: no such option; choose one of", "mean recipe=cnn?")),
    Case("group-option-unknown", ("backend=mxnet",), 2,
         "backend=mxnet: no such option; choose one of tf, torch"),
    Case("group-option-in-multirun", ("-m", "recipe=cnnn"), 2, "did you mean recipe=cnn?"),
    Case("optional-group-option", ("debug=fast_dev_rn",), 2,
         ("debug=fast_dev_rn: no such option", "mean debug=fast_dev_run?")),
    Case("optional-group-option-search", ("hparams_search=cnn_optun",), 2,
         "did you mean hparams_search=cnn_optuna?"),
    Case("option-unknown", ("--foo",), 2, ("unrecognized arguments: --foo", "--help")),
    Case("options-that-exclude", ("--cfg", "job", "-m"), 2,
         "Only one of --run, --multirun, --cfg"),
    Case("config-dir-missing", ("--config-dir", "{files}/nowhere"), 2,
         "nowhere' not found; give --config-dir a directory"),
    Case("hydra-value", ("hydra.job.chdir=maybe",), 2,
         "cannot set hydra.job.chdir=maybe: Value 'maybe' is not a"),
    Case("interpolation-missing", ("backend.name=${{oops}}",), 2,
         "cannot be resolved: Interpolation key 'oops' not found"),
    Case("run-dir-not-creatable", ("hydra.run.dir=/proc/dualtrain/x",), 2,
         ("cannot write the run dir", "hydra.run.dir=<dir>")),
    Case("run-dir-under-a-file", ("hydra.run.dir={files}/file/run",), 2,
         ("Not a directory", "hydra.run.dir=<dir>"), {"file": text("")}),
    Case("user-yaml-syntax", ("--config-dir", "{files}/user", "recipe=mine"), 2,
         "mine.yaml, line 3, column 6: invalid YAML",
         {"user": user_recipe("name: mine\nmodule: x\n  bad: [1\n")}),
    Case("user-yaml-python-tag", ("--config-dir", "{files}/user", "recipe=mine"), 2,
         "the YAML tag !!python/name:os.system is not allowed",
         {"user": user_recipe("# @package _global_\nrecipe:\n  name: !!python/name:os.system\n"
                              "  module: x\n")}),
    # Found only once a framework is imported.
    Case("npz-fewer-labels-on-tf", (*NPZ, "backend=tf"), 1,
         "has 100 samples of features and 90 labels", {"d.npz": npz(y=lambda x, y: y[:90])},
         slow=True),
    Case("labels-of-one-class", NPZ, 1, "the labels hold 1 class; a classifier needs at least two",
         {"d.npz": npz(y=lambda x, y: np.zeros_like(y))}, slow=True),
    Case("model-does-not-fit-the-data", ("recipe=cnn", "data=synthetic", "data.shape=[4]",
         "data.num_samples=64"), 1, "recipe cnn takes images of shape (height, width, channels)",
         slow=True),
]  # fmt: skip


# -- running a case ------------------------------------------------------------------------------


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
        if not case.names_run_dir:
            args.append(f"hydra.run.dir={run_dir}")
        result, probed = probe_cli(
            *args, "logger.progress=false", tmp_path=tmp_path, env={"OMP_NUM_THREADS": "1"}
        )
        imported = {name: probed[name] for name in ("torch", "tensorflow") if name in probed}
        return Outcome(result, imported, run_dir, files, before)

    return run


def check_exit_code(case: Case, outcome: Outcome) -> None:
    assert outcome.result.returncode == case.code, outcome.result.stderr


def check_one_error_line(case: Case, outcome: Outcome) -> None:
    stderr = outcome.result.stderr
    lines = [line for line in stderr.splitlines() if line.startswith("dualtrain: error:")]
    assert len(lines) == 1, stderr
    messages = (case.message,) if isinstance(case.message, str) else case.message
    for message in messages:
        assert message.format(files=outcome.files) in lines[0], stderr


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
    assert set(PYTHON_CASES) <= set(ids)  # the cases run from Python, below


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


# -- an earlier run in the same directory -------------------------------------------------------


def earlier_run(run_dir: Path) -> dict[str, bytes]:
    """Writes what a finished run leaves in its directory; returns a snapshot of it."""
    step = run_dir / "checkpoints" / "step-000000010"
    step.mkdir(parents=True)
    np.savez(step / "model.npz", **{"dense/kernel": np.ones((2, 2), "float32")})
    np.savez(step / "optimizer.npz", **{"adam/iteration": np.array(10)})
    (step / "trainer.json").write_text('{"format": "dualtrain-checkpoint/1", "step": 10}\n')
    (run_dir / "checkpoints" / "last").symlink_to(step.name)
    (run_dir / ".hydra").mkdir()
    (run_dir / ".hydra" / "config.yaml").write_text("seed: 0\n")
    (run_dir / ".hydra" / "overrides.yaml").write_text("[]\n")
    (run_dir / "metrics.jsonl").write_text('{"step": 10, "split": "train", "loss": 0.5}\n')
    (run_dir / "summary.json").write_text('{"status": "completed", "steps": 10}\n')
    (run_dir / "dualtrain.log").write_text("[INFO] - training\n")
    return snapshot(run_dir)


def snapshot(run_dir: Path) -> dict[str, bytes]:
    """Every file under `run_dir` with its bytes (a symlink: its target); not the lock file,
    which a live run holds and whose content names it."""
    files = {}
    for path in sorted(run_dir.rglob("*")):
        if path.is_symlink():
            files[str(path.relative_to(run_dir))] = str(path.readlink()).encode()
        elif path.is_file() and path.name != ".dualtrain.lock":
            files[str(path.relative_to(run_dir))] = path.read_bytes()
    return files


# The full suite only (about a second a case): the fast tier (`scripts/test --fast`) runs each
# fast case once, in the test above; both variants of every case would take it past 3 minutes.
@pytest.mark.slow
@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES if not c.names_run_dir])
def test_a_bad_input_leaves_an_earlier_run_as_it_was(
    case: Case, run_case: Callable[[Case], Outcome]
) -> None:
    """The same mistakes made in a directory that holds an earlier run: each still ends with
    one line (its own, or that the directory holds an earlier run), and not one of the earlier
    run's files is changed, added to or removed."""
    outcome = run_case(dataclasses.replace(case, prepare_run_dir=earlier_run))
    stderr = outcome.result.stderr
    lines = [line for line in stderr.splitlines() if line.startswith("dualtrain: error:")]
    assert len(lines) == 1, outcome.result.stderr
    check_no_traceback(case, outcome)
    refused = "holds an earlier run" in lines[0]
    assert outcome.result.returncode == (2 if refused else case.code), outcome.result.stderr
    assert snapshot(outcome.run_dir) == outcome.before


def test_the_catalogue_is_large_enough() -> None:
    assert len(CASES) >= 80


# -- the same mistakes from Python ----------------------------------------------------------------


# One case of each way a config mistake is found before a run starts (Hydra's parser, its
# options and keys, dualtrain's checks of the override, of the values, of the rules between keys).
# Those found once the run has started (a data source's) are the command line's own code.
PYTHON_CASES = (
    "override-unparsable", "override-without-value", "override-without-key",
    "group-option-near-miss", "optional-group-option", "key-near-miss-added",
    "passed-on-key-without-plus-data", "optimizer-key-set-by-dualtrain", "interpolation-missing",
    "hydra-value", "lr-negative", "mode-unknown", "checkpoint-path-missing",
)  # fmt: skip


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES if c.id in PYTHON_CASES])
def test_a_config_mistake_raises_the_command_lines_line_from_python(
    case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """dualtrain.fit raises the command line's line as a ConfigError (docs/notebook.md)."""
    import dualtrain
    from dualtrain import api, cli

    def reached(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the mistake was not found before the run")

    monkeypatch.setattr(cli, "run", reached)  # nothing trains, here or in a new process
    monkeypatch.setattr(api, "_run_in_new_process", reached)
    files = tmp_path / "files"
    overrides = [arg.format(files=files) for arg in case.overrides]
    with pytest.raises(dualtrain.ConfigError) as raised:
        dualtrain.fit(overrides=overrides, run_dir=tmp_path / "run")
    for message in (case.message,) if isinstance(case.message, str) else case.message:
        assert message.format(files=files) in str(raised.value)
