"""GRU and LSTM layers: on torch one fused op per layer call (compat.fused_rnn,
engines/torch_rnn.py) with the values and gradients of Keras's own loop, one node in the captured
forward graph; on both backends, captured (or graph-compiled) steps give debug=eager's values."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.backend.conftest import BACKEND
from tests.backend.test_capture import _train, _user_engine, _variables

# float32: the fused op and Keras's loop do the same arithmetic in another order (torch's GRU
# and LSTM cells add the biases and gates in other groupings): about 1e-7 relative per op.
RTOL = 1e-5
STEPS = 24  # time steps: Keras's loop would record about 15 ops for each

torch_only = pytest.mark.skipif(BACKEND != "torch", reason="the fused ops are torch's")


def _layer(name: str) -> Any:
    import keras

    kind, *options = name.split("-")
    keras.utils.set_random_seed(0)  # the same weights in every run
    layer = {"gru": keras.layers.GRU, "lstm": keras.layers.LSTM}[kind]
    layer = layer(
        5, return_sequences="sequences" in options, go_backwards="backwards" in options, seed=1
    )
    layer.build((None, STEPS, 3))
    return layer


def _device(layer: Any) -> Any:
    return layer.trainable_variables[0].value.device


def _outputs_and_gradients(layer: Any, x: np.ndarray) -> list[np.ndarray]:
    """The layer's output and the gradients of a weighted sum of it (input, every weight)."""
    import torch

    device = _device(layer)
    inputs = torch.tensor(x, device=device, requires_grad=True)
    output = layer(inputs)
    weights = torch.linspace(-1.0, 1.0, output.numel(), device=device).reshape(output.shape)
    wrt = [inputs, *[v.value for v in layer.trainable_variables]]
    gradients = torch.autograd.grad((output * weights).sum(), wrt)
    return [t.detach().cpu().numpy() for t in (output, *gradients)]


LAYERS = ["gru", "gru-sequences-backwards", "lstm", "lstm-sequences-backwards"]


@torch_only
@pytest.mark.parametrize("name", LAYERS)
def test_the_fused_op_gives_kerass_loop_values_and_gradients_as_one_graph_node(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib

    import torch
    from torch.fx.experimental.proxy_tensor import make_fx

    from dualtrain import compat
    from dualtrain.engines import torch_rnn

    x = np.random.default_rng(0).normal(size=(4, STEPS, 3)).astype("float32")
    layer = _layer(name)
    # The reference: Keras's own Python loop (_fallback_gru, _fallback_lstm), on a GPU too.
    keras_rnn = importlib.import_module("keras.src.backend.torch.rnn")
    with monkeypatch.context() as patch:
        patch.setattr(keras_rnn, "_is_cuda_cudnn_available", lambda: False)
        loop = _outputs_and_gradients(layer, x)
    with compat.fused_rnn():
        fused = _outputs_and_gradients(layer, x)
        with torch_rnn.traced(torch_rnn.ONE_NODE):
            graph = make_fx(layer)(torch.tensor(x, device=_device(layer)))
    for got, expected in zip(fused, loop, strict=True):
        # A gradient is a sum whose terms reach the array's largest values: an element near
        # zero keeps the round-off of those terms, so atol scales with them.
        atol = RTOL * float(np.abs(expected).max())
        np.testing.assert_allclose(got, expected, rtol=RTOL, atol=atol)
    targets = [str(n.target) for n in graph.graph.nodes if n.op == "call_function"]
    assert targets.count(f"dualtrain.{name.split('-')[0]}.default") == 1
    # No time loop: besides the op, the weights' reordering and the output's shapes (18 ops
    # each); Keras's loop records about 15 a step, a matmul among them.
    assert len(targets) < 2 * STEPS and not [t for t in targets if "mm" in t], targets


def _fused_nodes(engine: Any) -> list[str]:
    graphs = [g for capture in engine._captures for g in capture.graphs.values()]
    assert graphs and None not in graphs  # every forward pass ran as a graph
    return [
        str(n.target)
        for g in graphs
        for n in g.module.graph.nodes
        if str(n.target).startswith("dualtrain.")
    ]


@pytest.mark.parametrize("kind", ["gru_lstm", "lstm_tokens", "gru_loops"])
def test_recurrent_models_train_as_debug_eager_does(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bidirectional GRU (all outputs) into an LSTM, and an LSTM over token ids, train to the
    losses and weights of debug=eager. On torch each layer runs the fused op, which the forward
    graph holds once, and gives Keras's loop's losses; a GRU with a mask or reset_after=False
    runs Keras's loop."""
    # gru_loops: token ids; its whole step (2,153 ops) would be traced only to be refused.
    loops = ["data.source=tests.backend.users.layers:load_tokens", "backend.capture_step=false"]
    tokens = loops if kind == "gru_loops" else []
    captured = _user_engine(tmp_path, kind, *tokens)
    losses = _train(captured, 3)
    eager = _user_engine(tmp_path, kind, *tokens, "backend.eager=true")
    np.testing.assert_allclose(losses, _train(eager, 3), rtol=RTOL)
    for path, value in _variables(eager).items():
        np.testing.assert_allclose(_variables(captured)[path], value, rtol=RTOL, atol=1e-6)
    if BACKEND != "torch":
        return
    fused = {
        "gru_lstm": ["dualtrain.gru.default", "dualtrain.gru.default", "dualtrain.lstm.default"],
        "lstm_tokens": ["dualtrain.lstm.default"],
    }
    assert _fused_nodes(captured) == fused.get(kind, [])
    if kind == "gru_loops":
        return
    # The step keeps the forward graph, where the backward pass runs in autograd's C++ engine.
    reason = captured.step_capture()["whole_step_not_captured_because"]
    assert reason.startswith("it runs a GRU or LSTM as one op"), reason
    # The optimizer's update is a graph of its own (its third step ran it: the weights above).
    assert captured.step_capture()["update_graph"] is True
    from dualtrain import compat

    # Keras's own loop, as before: the same losses to float32 rounding.
    monkeypatch.setattr(compat, "_fused_rnn_patches", lambda: "switched off by the test")
    loop = _user_engine(tmp_path, kind, *tokens)
    np.testing.assert_allclose(losses, _train(loop, 3), rtol=RTOL)
    assert _fused_nodes(loop) == []
