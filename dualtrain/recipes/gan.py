"""gan: a small DCGAN on images such as the 8x8 digits, its training step written once.

Each step has two phases, each with its own loss, variables and optimizer: the discriminator
learns to tell the data from the generator's samples, then the generator learns to fool the
discriminator that was just updated (the non-saturating loss of Goodfellow et al., 2014). The
engines compute the gradients: autograd on torch, one GradientTape per phase inside one
tf.function on tf. The noise comes from `keras.random` with a seed generator the model owns, so
checkpoints carry its state and a resumed run draws the same noise.

`SampleGrid` (on by default in configs/recipe/gan.yaml) writes a PNG grid of samples after every
epoch; given a classifier checkpoint, it also logs how many of 1,000 samples the classifier reads
as a confident digit, and how many classes those cover (mode collapse shows there first).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import ops

from dualtrain.callbacks import Callback, TrainingRun
from dualtrain.data import DataInfo
from dualtrain.recipe import Phase


class LatentNoise(keras.layers.Layer):
    """Draws one standard normal code of `dim` numbers per sample of `reference` (its batch).

    `stddev` scales it; mode=parity sets it to 0, as it does the rate of a Dropout layer, since
    the two backends' random generators differ.
    """

    def __init__(self, dim: int, stddev: float = 1.0, seed: int | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.dim, self.stddev = dim, stddev
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, reference: Any) -> Any:
        shape = (ops.shape(reference)[0], self.dim)
        return keras.random.normal(shape, stddev=self.stddev, seed=self.seed_generator)


class GAN(keras.Model):
    """A generator and a discriminator in one model, so that checkpoints, resume and parity treat
    them as one. Calling it runs the discriminator (real-vs-fake logits)."""

    def __init__(
        self, generator: keras.Model, discriminator: keras.Model, latent: int, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.generator = generator
        self.discriminator = discriminator
        self.noise = LatentNoise(latent, name="noise")

    @property
    def input_shape(self) -> tuple[Any, ...]:
        return tuple(self.discriminator.input_shape)

    def call(self, images: Any, training: bool = False) -> Any:
        return self.discriminator(images, training=training)

    def sample(self, reference: Any, training: bool = False) -> Any:
        """As many generated images as `reference` has samples."""
        return self.generator(self.noise(reference), training=training)


def build_model(
    data: DataInfo, latent: int = 32, filters: int = 64, batch_norm: bool = True
) -> GAN:
    """Generator: code -> dense 2x2-downscaled map -> transposed conv (stride 2) -> sigmoid image.
    Discriminator: conv (stride 2) -> conv (stride 2) -> one logit. LeakyReLU as in DCGAN."""
    height, width, channels = data.input_shape
    code = keras.Input(shape=(latent,), name="code")
    x = keras.layers.Dense((height // 2) * (width // 2) * filters)(code)
    if batch_norm:
        x = keras.layers.BatchNormalization()(x)
    x = keras.layers.LeakyReLU(0.2)(x)
    x = keras.layers.Reshape((height // 2, width // 2, filters))(x)
    x = keras.layers.Conv2DTranspose(filters, 4, strides=2, padding="same")(x)
    if batch_norm:
        x = keras.layers.BatchNormalization()(x)
    x = keras.layers.LeakyReLU(0.2)(x)
    image = keras.layers.Conv2D(channels, 3, padding="same", activation="sigmoid")(x)
    generator = keras.Model(code, image, name="generator")

    inputs = keras.Input(shape=data.input_shape, name="image")
    x = keras.layers.Conv2D(filters, 3, strides=2, padding="same")(inputs)
    x = keras.layers.LeakyReLU(0.2)(x)
    x = keras.layers.Conv2D(2 * filters, 3, strides=2, padding="same")(x)
    x = keras.layers.LeakyReLU(0.2)(x)
    x = keras.layers.Flatten()(x)
    logit = keras.layers.Dense(1, name="logit")(x)
    discriminator = keras.Model(inputs, logit, name="discriminator")
    return GAN(generator, discriminator, latent, name="gan")


def discriminator_loss(model: GAN, x: Any, y: Any, training: bool) -> Any:
    """-log D(x) - log(1 - D(G(z))), from logits; the generator is held fixed."""
    fake = ops.stop_gradient(model.sample(x, training=training))
    real_logits = model.discriminator(x, training=training)
    fake_logits = model.discriminator(fake, training=training)
    return ops.mean(ops.softplus(-real_logits)) + ops.mean(ops.softplus(fake_logits))


def generator_loss(model: GAN, x: Any, y: Any, training: bool) -> Any:
    """-log D(G(z)): the non-saturating generator loss."""
    fake_logits = model.discriminator(model.sample(x, training=training), training=training)
    return ops.mean(ops.softplus(-fake_logits))


def phases(model: GAN) -> list[Phase]:
    return [
        Phase("discriminator", discriminator_loss, lambda m: m.discriminator.trainable_variables),
        Phase("generator", generator_loss, lambda m: m.generator.trainable_variables),
    ]


def metrics() -> list[keras.metrics.Metric]:
    return [keras.metrics.Mean(name="real_accuracy"), keras.metrics.Mean(name="fake_accuracy")]


def update_metrics(metrics: list[keras.metrics.Metric], model: GAN, x: Any, y: Any) -> None:
    """How often the discriminator calls data real and samples fake (0.5 each: it is fooled)."""
    real_logits = model.discriminator(x, training=False)
    fake_logits = model.discriminator(model.sample(x), training=False)
    real_accuracy, fake_accuracy = metrics
    real_accuracy.update_state(ops.mean(ops.cast(real_logits > 0, "float32")))
    fake_accuracy.update_state(ops.mean(ops.cast(fake_logits <= 0, "float32")))


def generate(model: GAN, count: int, seed: int) -> np.ndarray:
    """`count` images as a NumPy array, from seeded codes (the same on both backends)."""
    codes = np.random.default_rng(seed).normal(size=(count, model.noise.dim)).astype("float32")
    return ops.convert_to_numpy(model.generator(codes, training=False))


def sample_quality(
    images: np.ndarray, classifier: keras.Model, confidence: float = 0.9
) -> dict[str, float]:
    """What a digit classifier makes of generated images.

    Returns:
        `sample_confident`: the share it assigns to one class with probability >= `confidence`;
        `sample_classes`: how many classes those confident samples cover.
    """
    logits = ops.convert_to_numpy(classifier(images, training=False))
    logits = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    confident = probs.max(axis=1) >= confidence
    classes = np.unique(probs.argmax(axis=1)[confident])
    return {"sample_confident": float(confident.mean()), "sample_classes": float(len(classes))}


def image_grid(images: np.ndarray, columns: int = 8, scale: int = 4) -> np.ndarray:
    """Images (n, h, w, c) tiled into one array, each enlarged `scale` times, 1 px apart."""
    count, height, width, channels = images.shape
    rows = -(-count // columns)
    big_h, big_w = height * scale, width * scale
    grid = np.ones(((big_h + 1) * rows - 1, (big_w + 1) * columns - 1, channels), "float32")
    for index, image in enumerate(images):
        row, column = divmod(index, columns)
        top, left = row * (big_h + 1), column * (big_w + 1)
        grid[top : top + big_h, left : left + big_w] = np.kron(image, np.ones((scale, scale, 1)))
    return np.clip(grid, 0.0, 1.0)


class SampleGrid(Callback):
    """After every `every_n_epochs` epochs: `samples/epoch-NNNN.png`, a grid of `count` samples
    from the same fixed codes each time, so the grids show the generator learning.

    Args:
        classifier: a run or checkpoint directory of a classifier of the same data (recipe=cnn);
            if given, `val/sample_confident` and `val/sample_classes` are logged each epoch from
            `quality_samples` samples (see `sample_quality`).
        classifier_recipe: the classifier's recipe module, when it is a recipe of your own (a
            module named inside a checkpoint is imported only when you name it too).
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        count: int = 64,
        classifier: str | None = None,
        classifier_recipe: str | None = None,
        quality_samples: int = 1000,
        seed: int = 0,
    ) -> None:
        self.every_n_epochs, self.count, self.seed = every_n_epochs, count, seed
        self.classifier_path, self.quality_samples = classifier, quality_samples
        self.classifier_recipe = classifier_recipe
        self.classifier: keras.Model | None = None

    def on_train_begin(self, run: TrainingRun) -> None:
        if self.classifier_path:
            from dualtrain.loading import load_model

            self.classifier = load_model(self.classifier_path, recipe=self.classifier_recipe)

    def on_validation_end(self, run: TrainingRun, metrics: dict[str, float]) -> None:
        model = run.engine.model
        if self.classifier is not None:
            images = generate(model, self.quality_samples, self.seed + 1)
            metrics.update(sample_quality(images, self.classifier))

    def on_epoch_end(self, run: TrainingRun, epoch: int) -> None:
        if run.run_dir is None or (epoch + 1) % self.every_n_epochs:
            return
        import matplotlib.image

        grid = image_grid(generate(run.engine.model, self.count, self.seed))
        path = Path(run.run_dir) / "samples" / f"epoch-{epoch + 1:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        matplotlib.image.imsave(path, grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray")
