"""Config validation: every bad value gets one line naming the key, the value and what is right."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

from dualtrain.cli import settings_from_config
from dualtrain.errors import ConfigError
from dualtrain.settings import Settings

GROUPS = {
    "backend": ["torch", "tf"],
    "recipe": ["cnn", "mlp"],
    "data": ["digits", "breast_cancer", "synthetic"],
    "optimizer": ["adam", "adamw", "sgd"],
}


def settings(*overrides: str) -> Settings:
    with initialize_config_module("dualtrain.configs", version_base="1.3"):
        cfg = compose("train", overrides=list(overrides))
    return settings_from_config(cfg, Path("unused"))


def test_defaults_are_cnn_on_torch() -> None:
    s = settings()
    assert (s.recipe.name, s.backend.name, s.mode) == ("cnn", "torch", "train")
    assert (s.parity.steps, s.parity.rtol, s.parity.worker) == (100, 1e-5, False)
    assert s.data.source == "dualtrain.data.sources:digits"
    assert s.trainer.max_steps == -1
    assert s.backend.jit_compile == "auto"
    assert s.backend.capture_forward is True  # torch: the captured forward graph
    assert s.backend.keep_host_memory is True  # torch: glibc keeps freed host memory


# The data settings have no name: each option is known by its source and its batch size.
DATA = {
    "digits": ("dualtrain.data.sources:digits", 32),
    "breast_cancer": ("dualtrain.data.sources:breast_cancer", 32),
    "synthetic": ("dualtrain.data.sources:synthetic", 64),
}


@pytest.mark.parametrize("group,option", [(g, o) for g, opts in GROUPS.items() for o in opts])
def test_every_config_group_option_composes(group: str, option: str) -> None:
    s = settings(f"{group}={option}")
    if group == "data":
        assert (s.data.source, s.data.batch_size) == DATA[option]
        # recipe=mlp brings breast_cancer: the command line's choice still wins.
        assert settings("recipe=mlp", f"data={option}").data.source == DATA[option][0]
    else:
        assert getattr(s, group).name == option


def test_loggers_default_and_several_at_once() -> None:
    assert settings().logger.loggers == ("jsonl", "console", "tensorboard")
    chosen = settings("logger=[csv,jsonl]", "logger.progress=false").logger
    assert (chosen.loggers, chosen.progress, chosen.histograms_every) == (
        ("jsonl", "csv"),
        False,
        0,
    )
    assert settings("logger.histograms_every=50").logger.histograms_every == 50


def test_recipe_sets_its_data_and_a_command_line_choice_wins() -> None:
    assert settings("recipe=mlp").data.source.endswith(":breast_cancer")
    assert settings("recipe=mlp", "data=synthetic").data.source.endswith(":synthetic")


def test_data_keys_other_than_the_loaders_go_to_the_source() -> None:
    s = settings("data=synthetic", "data.num_samples=100")
    assert s.data.params == {
        "num_samples": 100,
        "shape": [8, 8, 1],
        "num_classes": 10,
        "noise": 1.0,
    }


def test_python_data_requires_a_source() -> None:
    with pytest.raises(ConfigError, match=r"data\.source has no value; set it, e\.g\. data=python"):
        settings("data=python")


@pytest.mark.parametrize(
    "override,message",
    [
        ("optimizer.lr=-1", "optimizer.lr must be a positive number such as 0.001; got -1"),
        (
            "optimizer.lr=abc",
            "optimizer.lr must be a positive number such as 0.001, or auto; got 'abc'",
        ),
        ("optimizer.lr=0", "optimizer.lr must be a positive number"),
        ("optimizer.lr=nan", "optimizer.lr must be a positive number"),
        ("data.batch_size=0", "data.batch_size must be a positive integer; got 0"),
        ("data.batch_size=1.5", "data.batch_size must be a positive integer; got 1.5"),
        ("trainer.max_epochs=-1", "trainer.max_epochs must be a positive integer; got -1"),
        ("trainer.max_steps=0", "trainer.max_steps must be -1 (no limit) or a positive integer"),
        ("trainer.log_every_n_steps=0", "trainer.log_every_n_steps must be a positive integer"),
        (
            "backend.jit_compile=maybe",
            "backend.jit_compile must be one of auto, true, false; got 'maybe'",
        ),
        ("profile.steps=[0,3]", "profile.steps must be [first, last], two optimizer step numbers"),
        ("profile.steps=[5,2]", "counted from 1 (as metrics.jsonl counts them) with first <= last"),
        ("profile.steps=7", "e.g. profile.steps=[10,15]; got 7"),
        (
            "mode=bogus",
            "mode must be one of train, eval, export, parity, lr_find, summary; got 'bogus'",
        ),
        (
            "mode=parity optimizer.lr=auto",
            "mode=parity compares both backends at one learning rate, and optimizer.lr=auto",
        ),
        (
            "optimizer.lr=auto checkpoint.resume=auto",
            "optimizer.lr=auto starts from fresh (or init_from) weights, not from checkpoint.path",
        ),
        (
            "mode=lr_find backend=tf backend.strategy=mirrored",
            "the learning-rate finder runs in one process; drop backend.strategy",
        ),
        (
            "lr_find.min_lr=0.1 lr_find.max_lr=0.01",
            "lr_find.min_lr=0.1 must be below lr_find.max_lr=0.01",
        ),
        ("lr_find.steps=5", "lr_find.steps must be an integer >= 20; got 5"),
        ("lr_find.smoothing=1", "lr_find.smoothing must be a number in [0, 1); got 1"),
        ("lr_find.stop_factor=1", "lr_find.stop_factor must be a number > 1 such as 4; got 1"),
        (
            "mode=export",
            "mode=export needs checkpoint.path=<run directory or checkpoint directory>",
        ),
        (
            "mode=export checkpoint.path=.",
            "mode=export needs export.formats, e.g. export.formats=[saved_model,tflite,onnx,torch]",
        ),
        (
            "export.formats=[keras]",
            "export.formats must be a list of saved_model, tflite, onnx, torch, tfjs, "
            "executorch, e.g. "
            "export.formats=[saved_model,onnx]; got ['keras']",
        ),
        (
            "export.tflite_quantize=int4",
            "export.tflite_quantize must be one of none, dynamic, float16, int8; got 'int4'",
        ),
        ("parity.steps=0", "parity.steps must be a positive integer; got 0"),
        (
            "backend.precision=float64",
            "backend.precision must be one of float32, mixed_float16, mixed_bfloat16",
        ),
        (
            "backend.strategy=mirrored",
            "backend.strategy must be one of none for backend=torch; got 'mirrored'; torch runs "
            "distributed when launched with torchrun",
        ),
        (
            "backend=tf backend.strategy=ddp",
            "backend.strategy must be one of none, mirrored, multi_worker for backend=tf",
        ),
        (
            "backend.collective_timeout_s=0",
            "backend.collective_timeout_s must be a positive number",
        ),
        (
            "backend=tf backend.cpu_replicas=2",
            "backend.cpu_replicas=2 needs backend.strategy=mirrored",
        ),
        (
            "backend=tf backend.strategy=mirrored backend.cpu_replicas=0",
            "backend.cpu_replicas must be a positive integer; got 0",
        ),
        (
            "backend.capture_forward=maybe",
            "backend.capture_forward must be true or false; got 'maybe'",
        ),
        (
            "backend.keep_host_memory=maybe",
            "backend.keep_host_memory must be true or false; got 'maybe'",
        ),
        (
            "backend.steps_per_execution=4 trainer.log_every_n_steps=10",
            "trainer.log_every_n_steps=10 must be a multiple of backend.steps_per_execution=4",
        ),
        (
            "trainer.grad_clip_norm=1 trainer.grad_clip_value=1",
            "trainer.grad_clip_norm and trainer.grad_clip_value exclude each other; set one",
        ),
        ("trainer.grad_clip_norm=-1", "trainer.grad_clip_norm must be a positive number"),
        ("trainer.grad_accum_steps=0", "trainer.grad_accum_steps must be a positive integer"),
        ("trainer.ema=1", "trainer.ema must be a momentum in (0, 1) such as 0.999; got 1"),
        (
            "trainer.ema=0.99 optimizer=sgd +optimizer.use_ema=true",
            "trainer.ema and optimizer.use_ema both average the weights; keep trainer.ema",
        ),
        ("trainer.on_nonfinite=ignore", "trainer.on_nonfinite must be one of stop, skip"),
        (
            "trainer.limit_train_batches=1.5",
            "trainer.limit_train_batches must be a number of batches (an integer >= 1) or a share",
        ),
        ("scheduler=cosine scheduler.alpha=2", "scheduler.alpha must be a number in [0, 1]"),
        ("scheduler=step scheduler.gamma=0", "scheduler.gamma must be a number in (0, 1]"),
        ("scheduler=cosine +scheduler.warmup=3", "scheduler=cosine has no key warmup; its keys:"),
        ("parity.rtol=-1", "parity.rtol must be a number >= 0 and < 1 such as 1e-5; got -1"),
        ("parity.rtol=loose", "parity.rtol must be a number >= 0 and < 1 such as 1e-5"),
        ("parity.worker=maybe", "parity.worker must be true or false; got 'maybe'"),
        (
            "mode=parity init_from=.",
            "mode=parity builds its own initial weights and gives them to both backends",
        ),
        ("mode=eval", "mode=eval needs checkpoint.path=<run directory or checkpoint directory>"),
        ("seed=-3", "seed must be an integer >= 0; got -3"),
        ("data.val_fraction=1.5", "data.val_fraction must be a number between 0 and 1"),
        ("logger.progress=maybe", "logger.progress must be true or false; got 'maybe'"),
        ("checkpoint.monitor=accuracy", "checkpoint.monitor must name a logged value such as"),
        ("checkpoint.mode=up", "checkpoint.mode must be one of min, max; got 'up'"),
        ("checkpoint.save_top_k=-2", "checkpoint.save_top_k must be an integer >= -1; got -2"),
        ("checkpoint.resume=yes", "checkpoint.resume must be auto or null; got 'yes'"),
        ("checkpoint.path=/no/such/dir", "checkpoint.path=/no/such/dir does not exist"),
        ("logger.histograms_every=-1", "logger.histograms_every must be an integer >= 0; got -1"),
        (
            "logger=[jsonl]",  # with histograms_every below
            "logger.histograms_every needs the tensorboard logger; choose it too",
        ),
        (
            "recipe.module=no_such_module",
            "recipe.module: cannot find the Python module 'no_such_module'",
        ),
    ],
)
def test_bad_values_are_config_errors(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        settings(
            *override.split(),
            *(["logger.histograms_every=5"] if override.startswith("logger=") else []),
        )
    assert message in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("value,expected", [("true", "true"), ("false", "false"), ("auto", "auto")])
def test_jit_compile_accepts_yaml_booleans(value: str, expected: str) -> None:
    assert settings(f"backend.jit_compile={value}").backend.jit_compile == expected


def test_distribution_defaults_and_choices() -> None:
    s = settings()
    assert (s.backend.strategy, s.backend.collective_timeout_s, s.backend.cpu_replicas) == (
        "none",
        300.0,
        1,
    )
    tf = settings("backend=tf", "backend.strategy=mirrored", "backend.cpu_replicas=2")
    assert (tf.backend.strategy, tf.backend.cpu_replicas) == ("mirrored", 2)
    assert settings("backend=tf", "backend.strategy=multi_worker").backend.strategy == (
        "multi_worker"
    )


def test_lr_auto_and_the_finders_defaults() -> None:
    s = settings("optimizer.lr=auto", "scheduler=cosine")
    assert s.optimizer.lr == "auto"
    # fastai's first rate, Lightning's last, their smoothing and stop; 300 steps, not their 100
    # (docs/training.md, "Finding a learning rate")
    assert (s.lr_find.min_lr, s.lr_find.max_lr, s.lr_find.steps) == (1e-7, 1.0, 300)
    assert (s.lr_find.smoothing, s.lr_find.stop_factor) == (0.98, 4.0)
