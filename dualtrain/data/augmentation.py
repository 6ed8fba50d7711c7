"""`data.augmentation`: Keras preprocessing layers, run on training batches only, on both backends.

Imports Keras: the engines import this module once the backend is chosen.
"""

from __future__ import annotations

from typing import Any

import keras

from dualtrain.errors import RunError


def make_augmentation(
    options: dict[str, Any], input_shape: tuple[int, ...], seed: int
) -> keras.Sequential | None:
    """The layers that `options` names (flip, rotation, zoom, translation, contrast,
    brightness), in that order, each seeded from `seed`; None when there are none."""
    if not options:
        return None
    if len(input_shape) != 3:
        raise RunError(
            f"data.augmentation works on images (height, width, channels); the data has samples "
            f"of shape {input_shape}: drop data.augmentation"
        )
    makers = {
        "flip": lambda v, s: keras.layers.RandomFlip(v, seed=s),
        "rotation": lambda v, s: keras.layers.RandomRotation(v, fill_mode="reflect", seed=s),
        "zoom": lambda v, s: keras.layers.RandomZoom(v, fill_mode="reflect", seed=s),
        "translation": lambda v, s: keras.layers.RandomTranslation(
            v, v, fill_mode="reflect", seed=s
        ),
        "contrast": lambda v, s: keras.layers.RandomContrast(v, seed=s),
        # Images are scaled to [0, 1]: brightness moves within that range.
        "brightness": lambda v, s: keras.layers.RandomBrightness(v, value_range=(0, 1), seed=s),
    }
    layers = [
        make(options[name], seed + i) for i, (name, make) in enumerate(makers.items())
        if name in options
    ]  # fmt: skip
    augmentation = keras.Sequential(layers, name="augmentation")
    augmentation.build((None, *input_shape))
    return augmentation
