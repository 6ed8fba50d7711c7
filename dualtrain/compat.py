"""Every use of another library's private internals, in one place.

dualtrain reaches into Keras, torch, TensorFlow, Hydra and TensorBoard where their public APIs
are too slow or give other numbers. Each such use is a hook here: a small function (or class)
that the engines, the CLI and the loggers call instead of touching the internal. Each hook's
docstring says what it does, why the public path is not enough, and what happens when the
internal is missing or has changed. Each hook checks its internal once, at set-up (never per
step), and where the check fails it takes the public path and says so in ONE log line on the
"dualtrain" logger; a fallback that would silently change results refuses with a RunError
instead.

All hooks were written for, and are tested on, the versions in `WRITTEN_FOR` (constraints.txt);
pyproject.toml's ranges stay within the releases these checks were run against.

This module imports no framework at import time: the CLI (framework-free) uses it too.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from types import ModuleType
from typing import Any

log = logging.getLogger("dualtrain")

WRITTEN_FOR = {
    "keras": "3.15.1",
    "torch": "2.13.0",
    "tensorflow": "2.21.0",
    "hydra-core": "1.3.8",
    "tensorboard": "2.21.0",
}

# Hooks whose fallback was already reported in this process: one line per hook, not per engine.
_reported: set[str] = set()


def _fall_back(
    hook: str, library: str, problem: str, fallback: str, level: int = logging.INFO
) -> None:
    if hook in _reported:
        return
    _reported.add(hook)
    log.log(
        level,
        "compat.%s: %s (written for %s %s); %s",
        hook,
        problem,
        library,
        WRITTEN_FOR[library],
        fallback,
    )


def _parameters(function: Any) -> list[str] | None:
    """The parameter names of a function or bound method (without `self`), or None."""
    try:
        return list(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        return None


def _signature_problem(function: Any, what: str, expected: Sequence[str]) -> str | None:
    if not callable(function):
        return f"{what} is missing"
    names = _parameters(function)
    if names is None or names[: len(expected)] != list(expected):
        return f"{what} takes ({', '.join(names or ['?'])}), not ({', '.join(expected)})"
    return None


# -- torch: the fused Adam kernel (engines/torch_adam.py) ----------------------------------------

_FUSED_ADAM_ARGUMENTS = (
    "self",
    "grads",
    "exp_avgs",
    "exp_avg_sqs",
    "max_exp_avg_sqs",
    "state_steps",
    "lr",
    "beta1",
    "beta2",
    "weight_decay",
    "eps",
    "amsgrad",
    "maximize",
)


@functools.cache
def _fused_adam_problem() -> str | None:
    import torch

    kernel = getattr(torch, "_fused_adam_", None)
    if not callable(kernel):
        return "torch has no _fused_adam_"
    try:
        schema = torch.ops.aten._fused_adam_.default._schema
        names = [argument.name for argument in schema.arguments]
    except (AttributeError, RuntimeError) as err:
        return f"torch._fused_adam_ has no readable schema ({err})"
    if names[: len(_FUSED_ADAM_ARGUMENTS)] != list(_FUSED_ADAM_ARGUMENTS):
        return f"torch._fused_adam_ takes ({', '.join(names)})"
    # One step on numbers worked out by hand: m = 0.1, v = 0.001, and with the bias corrections
    # c1 = 0.1, c2 = sqrt(0.001) the update is (lr / c1) * m / (sqrt(v) / c2) = 0.1. The kernel
    # must read the step, not count it (torch's Adam counts before calling it), take the step
    # size as a tensor, and change nothing when found_inf is 1.
    param, momentum, velocity, step = torch.ones(1), torch.zeros(1), torch.zeros(1), torch.ones(1)
    try:
        for found_inf in (1.0, 0.0):
            kernel(
                [param], [torch.ones(1)], [momentum], [velocity], [], [step],
                lr=torch.tensor(0.1, dtype=torch.float64), beta1=0.9, beta2=0.999,
                weight_decay=0.0, eps=0.0, amsgrad=False, maximize=False,
                found_inf=torch.tensor(found_inf),
            )  # fmt: skip
            if found_inf and float(param) != 1.0:
                return "torch._fused_adam_ changes the parameters when found_inf is set"
    except Exception as err:  # a kernel that refuses what dualtrain hands it
        return f"torch._fused_adam_ failed on a probe step ({type(err).__name__}: {err})"
    got = [float(t) for t in (param, momentum, velocity, step)]
    if any(abs(g - e) > 1e-6 for g, e in zip(got, [0.9, 0.1, 0.001, 1.0], strict=True)):
        return f"torch._fused_adam_'s probe step gave (param, m, v, step) = {got}"
    return None


def fused_adam_kernel() -> Callable[..., Any] | None:
    """`torch._fused_adam_`: Adam's update of every parameter in one pass, or None.

    Keras's torch Adam makes about ten `torch._foreach_*` passes per update; the fused kernel
    (the one `torch.optim.Adam(fused=True)` calls) makes one. torch.optim's public Adam cannot
    update Keras's own momentum and velocity variables with Keras's step size, so the kernel is
    called directly. Checked at set-up: the kernel exists, its schema has the arguments
    dualtrain passes, and one probe step gives Adam's numbers. Otherwise: None, one info line,
    and Adam/AdamW keep Keras's own update (same results, slower steps).
    """
    problem = _fused_adam_problem()
    if problem is not None:
        _fall_back(
            "fused_adam_kernel",
            "torch",
            problem,
            "Adam and AdamW keep Keras's own update (same results, slower steps)",
        )
        return None
    import torch

    return torch._fused_adam_


# -- Keras: the torch Adam's update step and its state (engines/torch_adam.py) -------------------


class KerasAdamUpdate:
    """Keras's torch Adam update step, and the state it updates, for one optimizer.

    Keras's torch optimizers update all variables in `_parallel_update_step(grads, variables,
    learning_rate)`, called by the public `apply` after clipping, loss-scale unscaling, weight
    decay and the learning-rate schedule. Replacing only that step keeps all of those Keras's.
    The momentums and velocities are Keras's own variables (`_momentums`, `_velocities`, indexed
    by `_get_variable_index`), so checkpoints see no difference. Keras has no public access to
    either.
    """

    def __init__(self, optimizer: Any) -> None:
        self.optimizer = optimizer
        self.keras_update: Callable[..., Any] = optimizer._parallel_update_step

    def slots(self, variables: Sequence[Any]) -> tuple[list[Any], list[Any]]:
        """The momentum and velocity tensors of `variables`, in their order."""
        optimizer = self.optimizer
        index = optimizer._get_variable_index
        momentums = variable_tensors([optimizer._momentums[index(v)] for v in variables])
        velocities = variable_tensors([optimizer._velocities[index(v)] for v in variables])
        return momentums, velocities

    def replace(self, update: Callable[..., Any]) -> None:
        self.optimizer._parallel_update_step = update


def keras_adam_update(optimizer: Any) -> KerasAdamUpdate | None:
    """The update step of a built Keras torch Adam, or None (one info line): then the optimizer
    keeps Keras's own update. Checked at set-up: `_parallel_update_step` takes (grads, variables,
    learning_rate), `_get_variable_index` exists, and `_momentums`/`_velocities` hold one
    variable per trainable variable."""
    problem = _signature_problem(
        getattr(optimizer, "_parallel_update_step", None),
        "Adam._parallel_update_step",
        ("grads", "variables", "learning_rate"),
    )
    if problem is None and not callable(getattr(optimizer, "_get_variable_index", None)):
        problem = "Adam._get_variable_index is missing"
    if problem is None:
        for name in ("_momentums", "_velocities"):
            state = getattr(optimizer, name, None)
            if not isinstance(state, list) or not all(hasattr(s, "value") for s in state):
                problem = f"Adam.{name} is not a list of variables"
                break
    if problem is not None:
        _fall_back(
            "keras_adam_update",
            "keras",
            problem,
            "Adam and AdamW keep Keras's own update (same results, slower steps)",
        )
        return None
    return KerasAdamUpdate(optimizer)


# -- Keras: layers, seed generators, functional models, object names (engines/base.py, -----------
# -- engines/torch_graph.py) ---------------------------------------------------------------------


def sublayers(model: Any) -> list[Any]:
    """Every layer nested in `model` (not the model itself), at any depth.

    Keras has no public recursive walk: `model.layers` is one level, and a subclassed layer's
    own sublayers are reachable only through Keras's tracking. `_flatten_layers(include_self=
    False, recursive=True)` is what Keras's own summary and weight loading use. Checked at each
    call (set-up only): the method exists and takes (include_self, recursive). Otherwise one
    warning, and a public walk: `layers` of models, and layers held in a layer's attributes
    (directly or in lists, tuples and dicts), which is what Keras's tracking records; it may
    also list helper models Keras keeps untracked (a Sequential's own Functional), which hold
    the same layers again.
    """
    problem = _signature_problem(
        getattr(model, "_flatten_layers", None),
        "Layer._flatten_layers",
        ("include_self", "recursive"),
    )
    if problem is None:
        return list(model._flatten_layers(include_self=False, recursive=True))
    _fall_back(
        "sublayers",
        "keras",
        problem,
        "nested layers are found through `layers` and the layers' attributes",
        logging.WARNING,
    )
    return _public_sublayers(model)


def _public_sublayers(model: Any) -> list[Any]:
    import keras

    def children(layer: Any) -> list[Any]:
        values: list[Any] = list(getattr(layer, "layers", None) or [])
        for value in vars(layer).values():
            if isinstance(value, dict):
                values.extend(value.values())
            elif isinstance(value, (list, tuple)):
                values.extend(value)
            else:
                values.append(value)
        return [v for v in values if isinstance(v, keras.layers.Layer)]

    found: list[Any] = []
    seen = {id(model)}
    pending = children(model)
    while pending:
        layer = pending.pop(0)
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        found.append(layer)
        pending[:0] = children(layer)
    return found


def seed_generators(layer: Any) -> list[Any]:
    """The `keras.random.SeedGenerator`s a layer draws its random numbers from (Dropout, noise,
    random augmentation), empty for a layer that draws none.

    Keras tracks them in `Layer._seed_generators` and has no public accessor. Checked at each
    call (set-up only): the attribute is a list of SeedGenerators. Otherwise one warning, and
    the SeedGenerators held in the layer's attributes (where Keras's own layers keep them).
    """
    import keras

    tracked = getattr(layer, "_seed_generators", None)
    if isinstance(tracked, list) and all(
        isinstance(g, keras.random.SeedGenerator) for g in tracked
    ):
        return tracked
    _fall_back(
        "seed_generators",
        "keras",
        "Layer._seed_generators is missing or not a list of SeedGenerators",
        "seed generators are found among the layers' attributes",
        logging.WARNING,
    )
    return [v for v in vars(layer).values() if isinstance(v, keras.random.SeedGenerator)]


@functools.cache
def _functional_class() -> Any:
    try:
        from keras.src.models.functional import Functional
    except ImportError as err:
        return f"keras.src.models.functional.Functional cannot be imported ({err})"
    import keras

    if not (isinstance(Functional, type) and issubclass(Functional, keras.Model)):
        return "keras.src.models.functional.Functional is not a keras.Model class"
    return Functional


def is_functional(model: Any) -> bool | None:
    """Whether `model` is a functional Keras model (`keras.Model(inputs, outputs)`), or None when
    this Keras cannot say.

    `keras.Model(inputs, outputs)` returns an instance of the private class `Functional`; a
    public test would be `type(model) is keras.Model`, which is never true for it, and
    subclassed models (whose `call` takes what it likes) look alike otherwise. Checked once:
    the class imports and is a keras.Model. Otherwise None with one info line: the callers then
    treat the model as not functional (its inputs are checked by a sample call only).
    """
    functional = _functional_class()
    if isinstance(functional, str):
        _fall_back("is_functional", "keras", functional, "models are treated as not functional")
        return None
    return isinstance(model, functional)


@functools.cache
def _object_names_problem() -> str | None:
    try:
        from keras.src.backend.common import global_state
    except ImportError as err:
        return f"keras.src.backend.common.global_state cannot be imported ({err})"
    get = getattr(global_state, "get_global_attribute", None)
    set_ = getattr(global_state, "set_global_attribute", None)
    if not (callable(get) and callable(set_)):
        return "global_state has no get_global_attribute/set_global_attribute"
    import keras

    # Probe: with the counters set aside, two new layers must be numbered as in a new process.
    saved = get("object_name_uids")
    set_("object_name_uids", None)
    try:
        names = [keras.layers.Identity().name for _ in range(2)]
    finally:
        set_("object_name_uids", saved)
    if names != ["identity", "identity_1"]:
        return f"layers made with object_name_uids set aside are named {names}"
    return None


@contextlib.contextmanager
def fresh_object_names() -> Iterator[None]:
    """Inside: Keras numbers auto-named layers (`conv2d`, `conv2d_1`) as in a new process.

    Checkpoints name variables by layer path, and Keras counts names per process in its global
    state ("object_name_uids"); a model built after another one would get other numbers and not
    fit its checkpoints. `keras.backend.clear_session()` resets the counters too, but also
    everything else (other models' graphs, the tf name scopes), so only the counters are set
    aside and restored. Checked once: the global state's accessors exist, and two layers made
    with the counters set aside are named `identity`, `identity_1`. Otherwise one warning, and
    names are numbered after the process's earlier models (as Keras does by itself).
    """
    problem = _object_names_problem()
    if problem is not None:
        _fall_back(
            "fresh_object_names",
            "keras",
            problem,
            "layer names continue the process's numbering (a model built after another one "
            "may not fit checkpoints written by a new process)",
            logging.WARNING,
        )
        yield
        return
    from keras.src.backend.common import global_state

    saved = global_state.get_global_attribute("object_name_uids")
    global_state.set_global_attribute("object_name_uids", None)
    try:
        yield
    finally:
        global_state.set_global_attribute("object_name_uids", saved)


# -- Keras on torch and torch: capturing a step as a graph (engines/torch_graph.py) ------------


@functools.cache
def _torch_capture_problem() -> str | None:
    import torch

    tensor = torch.zeros(1)
    version = getattr(tensor, "_version", None)
    tensor.add_(1)
    if not isinstance(version, int) or getattr(tensor, "_version", None) == version:
        return "torch.Tensor._version does not count in-place changes"
    aten = torch.ops.aten
    try:
        mutable = aten.add_.Tensor._schema.is_mutable and not aten.add.Tensor._schema.is_mutable
        aliasing = aten.view.default._schema.returns[0].alias_info is not None
    except (AttributeError, IndexError) as err:
        return f"torch's OpOverload._schema cannot be read ({err})"
    if not (mutable and aliasing):
        return "torch's OpOverload._schema does not mark in-place and view ops"
    import keras

    scope = getattr(keras, "StatelessScope", None)
    return _signature_problem(
        getattr(scope, "add_update", None), "StatelessScope.add_update", ["self", "update"]
    )


def graph_capture_problem() -> str | None:
    """Why the internals the graph capture relies on are not there, or None.

    The capture (engines/torch_graph.py) traces a step inside Keras's public `StatelessScope`,
    which maps every variable to a graph input and records assignments instead of making them.
    Which variables a step assigns is learnt from the scope's `add_update((variable, value))`,
    which Keras calls for each assignment (a subclass records the variable; the public scope
    only answers for variables named in advance, and a step may advance Keras's global seed
    generator, which no model holds). The safety checks read torch's in-place counter
    (`Tensor._version`: did tracing change a variable?) and op schemas (`OpOverload._schema`:
    which ops write or alias their inputs), for which torch has no public equivalent. Checked
    once; otherwise one info line: the model runs eagerly (same results, slower).
    """
    problem = _torch_capture_problem()
    if problem is not None:
        _fall_back("graph_capture", "torch", problem, "the model runs eagerly")
    return problem


def recording_scope(mapping: Sequence[tuple[Any, Any]]) -> Any:
    """A `keras.StatelessScope` over `mapping` (variable, tensor) whose `assigned` dict lists the
    variables assigned inside it, by id (see graph_capture_problem)."""
    import keras

    class RecordingScope(keras.StatelessScope):
        def __init__(self) -> None:
            super().__init__(state_mapping=mapping, collect_losses=True)
            self.assigned: dict[int, Any] = {}

        def add_update(self, update: tuple[Any, Any]) -> None:
            self.assigned[id(update[0])] = update[0]
            super().add_update(update)

    return RecordingScope()


def tensor_version(tensor: Any) -> int:
    """torch's count of in-place changes of a tensor (see graph_capture_problem)."""
    return int(tensor._version)


def op_schema(target: Any) -> Any:
    """The schema of an ATen op (see graph_capture_problem), or None for other callables."""
    return getattr(target, "_schema", None)


@functools.cache
def _variable_tensors_probe() -> tuple[Callable[[], bool], str | None]:
    """Keras's checks in a torch Variable's `value` (keras.src.backend.torch.core), as one
    function that says whether any applies now, and why the hook cannot be used, or None."""
    try:
        from keras.src.backend.common.stateless_scope import in_stateless_scope
        from keras.src.backend.common.variables import get_autocast_scope
        from keras.src.backend.torch.core import Variable, get_device
    except ImportError as err:
        return (lambda: True), f"Keras's variable internals cannot be imported ({err})"

    def special() -> bool:
        return (
            in_stateless_scope() or get_autocast_scope() is not None or str(get_device()) == "meta"
        )

    import keras

    probe = keras.Variable(keras.ops.zeros((2,)))
    if not isinstance(probe, Variable) or getattr(probe, "_value", None) is not probe.value:
        return special, "a torch Variable's value is not its _value tensor"
    return special, None


def variable_tensors(variables: Sequence[Any]) -> list[Any]:
    """`[v.value for v in variables]` for Keras variables on torch, in one check instead of one
    per variable. Keras's torch `Variable.value` looks for a StatelessScope, an AutocastScope and
    the "meta" device at every read, about 3.6 microseconds each (one thread); a captured step
    reads every model and optimizer variable, a hundred or more a step. Where none of the three
    applies, the value is the variable's own tensor (`_value`), read here directly; otherwise,
    for a variable not yet initialized, and while torch.compile traces (`.value` is then
    traced once, not run at each step), `.value`. Checked once: the internals exist and a
    new variable's `value` is its `_value`; otherwise one info line, and `.value` throughout."""
    import torch

    if torch.compiler.is_compiling():  # jit_compile: torch.compile traces Keras's own reads
        return [v.value for v in variables]
    special, problem = _variable_tensors_probe()
    if problem is not None:
        _fall_back("variable_tensors", "keras", problem, "variables are read through .value")
        return [v.value for v in variables]
    if special():
        return [v.value for v in variables]
    return [v.value if v._value is None else v._value for v in variables]


def mean_accumulators(metric: Any) -> tuple[Any, Any] | None:
    """The (total, count) variables of a `keras.metrics.Mean`, whose `update_state(value,
    sample_weight)` of a scalar adds `value * sample_weight` to `total` and `sample_weight` to
    `count` (Keras's `Mean.update_state`), or None, with one info line, where this Keras's Mean
    keeps other variables. The torch engine adds to them in place (engines/torch.py,
    `TorchEngine._track`): through `update_state` the same two float32 additions cost about 90
    microseconds of Keras's Python a call (one thread), every step. Checked at set-up: the
    metric is a Mean and its variables are exactly `total` and `count`, in that order (the
    order `Engine.train_loss_state` saves)."""
    import keras

    total, count = getattr(metric, "total", None), getattr(metric, "count", None)
    if (
        isinstance(metric, keras.metrics.Mean)
        and total is not None
        and count is not None
        and [id(v) for v in metric.variables] == [id(total), id(count)]
    ):
        return total, count
    _fall_back(
        "mean_accumulators",
        "keras",
        "keras.metrics.Mean has no variables (total, count)",
        "the loss means go through Mean.update_state (slower steps)",
    )
    return None


# -- Keras on torch: what dualtrain's torch steps run in place of Keras's own functions ----------


@contextlib.contextmanager
def torch_step_ops() -> Iterator[None]:
    """What every torch train and eval step, captured or eager, runs under (engines/torch.py):
    seeded random numbers from the counter-based generator (counter_random), BatchNormalization
    through torch's kernels (fused_batch_norm), 1-D convolution and pooling as 2-D
    (conv1d_as_2d), and GRU and LSTM layers as one op each (fused_rnn). Each gives Keras's values
    (tested against Keras's own) and falls back to Keras's own by itself, with one info line."""
    with counter_random(), fused_batch_norm(), conv1d_as_2d(), fused_rnn():
        yield


@contextlib.contextmanager
def _swapped(hook: str, patches: list[tuple[Any, str, Any]] | str, fallback: str) -> Iterator[None]:
    """Inside: each (owner, name, value) of `patches` set as owner.name, the old values put back
    after. `patches` as a string is why they cannot be made: one info line (`fallback` says what
    runs instead), and nothing is swapped."""
    if isinstance(patches, str):
        _fall_back(hook, "keras", patches, fallback)
        yield
        return
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    for owner, name, value in patches:
        setattr(owner, name, value)
    try:
        yield
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)


# -- Keras on torch: seeded random numbers and one_hot as tensor arithmetic (torch_random.py) ----

_KERAS_RANDOM = {
    "uniform": ["shape", "minval", "maxval", "dtype", "seed"],
    "normal": ["shape", "mean", "stddev", "dtype", "seed"],
    "randint": ["shape", "minval", "maxval", "dtype", "seed"],
    "dropout": ["inputs", "rate", "noise_shape", "seed"],
}


@functools.cache
def _counter_random_patches() -> list[tuple[Any, str, Any]] | str:
    try:
        from keras.src.backend.torch import nn as keras_nn
        from keras.src.backend.torch import random as keras_random
        from keras.src.backend.torch.core import get_device, to_torch_dtype
        from keras.src.random.seed_generator import SeedGenerator, draw_seed
    except ImportError as err:
        return f"Keras's torch random module cannot be imported ({err})"
    for name, arguments in _KERAS_RANDOM.items():
        problem = _signature_problem(getattr(keras_random, name, None), name, arguments)
        if problem:
            return problem
    functional: Any = getattr(keras_nn, "tnn", None)
    if getattr(functional, "one_hot", None) is None:
        return "keras.src.backend.torch.nn does not call torch.nn.functional.one_hot as `tnn`"
    import torch

    from dualtrain.engines import torch_random

    keras_dropout = keras_random.dropout

    def dtype_of(dtype: Any) -> Any:
        import keras

        return to_torch_dtype(dtype or keras.config.floatx())

    def uniform(
        shape: Any, minval: Any = 0.0, maxval: Any = 1.0, dtype: Any = None, seed: Any = None
    ) -> Any:
        unit = torch_random.uniform_01(draw_seed(seed), tuple(shape), get_device())
        return ((maxval - minval) * unit + minval).to(dtype_of(dtype))

    def normal(
        shape: Any, mean: Any = 0.0, stddev: Any = 1.0, dtype: Any = None, seed: Any = None
    ) -> Any:
        unit = torch_random.normal_01(draw_seed(seed), tuple(shape), get_device())
        return (unit * stddev + mean).to(dtype_of(dtype))

    def randint(
        shape: Any, minval: Any, maxval: Any, dtype: Any = "int32", seed: Any = None
    ) -> Any:
        unit = torch_random.uniform_01(draw_seed(seed), tuple(shape), get_device())
        return (torch.floor(unit * (maxval - minval)) + minval).to(to_torch_dtype(dtype))

    def dropout(inputs: Any, rate: Any, noise_shape: Any = None, seed: Any = None) -> Any:
        unseeded = seed is None or (
            isinstance(seed, SeedGenerator) and seed.get_config()["seed"] is None
        )
        if rate in (0.0, 1.0) or (unseeded and noise_shape is None):
            return keras_dropout(inputs, rate, noise_shape, seed)  # torch's kernel, global RNG
        keep = 1.0 - rate
        shape = [
            size if n is None else n
            for size, n in zip(inputs.shape, noise_shape or [None] * inputs.ndim, strict=True)
        ]
        mask = torch_random.uniform_01(draw_seed(seed), shape, inputs.device) < keep
        return torch.where(mask, inputs / keep, torch.zeros_like(inputs))

    def one_hot(tensor: Any, num_classes: int = -1) -> Any:
        if num_classes < 0:  # the number of classes from the values: a host read, as torch does
            return functional.one_hot(tensor, num_classes)
        classes = torch.arange(num_classes, device=tensor.device)
        return (tensor.unsqueeze(-1) == classes).long()

    class Functional(ModuleType):
        """torch.nn.functional with one_hot replaced."""

        def __getattr__(self, name: str) -> Any:
            return getattr(functional, name)

    shim = Functional("torch.nn.functional")
    shim.one_hot = one_hot  # type: ignore[attr-defined]
    return [
        (keras_random, "uniform", uniform),
        (keras_random, "normal", normal),
        (keras_random, "randint", randint),
        (keras_random, "dropout", dropout),
        (keras_nn, "tnn", shim),
    ]


@contextlib.contextmanager
def counter_random() -> Iterator[None]:
    """Inside: Keras on torch draws seeded random numbers from dualtrain's counter-based
    generator (engines/torch_random.py), and `ops.one_hot` compares with `arange` instead of
    calling torch's one_hot, whose CPU kernel reads the labels' range back to the host.

    Keras's torch backend seeds a `torch.Generator` from `int(seed)` for each seeded draw: a host
    read in every step that no graph can replay. Keras has no hook for its random backend, so
    the module functions of keras.src.backend.torch.random (uniform, normal, randint, dropout's
    seeded path) and the `tnn` name its nn module calls `one_hot` through are replaced for the
    duration (the torch engine's steps only; model building and initializers keep Keras's).
    one_hot gives the same values for every label in range (dualtrain checks the labels before
    training); torch's would raise on one out of range, this gives a row of zeros. Checked
    once: the functions take Keras's arguments. Otherwise one info line, and Keras's own
    (seeded layers and one_hot losses then run eagerly).
    """
    fallback = "seeded layers run eagerly on torch"
    with _swapped("counter_random", _counter_random_patches(), fallback):
        yield


# -- Keras on torch: BatchNormalization through torch's kernel (engines/torch_batch_norm.py) -----


@functools.cache
def _batch_norm_patch() -> list[tuple[Any, str, Any]] | str:
    try:
        from keras.src.layers.normalization.batch_normalization import BatchNormalization
    except ImportError as err:
        return f"Keras's BatchNormalization cannot be imported ({err})"
    keras_call = BatchNormalization.call
    problem = _signature_problem(
        keras_call, "BatchNormalization.call", ["self", "inputs", "training", "mask"]
    )
    if problem:
        return problem
    for name in ("axis", "momentum", "epsilon", "center", "scale", "renorm"):
        if name not in _parameters(BatchNormalization.__init__):  # type: ignore[operator]
            return f"BatchNormalization takes no `{name}`"
    keras_moments = getattr(BatchNormalization, "_moments", None)
    import torch

    from dualtrain.engines import torch_batch_norm

    def call(self: Any, inputs: Any, training: Any = None, mask: Any = None) -> Any:
        if (
            mask is not None
            or self.renorm
            or not isinstance(inputs, torch.Tensor)
            or type(self)._moments is not keras_moments  # the user's own statistics
        ):
            return keras_call(self, inputs, training=training, mask=mask)
        return torch_batch_norm.normalize(self, inputs, bool(training and self.trainable))

    return [(BatchNormalization, "call", call)]


@contextlib.contextmanager
def fused_batch_norm() -> Iterator[None]:
    """Inside: Keras's BatchNormalization on torch runs torch's batch-norm kernel
    (engines/torch_batch_norm.py) instead of Keras's separate ops: the same values, one kernel
    forward and one backward.

    Keras offers no hook for a layer's backend arithmetic, so `BatchNormalization.call` is
    replaced for the duration (the torch engine's steps only). A mask, batch renormalization, or
    a subclass with its own `_moments` keeps Keras's call. Checked once: the call and the
    constructor's arguments are Keras's. Otherwise one info line, and Keras's own.
    """
    with _swapped("fused_batch_norm", _batch_norm_patch(), "BatchNormalization runs Keras's ops"):
        yield


# -- Keras on torch: 1-D convolution and pooling as 2-D ------------------------------------------


@functools.cache
def _conv1d_patches() -> list[tuple[Any, str, Any]] | str:
    try:
        from keras.src.backend.torch import nn as keras_nn
    except ImportError as err:
        return f"Keras's torch nn module cannot be imported ({err})"
    expected = {
        "conv": ["inputs", "kernel", "strides", "padding", "data_format", "dilation_rate"],
        "max_pool": ["inputs", "pool_size", "strides", "padding", "data_format"],
        "average_pool": ["inputs", "pool_size", "strides", "padding", "data_format"],
    }
    for name, arguments in expected.items():
        problem = _signature_problem(getattr(keras_nn, name, None), f"torch nn.{name}", arguments)
        if problem:
            return problem
    if not callable(getattr(getattr(keras_nn, "backend", None), "standardize_data_format", None)):
        return "keras.src.backend.torch.nn has no backend.standardize_data_format"
    keras_conv, keras_max, keras_average = (
        keras_nn.conv, keras_nn.max_pool, keras_nn.average_pool
    )  # fmt: skip

    def spatial_axis(data_format: Any) -> int:
        """Where the added height of 1 goes: before the length, as (N, 1, L, C) or (N, C, 1, L)."""
        last = keras_nn.backend.standardize_data_format(data_format) == "channels_last"
        return 1 if last else 2

    def pair(value: Any) -> Any:
        if value is None:
            return None
        (single,) = value if isinstance(value, (tuple, list)) else (value,)
        return (1, single)

    def conv(
        inputs: Any,
        kernel: Any,
        strides: Any = 1,
        padding: str = "valid",
        data_format: Any = None,
        dilation_rate: Any = 1,
    ) -> Any:
        if getattr(inputs, "ndim", None) != 3:
            return keras_conv(inputs, kernel, strides, padding, data_format, dilation_rate)
        axis = spatial_axis(data_format)
        kernel = keras_nn.convert_to_tensor(kernel).unsqueeze(0)  # (1, k, in, out)
        out = keras_conv(
            keras_nn.convert_to_tensor(inputs).unsqueeze(axis), kernel,
            pair(strides), padding, data_format, pair(dilation_rate),
        )  # fmt: skip
        return out.squeeze(axis)

    def pooling(keras_pool: Any) -> Any:
        def pool(
            inputs: Any,
            pool_size: Any,
            strides: Any = None,
            padding: str = "valid",
            data_format: Any = None,
        ) -> Any:
            if getattr(inputs, "ndim", None) != 3:
                return keras_pool(inputs, pool_size, strides, padding, data_format)
            axis = spatial_axis(data_format)
            out = keras_pool(
                keras_nn.convert_to_tensor(inputs).unsqueeze(axis),
                pair(pool_size), pair(strides), padding, data_format,
            )  # fmt: skip
            return out.squeeze(axis)

        return pool

    return [
        (keras_nn, "conv", conv),
        (keras_nn, "max_pool", pooling(keras_max)),
        (keras_nn, "average_pool", pooling(keras_average)),
    ]


@contextlib.contextmanager
def conv1d_as_2d() -> Iterator[None]:
    """Inside: Keras's 1-D convolution and max/average pooling on torch run as their 2-D forms
    over a height of 1 (the same values).

    torch has no channels-last memory format for 3-D tensors: a Conv1D on Keras's
    (batch, length, channels) activations reaches oneDNN as a strided view that it copies, and
    1-D max pooling takes a slow path. As (batch, 1, length, channels) the same memory is a
    channels-last 4-D tensor, which oneDNN's convolution and pooling take as it is: forward and
    backward of Conv1D(64, 5), ReLU and MaxPooling1D on a 64x64x32 batch took 2.0-2.2 ms on one
    thread, against 3.8-4.5 ms. keras.src.backend.torch.nn's `conv`, `max_pool` and
    `average_pool` are replaced for the duration (the torch engine's steps only); other ranks
    go to Keras's own. Checked once: they take Keras's arguments. Otherwise one info line.
    """
    with _swapped("conv1d_as_2d", _conv1d_patches(), "1-D convolutions run as Keras runs them"):
        yield


# -- Keras on torch and torch: GRU and LSTM as one fused op per layer call (engines/torch_rnn.py) -

_KERAS_GRU = [
    "inputs", "initial_state", "mask", "kernel", "recurrent_kernel", "bias", "activation",
    "recurrent_activation", "return_sequences", "go_backwards", "unroll", "reset_after",
]  # fmt: skip
_KERAS_LSTM = [
    "inputs", "initial_state_h", "initial_state_c", "mask", "kernel", "recurrent_kernel", "bias",
    "activation", "recurrent_activation", "return_sequences", "go_backwards", "unroll",
    "batch_first",
]  # fmt: skip
_KERAS_PREPARE = ["kernel", "recurrent_kernel", "bias", "device"]


@functools.cache
def _fused_rnn_ops() -> Any:
    """The ops, defined once per process (torch refuses to define an op twice)."""
    import torch

    from dualtrain.engines.torch_rnn import FusedOps

    return FusedOps(torch._VF.gru, torch._VF.lstm, torch._C._AutoDispatchBelowAutograd)


@functools.cache
def _fused_rnn_patches() -> list[tuple[Any, str, Any]] | str:
    try:
        import keras
        from keras.src import backend as keras_backend
        from keras.src.backend.torch.core import convert_to_tensor

        keras_torch = importlib.import_module("keras.src.backend.torch")
        # not `from keras.src.backend.torch import rnn`: that name is Keras's rnn function
        keras_rnn = importlib.import_module("keras.src.backend.torch.rnn")
    except ImportError as err:
        return f"Keras's torch rnn module cannot be imported ({err})"
    for name, arguments in (
        ("gru", _KERAS_GRU),
        ("lstm", _KERAS_LSTM),
        ("prepare_lstm_params", _KERAS_PREPARE),
    ):
        problem = _signature_problem(getattr(keras_rnn, name, None), name, arguments)
        if problem:
            return problem
    layers_call = [getattr(keras_backend, name, None) for name in ("gru", "lstm")]
    if layers_call != [keras_rnn.gru, keras_rnn.lstm]:
        return "keras.src.backend's gru and lstm are not keras.src.backend.torch.rnn's"
    import torch

    if not (
        callable(getattr(torch._VF, "gru", None))
        and callable(getattr(torch._VF, "lstm", None))
        and hasattr(torch._C, "_AutoDispatchBelowAutograd")
    ):
        return "torch._VF.gru, torch._VF.lstm or torch._C._AutoDispatchBelowAutograd is missing"
    ops = _fused_rnn_ops()
    keras_gru, keras_lstm = keras_rnn.gru, keras_rnn.lstm
    prepare_lstm = keras_rnn.prepare_lstm_params
    tanh = (keras.activations.tanh, keras.ops.tanh, torch.tanh)
    sigmoid = (keras.activations.sigmoid, keras.ops.sigmoid, torch.sigmoid)

    def fusable(activation: Any, recurrent_activation: Any, unroll: Any, bias: Any) -> bool:
        """Keras's cudnn_ok without its CUDA condition, and not while torch.jit or dynamo traces
        (Keras's own conditions for its cuDNN path)."""
        return (
            activation in tanh
            and recurrent_activation in sigmoid
            and not unroll
            and bias is not None
            and not torch.jit.is_tracing()
            and not torch.compiler.is_compiling()
        )

    def torch_gate_order(units: int) -> list[int]:
        """The rows of a (3*units, ...) GRU weight in torch's gate order [r, z, h], taken from
        Keras's [z, r, h] (the reorder of Keras's prepare_gru_params)."""
        z, r, h = (range(gate * units, (gate + 1) * units) for gate in range(3))
        return [*r, *z, *h]

    def prepare_gru(kernel: Any, recurrent_kernel: Any, bias: Any) -> list[Any]:
        """Keras's prepare_gru_params as one `index_select` per weight: the same values, with 3
        ops and 3 backward nodes where Keras's chunks, concatenations and copies take 14 and 8
        (forward and backward, measured alone: 0.08 ms above plain transposes, against 0.22)."""
        # made in each call (in a captured graph, a constant), not cached: one made first
        # under a trace of fake tensors would be fake
        order = torch.tensor(torch_gate_order(recurrent_kernel.shape[0]), device=kernel.device)
        bias_ih, bias_hh = bias.index_select(1, order).unbind(0)
        return [
            kernel.t().index_select(0, order),
            recurrent_kernel.t().index_select(0, order),
            bias_ih,
            bias_hh,
        ]

    def as_batch_first_state(state: Any) -> Any:
        # Keras's _cudnn_gru/_cudnn_lstm: (batch, units) or (batch, 1, units) -> (1, batch, units)
        if state.dim() == 2:
            return state.unsqueeze(0)
        if state.dim() == 3 and state.shape[1] == 1:
            return state.permute(1, 0, 2)
        return state

    def gru(
        inputs: Any, initial_state: Any, mask: Any, kernel: Any, recurrent_kernel: Any,
        bias: Any, activation: Any, recurrent_activation: Any, return_sequences: bool = False,
        go_backwards: bool = False, unroll: bool = False, reset_after: bool = True,
    ) -> Any:  # fmt: skip
        arguments = (
            inputs, initial_state, mask, kernel, recurrent_kernel, bias, activation,
            recurrent_activation, return_sequences, go_backwards, unroll, reset_after,
        )  # fmt: skip
        if not reset_after or mask is not None:
            return keras_gru(*arguments)  # raises NotImplementedError: Keras's generic loop
        if not fusable(activation, recurrent_activation, unroll, bias):
            return keras_gru(*arguments)
        kernel = convert_to_tensor(kernel)
        recurrent_kernel = convert_to_tensor(recurrent_kernel)
        bias = convert_to_tensor(bias)
        inputs = convert_to_tensor(inputs).to(kernel.dtype)
        state = as_batch_first_state(convert_to_tensor(initial_state).to(kernel.dtype))
        if go_backwards:
            inputs = torch.flip(inputs, dims=[1])
        params = prepare_gru(kernel, recurrent_kernel, bias)
        outputs, h_n = ops.gru(inputs, state, params)
        # The last output is h_n: the gradient then reaches the op's last step directly, where
        # through `outputs[:, -1]` it would pass each step's zeros through the stack's backward.
        last_output = h_n[0]
        if not return_sequences:
            outputs = last_output.unsqueeze(1)
        return last_output, outputs, [h_n.squeeze(0)]

    def lstm(
        inputs: Any, initial_state_h: Any, initial_state_c: Any, mask: Any, kernel: Any,
        recurrent_kernel: Any, bias: Any, activation: Any, recurrent_activation: Any,
        return_sequences: bool = False, go_backwards: bool = False, unroll: bool = False,
        batch_first: bool = True,
    ) -> Any:  # fmt: skip
        if mask is not None or not fusable(activation, recurrent_activation, unroll, bias):
            return keras_lstm(
                inputs, initial_state_h, initial_state_c, mask, kernel, recurrent_kernel, bias,
                activation, recurrent_activation, return_sequences, go_backwards, unroll,
                batch_first,
            )  # fmt: skip
        kernel = convert_to_tensor(kernel)
        recurrent_kernel = convert_to_tensor(recurrent_kernel)
        bias = convert_to_tensor(bias)
        inputs = convert_to_tensor(inputs).to(kernel.dtype)
        h0 = as_batch_first_state(convert_to_tensor(initial_state_h).to(kernel.dtype))
        c0 = as_batch_first_state(convert_to_tensor(initial_state_c).to(kernel.dtype))
        if not batch_first:
            inputs = inputs.permute(1, 0, 2)
        if go_backwards:
            inputs = torch.flip(inputs, dims=[1])
        params = prepare_lstm(kernel, recurrent_kernel, bias, inputs.device)
        outputs, h_n, c_n = ops.lstm(inputs, h0, c0, params)
        last_output = h_n[0]  # as the GRU's
        if not return_sequences:
            outputs = last_output.unsqueeze(1)
        if not batch_first:
            outputs = outputs.permute(1, 0, 2)
        return last_output, outputs, [h_n.squeeze(0), c_n.squeeze(0)]

    return [
        (module, name, function)
        for module in (keras_backend, keras_torch, keras_rnn)
        for name, function in (("gru", gru), ("lstm", lstm))
    ]


@contextlib.contextmanager
def fused_rnn() -> Iterator[None]:
    """Inside: Keras's GRU and LSTM layers on torch run as one fused op per call on any device
    (`dualtrain::gru`, `dualtrain::lstm`: torch's `_VF.gru` and `_VF.lstm`, the ops torch.nn's
    GRU and LSTM run, engines/torch_rnn.py), where Keras's torch backend runs them only on CUDA
    and elsewhere loops over the time steps in Python, about 15 ops per step.

    Keras's layers call `keras.src.backend.gru`/`lstm` (keras.src.backend.torch.rnn's); these are
    replaced for the duration (the torch engine's steps only, as counter_random). Where Keras's
    own cuDNN conditions hold but for the device (tanh and sigmoid activations, no unroll, a
    bias, GRU reset_after=True, no mask, not inside torch.jit or torch.compile tracing), the
    layer runs the op, with Keras's prepare_lstm_params (and its GRU reorder) for the weights and
    its _cudnn_gru/_cudnn_lstm's shapes; otherwise Keras's own function (its Python loop, or
    NotImplementedError so the layer runs its generic loop). Same values to float32 rounding
    (tested against Keras's loop). Checked once: the functions take Keras's arguments and torch
    has the ops. Otherwise one info line, and Keras's own.
    """
    with _swapped("fused_rnn", _fused_rnn_patches(), "GRU and LSTM layers loop in Python on torch"):
        yield


# -- Keras on TensorFlow: LeakyReLU in the graphs that take gradients ---------------------------


@functools.cache
def _leaky_relu_patch() -> list[tuple[Any, str, Any]] | str:
    try:
        from keras.src.backend.tensorflow import nn as keras_tf_nn
    except ImportError as err:
        return f"Keras's TensorFlow ops cannot be imported ({err})"
    problem = _signature_problem(
        getattr(keras_tf_nn, "leaky_relu", None), "leaky_relu", ["x", "negative_slope"]
    )
    if problem:
        return problem
    import tensorflow as tf

    def leaky_relu(x: Any, negative_slope: float = 0.2) -> Any:
        x = tf.convert_to_tensor(x)
        return tf.where(x > 0, x, x * tf.cast(negative_slope, x.dtype))

    return [(keras_tf_nn, "leaky_relu", leaky_relu)]


@contextlib.contextmanager
def leaky_relu_as_select() -> Iterator[None]:
    """Inside: Keras's `leaky_relu` on TensorFlow (the LeakyReLU layer, the activation, the op)
    is `where(x > 0, x, x * slope)`, not TensorFlow's LeakyRelu op: the same values and the same
    gradient (`slope` at 0, as LeakyReluGrad's and torch's).

    For the graphs that take gradients (engines/tensorflow.py): there, grappler's remapper fuses
    a Conv2D, its BiasAdd and a LeakyRelu although the gradient (LeakyReluGrad) still reads the
    BiasAdd (a Dense or a Conv1D before the LeakyReLU did not show it); the remapper then
    fails, prints an `E ... remapper failed: INVALID_ARGUMENT: ... LeakyReluGrad ... BiasAdd`
    line, and the graph loses all of its remapper fusions (TensorFlow 2.21). Graphs without
    gradients keep the op and its fusion.
    Checked once: Keras's `leaky_relu` takes (x, negative_slope). Otherwise one info line, and
    TensorFlow's op.
    """
    with _swapped(
        "leaky_relu_as_select", _leaky_relu_patch(), "LeakyReLU runs TensorFlow's LeakyRelu op"
    ):
        yield


# -- Keras on TensorFlow under tf.distribute (engines/tf_distribute.py) --------------------------


def skip_optimizer_all_reduce(optimizer: Any) -> None:
    """Stops a Keras TensorFlow optimizer from summing gradients across replicas in `apply`.

    Keras 3's TensorFlow optimizer sums the gradients across replicas
    (`TFOptimizer._all_reduce_sum_gradients(grads_and_vars)`) for its own trainer, which divided
    the loss by the number of replicas. dualtrain's steps reduce the gradients themselves
    (weighted by each replica's share of the batch, and before clipping), so the sum is replaced
    by the identity on this optimizer (and its inner optimizer); Keras offers no public switch.
    Checked at set-up: the method exists and takes (grads_and_vars). Otherwise no public path
    gives the same gradients (Keras would sum them a second time, multiplying them by the number
    of replicas), so this refuses with a RunError instead of training with other numbers.
    """
    from dualtrain.errors import RunError

    for target in (optimizer, getattr(optimizer, "inner_optimizer", None)):
        if target is None:
            continue
        problem = _signature_problem(
            getattr(target, "_all_reduce_sum_gradients", None),
            "the TensorFlow optimizer's _all_reduce_sum_gradients",
            ("grads_and_vars",),
        )
        if problem is not None:
            raise RunError(
                f"{problem}: dualtrain's tf.distribute support was checked against keras "
                f"{WRITTEN_FOR['keras']}; use backend.strategy=none with this Keras"
            )
        target._all_reduce_sum_gradients = _as_list


def _as_list(grads_and_vars: Any) -> list[Any]:
    return list(grads_and_vars)


def _keras_loss_module() -> Any:
    from keras.src.losses import loss as keras_loss

    return keras_loss


def check_unscaled_keras_losses() -> None:
    """Raises RunError unless `unscaled_keras_losses` can work with this Keras (set-up check:
    `keras.src.losses.loss.scale_loss_for_distribution(value)` exists)."""
    from dualtrain.errors import RunError

    try:
        function = getattr(_keras_loss_module(), "scale_loss_for_distribution", None)
    except ImportError:
        function = None
    problem = _signature_problem(
        function, "keras.src.losses.loss.scale_loss_for_distribution", ("value",)
    )
    if problem is not None:
        raise RunError(
            f"{problem}: dualtrain's tf.distribute support was checked against keras "
            f"{WRITTEN_FOR['keras']}; use backend.strategy=none with this Keras"
        )


@contextlib.contextmanager
def unscaled_keras_losses() -> Iterator[None]:
    """Inside: Keras losses return the plain mean of a replica's batch, as outside tf.distribute.

    Under a strategy, Keras 3's mean-reduced losses divide by the number of replicas
    (`keras.src.losses.loss.scale_loss_for_distribution`, looked up by `Loss.__call__` at each
    call) for its own trainer, which sums the replicas' gradients. dualtrain's steps weight each
    replica by its share of the batch themselves, and a recipe's loss written in keras.ops is
    not divided: the division would scale only the Keras losses. Keras has no public switch.
    The division is decided while tf.function traces a step, so the engine wraps the Python
    bodies it traces (no cost per step), and the module's function is restored on the way out.
    `check_unscaled_keras_losses` checks the internal at set-up; without it, this refuses.
    """
    module = _keras_loss_module()
    saved = module.scale_loss_for_distribution
    module.scale_loss_for_distribution = _identity
    try:
        yield
    finally:
        module.scale_loss_for_distribution = saved


def _identity(value: Any) -> Any:
    return value


def cross_device_ops_name(strategy: Any) -> str:
    """The class name of a MirroredStrategy's cross-device reduction (for run info only).

    tf.distribute keeps the object in `strategy.extended._cross_device_ops`, with no public
    getter. A missing attribute gives "unknown" with one info line; None (TensorFlow chooses
    at the first reduction) gives "object", as before.
    """
    extended = getattr(strategy, "extended", None)
    if extended is None or not hasattr(extended, "_cross_device_ops"):
        _fall_back(
            "cross_device_ops_name",
            "tensorflow",
            "the strategy has no extended._cross_device_ops",
            "run info says backend=unknown",
        )
        return "unknown"
    return type(extended._cross_device_ops or object()).__name__


# -- TensorFlow: reading the profiler's trace (engines/tf_profile.py) ----------------------------


@functools.cache
def _xplane_module() -> Any:
    name = "tensorflow.tsl.profiler.protobuf.xplane_pb2"
    try:
        xplane_pb2 = importlib.import_module(name)
    except ImportError as err:
        return f"{name} cannot be imported ({err})"
    space = getattr(xplane_pb2, "XSpace", None)
    fields = getattr(getattr(space, "DESCRIPTOR", None), "fields_by_name", {})
    if "planes" not in fields:
        return f"{name} has no XSpace with planes"
    return xplane_pb2


def xplane_module() -> ModuleType | None:
    """The protobuf module of the profiler's `.xplane.pb` files (`XSpace`), or None.

    `tf.profiler.experimental` writes traces but has no public API to read them; TensorFlow
    ships the generated protobuf module under its private `tsl` tree (TensorBoard's profile
    plugin reads the same files with its own copy, which dualtrain does not require). Checked
    once: the module imports and its XSpace has planes. Otherwise None with one info line: the
    trace is still written for TensorBoard, and profile.md is not.
    """
    module = _xplane_module()
    if isinstance(module, str):
        _fall_back("xplane_module", "tensorflow", module, "the trace is written, profile.md is not")
        return None
    return module


# -- Hydra (cli.py, config_errors.py) ------------------------------------------------------------


def share_hydra_config_repository() -> bool:
    """Makes Hydra's `--help` copy the config repository once per config and overrides instead
    of once per config group (most of `--help`'s 2 s); returns whether it did.

    Hydra 1.3's `ConfigLoaderImpl.get_group_options(group_name, results_filter, config_name,
    overrides)` builds a new repository with `_parse_overrides_and_create_caching_repo(
    config_name, overrides)` on every call; there is no public cache. The replacement keeps one
    per (loader, config, overrides). Checked at set-up (only for --help): both methods exist
    with those parameters. Otherwise one info line and Hydra's own (slower) path.
    """
    try:
        from hydra._internal.config_loader_impl import ConfigLoaderImpl
        from hydra.core.object_type import ObjectType
    except ImportError as err:
        problem: str | None = f"hydra._internal.config_loader_impl cannot be imported ({err})"
    else:
        problem = _signature_problem(
            getattr(ConfigLoaderImpl, "get_group_options", None),
            "ConfigLoaderImpl.get_group_options",
            ("self", "group_name", "results_filter", "config_name", "overrides"),
        ) or _signature_problem(
            getattr(ConfigLoaderImpl, "_parse_overrides_and_create_caching_repo", None),
            "ConfigLoaderImpl._parse_overrides_and_create_caching_repo",
            ("self", "config_name", "overrides"),
        )
    if problem is not None:
        _fall_back("share_hydra_config_repository", "hydra-core", problem, "--help is slower")
        return False
    repositories: dict[tuple[int, str | None, tuple[str, ...]], Any] = {}

    def get_group_options(
        self: Any,
        group_name: str,
        results_filter: Any = ObjectType.CONFIG,
        config_name: str | None = None,
        overrides: list[str] | None = None,
    ) -> list[str]:
        key = (id(self), config_name, tuple(overrides or ()))
        if key not in repositories:
            _, repositories[key] = self._parse_overrides_and_create_caching_repo(
                config_name, list(overrides or ())
            )
        return repositories[key].get_group_options(group_name, results_filter)

    ConfigLoaderImpl.get_group_options = get_group_options  # type: ignore[method-assign]
    return True


def hydra_args_parser() -> Any:
    """Hydra's own command-line parser (`hydra._internal.utils.get_args_parser()`), or None.

    `@hydra.main` parses the command line itself and prints a usage block on a mistake; using
    its parser first lets dualtrain check the command line and report one line. Hydra has no
    public accessor. Checked when the CLI starts: the function exists and takes no arguments.
    Otherwise one info line and None: Hydra checks the command line itself, as before.
    """
    try:
        from hydra._internal import utils
    except ImportError as err:
        problem: str | None = f"hydra._internal.utils cannot be imported ({err})"
    else:
        function = getattr(utils, "get_args_parser", None)
        problem = _signature_problem(function, "hydra._internal.utils.get_args_parser", ())
        if problem is None and _parameters(function):
            problem = "hydra._internal.utils.get_args_parser takes arguments"
    if problem is not None:
        _fall_back(
            "hydra_args_parser", "hydra-core", problem, "Hydra checks the command line itself"
        )
        return None
    return utils.get_args_parser()


@contextlib.contextmanager
def hydra_errors_unreported() -> Iterator[bool]:
    """Inside: errors Hydra meets while composing the config and starting the job reach the
    caller instead of Hydra's reporter; yields whether that is so.

    Hydra 1.3's `_run_hydra` wraps its steps in `hydra._internal.utils.run_and_report(func)`,
    which prints the error (a traceback, or several lines) and exits 1; there is no public
    option to raise instead. It is replaced by a plain call for the duration and restored.
    Checked on entry: the function exists and takes (func). Otherwise one info line, and Hydra
    reports its own errors as before.
    """
    try:
        from hydra._internal import utils
    except ImportError as err:
        problem: str | None = f"hydra._internal.utils cannot be imported ({err})"
    else:
        original = getattr(utils, "run_and_report", None)
        problem = _signature_problem(original, "hydra._internal.utils.run_and_report", ("func",))
    if problem is not None:
        _fall_back("hydra_errors_unreported", "hydra-core", problem, "Hydra reports its own errors")
        yield False
        return
    utils.run_and_report = _call
    try:
        yield True
    finally:
        utils.run_and_report = original  # type: ignore[assignment]


def _call(func: Any) -> Any:
    return func()


# -- TensorBoard (logging/tensorboard.py) --------------------------------------------------------


def tensorboard_without_tensorflow() -> bool:
    """Makes the `tensorboard` package write event files with its TF-free stub, unless TensorFlow
    is already loaded; returns whether the stub is in use.

    tensorboard's file I/O (`tensorboard.compat.tf`) imports TensorFlow when it is installed,
    which takes seconds and much memory in a torch run, unless a module
    `tensorboard.compat.notf` exists (the switch its own TF-free builds use); there is no
    public option. Checked at set-up: with the switch in place, `tensorboard.compat.tf` is the
    stub. Otherwise one info line, and tensorboard uses TensorFlow as it chooses.
    """
    if "tensorflow" in sys.modules:
        return False
    sys.modules.setdefault("tensorboard.compat.notf", ModuleType("tensorboard.compat.notf"))
    import tensorboard.compat

    module = getattr(tensorboard.compat, "tf", None)
    try:
        dir(module)  # loads a lazy module: its name becomes the loaded module's
    except ImportError:
        module = None
    name = getattr(module, "__name__", None)
    if name != "tensorboard.compat.tensorflow_stub":
        _fall_back(
            "tensorboard_without_tensorflow",
            "tensorboard",
            f"with tensorboard.compat.notf in place, tensorboard.compat.tf is {name}",
            "tensorboard may load TensorFlow to write event files",
        )
        return False
    return True


# -- TensorFlow's op determinism (trainer.deterministic) -----------------------------------------


def _tf_determinism_config() -> Any:
    from tensorflow.python.framework import config

    return config


def disable_tf_op_determinism() -> None:
    """`trainer.deterministic=false` on tf: turns op determinism off for the process.

    TensorFlow's public API only turns it on (`tf.config.experimental.enable_op_determinism`);
    the switch back is `tensorflow.python.framework.config.disable_op_determinism`, which
    TensorFlow's own tests use. Missing: one line, and the process keeps the setting it has
    (off unless something in it turned determinism on).
    """
    disable = getattr(_tf_determinism_config(), "disable_op_determinism", None)
    if disable is None:
        _fall_back(
            "disable_tf_op_determinism",
            "tensorflow",
            "tensorflow.python.framework.config.disable_op_determinism is missing",
            "op determinism stays as this process has it",
        )
        return
    disable()


def tf_op_determinism_enabled() -> bool:
    """Whether TensorFlow's op determinism is on (TensorFlow has no public query)."""
    return bool(_tf_determinism_config().is_op_determinism_enabled())
