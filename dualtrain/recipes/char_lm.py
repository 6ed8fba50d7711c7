"""char_lm: a small causal Transformer that predicts the next character of Python source.

Token and position embeddings, `blocks` pre-norm Transformer blocks (causal multi-head
self-attention, then a GELU MLP, each added back to its input), a final LayerNorm and one logit
per character of the vocabulary at every position. The loss is the mean cross-entropy of every
position's next character; `val/bits_per_char` is the same in bits (nats / ln 2), the usual figure
of a character model (a model that knows only each character's frequency scores about 4.5 on the
standard library's source, data=stdlib_text).

`TextSamples` (on by default in configs/recipe/char_lm.yaml) writes `samples/epoch-NNNN.txt`
after every epoch: text the model generates, one character at a time, from fixed prompts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import ops

from dualtrain.callbacks import Callback, TrainingRun
from dualtrain.data import DataInfo
from dualtrain.data.text import decode, encode
from dualtrain.errors import RunError


class PositionEmbedding(keras.layers.Layer):
    """Adds a learned vector per position to a (batch, length, width) sequence."""

    def __init__(self, length: int, width: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.length, self.width = length, width

    def build(self, input_shape: Any) -> None:
        self.positions = self.add_weight(
            shape=(self.length, self.width),
            initializer=keras.initializers.RandomNormal(stddev=0.02),
            name="positions",
        )

    def call(self, x: Any) -> Any:
        return x + self.positions[None, : ops.shape(x)[1], :]


def _block(x: Any, width: int, heads: int, mlp_ratio: int, dropout: float, name: str) -> Any:
    """x + attention(LN(x)), then x + MLP(LN(x)); the attention sees no later position."""
    h = keras.layers.LayerNormalization(epsilon=1e-5, name=f"{name}_ln1")(x)
    h = keras.layers.MultiHeadAttention(
        heads, width // heads, dropout=dropout, name=f"{name}_attention"
    )(h, h, use_causal_mask=True)
    x = keras.layers.Add(name=f"{name}_add1")([x, h])
    h = keras.layers.LayerNormalization(epsilon=1e-5, name=f"{name}_ln2")(x)
    h = keras.layers.Dense(mlp_ratio * width, activation="gelu", name=f"{name}_mlp1")(h)
    h = keras.layers.Dense(width, name=f"{name}_mlp2")(h)
    if dropout:
        h = keras.layers.Dropout(dropout, name=f"{name}_dropout")(h)
    return keras.layers.Add(name=f"{name}_add2")([x, h])


def build_model(
    data: DataInfo,
    width: int = 64,
    heads: int = 4,
    blocks: int = 2,
    mlp_ratio: int = 4,
    dropout: float = 0.0,
) -> keras.Model:
    """Character ids (batch, length) -> next-character logits (batch, length, vocabulary)."""
    shape = tuple(data.input_shape)
    if len(shape) != 1 or tuple(data.target_shape) != shape:
        raise RunError(
            "recipe char_lm takes sequences of character ids (length,) with targets of the same "
            f"length (the next characters); the data has samples of shape {shape} and targets "
            f"of shape {tuple(data.target_shape)}"
        )
    if width % heads:
        raise RunError(f"recipe.model.width={width} must divide by recipe.model.heads={heads}")
    vocabulary = data.num_classes
    inputs = keras.Input(shape=shape, dtype="int32", name="ids")
    x = keras.layers.Embedding(vocabulary, width, name="tokens")(inputs)
    x = PositionEmbedding(shape[0], width, name="positions")(x)
    for i in range(blocks):
        x = _block(x, width, heads, mlp_ratio, dropout, f"block{i}")
    x = keras.layers.LayerNormalization(epsilon=1e-5, name="final_ln")(x)
    logits = keras.layers.Dense(vocabulary, name="logits")(x)
    return keras.Model(inputs, logits, name="char_lm")


def loss() -> keras.losses.Loss:
    """The mean cross-entropy (nats) of the next character at every position."""
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


class BitsPerChar(keras.metrics.Metric):
    """The mean cross-entropy of every predicted character, in bits."""

    def __init__(self, name: str = "bits_per_char", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        if sample_weight is not None:
            raise ValueError("BitsPerChar takes no sample_weight")
        nats = keras.losses.sparse_categorical_crossentropy(y_true, y_pred, from_logits=True)
        self.total.assign_add(ops.sum(ops.cast(nats, "float32")))
        self.count.assign_add(ops.cast(ops.size(nats), "float32"))

    def result(self) -> Any:
        return self.total / ops.maximum(self.count, 1.0) / math.log(2.0)


def metrics() -> list[keras.metrics.Metric]:
    return [BitsPerChar(), keras.metrics.SparseCategoricalAccuracy(name="accuracy")]


def generate(
    model: keras.Model,
    prompts: Sequence[str],
    length: int,
    temperature: float = 0.8,
    seed: int = 0,
) -> list[str]:
    """Each prompt continued by `length` characters, one at a time: each from the model's
    next-character distribution at `temperature`, drawn with a NumPy generator of `seed` (0:
    the most likely character). The model sees the last `seq_len` characters, newlines before
    the prompt where there are fewer."""
    seq_len = int(model.input_shape[1])
    rng = np.random.default_rng(seed)
    ids = [list(encode("\n" * seq_len + prompt)) for prompt in prompts]
    for _ in range(length):
        window = np.array([row[-seq_len:] for row in ids], dtype="int32")
        # predict_on_batch: one compiled call on tf (15x faster there than an eager call).
        logits = np.asarray(model.predict_on_batch(window))[:, -1, :].astype("float64")
        for row, scores in zip(ids, logits, strict=True):
            if temperature <= 0:
                row.append(int(scores.argmax()))
                continue
            scores = (scores - scores.max()) / temperature
            probs = np.exp(scores) / np.exp(scores).sum()
            row.append(int(rng.choice(len(probs), p=probs)))
    return [prompt + decode(row[-length:]) for prompt, row in zip(prompts, ids, strict=True)]


class TextSamples(Callback):
    """After every `every_n_epochs` epochs: `samples/epoch-NNNN.txt`, the text the model
    generates from each of `prompts` (`length` characters; see `generate`), so the files show
    the model learning. Only the run's model is used: nothing is loaded or imported."""

    def __init__(
        self,
        every_n_epochs: int = 1,
        prompts: Sequence[str] = ("def ", "class ", "import "),
        length: int = 160,
        temperature: float = 0.8,
        seed: int = 0,
    ) -> None:
        self.every_n_epochs, self.prompts, self.length = every_n_epochs, list(prompts), length
        self.temperature, self.seed = temperature, seed

    def on_epoch_end(self, run: TrainingRun, epoch: int) -> None:
        if run.run_dir is None or (epoch + 1) % self.every_n_epochs:
            return
        texts = generate(run.engine.model, self.prompts, self.length, self.temperature, self.seed)
        path = Path(run.run_dir) / "samples" / f"epoch-{epoch + 1:04d}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        header = f"# epoch {epoch + 1}, temperature {self.temperature}, seed {self.seed}\n"
        path.write_text(
            header
            + "".join(
                f"\n--- prompt {p!r} ---\n{t}\n" for p, t in zip(self.prompts, texts, strict=True)
            ),
            encoding="utf-8",
        )
