"""Mistakes that Hydra meets (bad overrides, unknown keys and options, broken YAML, a run directory
that cannot be made) end like dualtrain's own: one `dualtrain: error:` line, exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dualtrain.settings import OPTIMIZER_KWARGS, OPTIMIZER_KWARGS_SET_BY
from tests.conftest import REPO, probe_cli, run_cli


def _user_dir(tmp_path: Path, text: str) -> Path:
    user = tmp_path / "user"
    (user / "recipe").mkdir(parents=True)
    (user / "recipe" / "mine.yaml").write_text(text)
    return user


# (arguments, exit code, texts the one line holds); {tmp} is the test's tmp_path.
CASES = [
    ("trainer.foo=1", 2, ["trainer has no key foo; its keys:", "max_epochs"]),
    ("+trainer.foo=1", 2, ["trainer has no key foo"]),
    ("trainer.epochs=3", 2, ["did you mean trainer.max_epochs?"]),
    ("+trainer.max_epoch=5", 2, ["has no key max_epoch", "did you mean trainer.max_epochs?"]),
    ("+backend.jit=true", 2, ["backend has no key jit", "did you mean backend.jit_compile?"]),
    ("+logger.tensorbord=true", 2, ["did you mean logger.tensorboard?"]),
    ("+checkpoint.every_n_epoch=2", 2, ["did you mean checkpoint.every_n_epochs?"]),
    ("+parity.step=3", 2, ["did you mean parity.steps?"]),
    ("+export.format=[onnx]", 2, ["did you mean export.formats?"]),
    ("+recipe.modle={}", 2, ["recipe has no key modle", "did you mean recipe.model?"]),
    ("scheduler=cosine +scheduler.warmup=3", 2, ["did you mean scheduler.warmup_steps?"]),
    ("+sed=3", 2, ["the config has no key sed", "did you mean seed?"]),
    ("foo=1", 2, ["the config has no key foo"]),
    ("+optimizer.betaa=0.9", 2, ["optimizer=adam has no key betaa", "optimizer.beta_1"]),
    ("optimizer.betaa=0.9", 2, ["optimizer has no key betaa", "did you mean optimizer.beta_1"]),
    ("+optimizer.momentum=0.9", 2, ["optimizer=adam has no key momentum"]),
    ("optimizer=sgd +optimizer.nestrov=true", 2, ["did you mean optimizer.nesterov?"]),
    ("+optimizer.learning_rate=0.1", 2, ["optimizer.learning_rate is set from optimizer.lr"]),
    # A section that passes its keys on: Hydra needs them added with +, and says so.
    ("optimizer.weight_decay=0.1", 2, ["add it with +optimizer.weight_decay=0.1"]),
    ("data.noise=2", 2, ["add it with +data.noise=2"]),
    ("recipe.model.width=3", 2, ["add it with +recipe.model.width=3"]),
    ("+trainer.max_epochs=3", 2, ["already in the config; change it without +: trainer.max_"]),
    ("~trainer.foo", 2, ["cannot delete trainer.foo: trainer has no key foo"]),
    ("trainer.max_epochs", 2, ["has no value; write trainer.max_epochs=<value>"]),
    ("=3", 2, ["the override '=3' names no key; write key=value"]),
    ("a=[1,", 2, ["cannot parse the override 'a=[1,'", "write key=value"]),
    ("recipe=cnnn", 2, ["recipe=cnnn: no such option; choose one of", "mean recipe=cnn?"]),
    ("backend=mxnet", 2, ["backend=mxnet: no such option; choose one of tf, torch"]),
    ("-m recipe=cnnn", 2, ["did you mean recipe=cnn?"]),
    ("debug=fast_dev_rn", 2, ["debug=fast_dev_rn: no such option", "mean debug=fast_dev_run?"]),
    ("hparams_search=cnn_optun", 2, ["did you mean hparams_search=cnn_optuna?"]),
    ("--foo", 2, ["unrecognized arguments: --foo", "--help"]),
    ("--cfg job -m", 2, ["Only one of --run, --multirun, --cfg"]),
    ("--config-dir {tmp}/nowhere", 2, ["nowhere' not found; give --config-dir a directory"]),
    ("hydra.job.chdir=maybe", 2, ["cannot set hydra.job.chdir=maybe: Value 'maybe' is not a"]),
    ("backend.name=${oops}", 2, ["cannot be resolved: Interpolation key 'oops' not found"]),
    ("hydra.run.dir=/proc/dualtrain/x", 2, ["cannot write the run dir", "hydra.run.dir=<dir>"]),
    ("hydra.run.dir={tmp}/file/run", 2, ["Not a directory", "hydra.run.dir=<dir>"]),
    ("--config-dir {tmp}/user recipe=mine", 2, ["mine.yaml, line 3, column 6: invalid YAML"]),
]  # fmt: skip


@pytest.mark.parametrize("args,code,texts", CASES, ids=[c[0] for c in CASES])
def test_a_mistake_is_one_line_with_the_fix(
    args: str, code: int, texts: list[str], tmp_path: Path
) -> None:
    (tmp_path / "file").write_text("")
    _user_dir(tmp_path, "name: mine\nmodule: x\n  bad: [1\n")  # line 3: a YAML syntax error
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args.split()]
    if not any(a.startswith("hydra.run.dir") for a in argv):
        argv.append(f"hydra.run.dir={tmp_path / 'run'}")
    result = run_cli(*argv, timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code, result.stderr
    assert len(lines) == 1 and lines[0].startswith("dualtrain: error: "), result.stderr
    assert "Traceback" not in result.stderr
    for text in texts:
        assert text in lines[0]


def test_python_tags_in_a_user_config_are_refused(tmp_path: Path) -> None:
    user = _user_dir(
        tmp_path, "# @package _global_\nrecipe:\n  name: !!python/name:os.system\n  module: x\n"
    )
    result = run_cli("--config-dir", str(user), "recipe=mine", f"hydra.run.dir={tmp_path}/r")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"dualtrain: error: {user}/recipe/mine.yaml, line 3, column 9: the YAML tag "
        "!!python/name:os.system is not allowed; configs hold plain values (strings, numbers, "
        "true/false, null, lists, mappings); name Python code by its import path as a string, "
        "e.g. module: my_recipe"
    ]


def test_config_mistakes_fail_before_any_framework_is_imported(tmp_path: Path) -> None:
    for args in (["+trainer.max_epoch=5"], ["recipe=cnnn"], ["+optimizer.betaa=0.9"]):
        result, imported = probe_cli(*args, f"hydra.run.dir={tmp_path}/r", tmp_path=tmp_path)
        assert imported == {"code": 2, "torch": False, "tensorflow": False}, result.stderr


def test_hydra_full_error_shows_the_traceback(tmp_path: Path) -> None:
    result = run_cli("recipe=cnnn", f"hydra.run.dir={tmp_path}", env={"HYDRA_FULL_ERROR": "1"})
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "MissingConfigException" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["--cfg", "job", "+optimizer.weight_decay=0.1", "+data.noise_scale=2"],
        ["--cfg", "job", "+recipe.model.width=3", "+callbacks.mine._target_=a.B"],
        ["--cfg", "job", "debug=fast_dev_run", "optimizer=sgd"],
    ],
)
def test_keys_that_are_passed_on_still_compose(args: list[str]) -> None:
    result = run_cli(*args, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_help_imports_no_framework(tmp_path: Path) -> None:
    result, imported = probe_cli("--help", tmp_path=tmp_path)
    assert result.returncode == 0 and "recipe: " in result.stdout
    assert imported == {"code": 0, "torch": False, "tensorflow": False}


def test_optimizer_keys_match_the_keras_signatures() -> None:
    """The table of optimizer arguments is checked without Keras; here it is held to Keras."""
    code = (
        "import inspect, json, keras\n"
        "from dualtrain.engines.base import _OPTIMIZERS\n"
        "print(json.dumps({name: sorted(set(inspect.signature(getattr(keras.optimizers, cls))"
        ".parameters) - {'kwargs'}) for name, cls in _OPTIMIZERS.items()}))\n"
    )
    env = {**os.environ, "KERAS_BACKEND": "torch"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True
    )
    signatures = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(signatures) == set(OPTIMIZER_KWARGS)
    for name, accepted in signatures.items():
        assert sorted(set(OPTIMIZER_KWARGS[name]) | set(OPTIMIZER_KWARGS_SET_BY)) == accepted
