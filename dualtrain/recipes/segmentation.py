"""segmentation: a small U-Net that labels every pixel of an image with its class.

The encoder halves the image `len(filters) - 1` times (two 3x3 conv-ReLU layers per level, then
max-pooling); the decoder doubles it back with 2x2 transposed convolutions, each joined with the
encoder's map of the same size (the skip connections of Ronneberger et al., 2015), and a 1x1
conv gives each pixel one logit per class. The loss is the per-pixel cross-entropy; the metric is
the mean intersection over union of the classes (`val/mean_iou`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
from keras import ops

from dualtrain.data import DataInfo
from dualtrain.errors import RunError


def _conv_block(x: Any, filters: int, name: str, batch_norm: bool) -> Any:
    """Two 3x3 convolutions, each followed by batch normalization (optional) and ReLU."""
    for i in (1, 2):
        x = keras.layers.Conv2D(
            filters, 3, padding="same", use_bias=not batch_norm, name=f"{name}_conv{i}"
        )(x)
        if batch_norm:
            x = keras.layers.BatchNormalization(name=f"{name}_bn{i}")(x)
        x = keras.layers.ReLU(name=f"{name}_relu{i}")(x)
    return x


class MeanIoU(keras.metrics.MeanIoU):
    """keras.metrics.MeanIoU with its confusion matrix counted as one matrix product of one-hot
    labels and one-hot predictions.

    Keras's own counts with `ops.scatter`, which the torch backend (Keras 3.15) runs as a Python
    loop over every pixel: 0.2 s for a batch of 32 24x24 masks, ten times a training step. The
    result is the same (the counts of each batch are exact in float32 below 2 ** 24 pixels).
    """

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        if sample_weight is not None:
            raise ValueError("this MeanIoU takes no sample_weight")
        if not self.sparse_y_true:
            y_true = ops.argmax(y_true, axis=self.axis)
        if not self.sparse_y_pred:
            y_pred = ops.argmax(y_pred, axis=self.axis)
        true = ops.one_hot(ops.reshape(ops.cast(y_true, "int32"), (-1,)), self.num_classes)
        pred = ops.one_hot(ops.reshape(ops.cast(y_pred, "int32"), (-1,)), self.num_classes)
        counts = ops.matmul(ops.transpose(true), pred)  # [true class, predicted class]
        self.total_cm.assign_add(ops.cast(counts, self.total_cm.dtype))


def build_model(
    data: DataInfo, filters: Sequence[int] = (16, 32, 64), batch_norm: bool = False
) -> keras.Model:
    """A U-Net with `len(filters)` levels; height and width must divide by 2 ** (levels - 1).

    `batch_norm` adds batch normalization after every conv layer: it learns faster here, but the
    two backends' batch statistics differ by about 1e-6 from the first steps on (Keras 3.15's
    torch backend computes the variance as E[x^2] - E[x]^2), which training amplifies: mode=parity
    fails at 1e-5 by step 6, where the plain U-Net agrees to 1.5e-7 over 40 steps.
    """
    shape = tuple(data.input_shape)
    levels = len(filters)
    if len(shape) != 3 or tuple(data.target_shape) != shape[:2]:
        raise RunError(
            f"recipe segmentation takes images (height, width, channels) with masks (height, "
            f"width) of class indices; the data has samples of shape {shape} and targets of "
            f"shape {tuple(data.target_shape)}"
        )
    if levels < 1 or shape[0] % 2 ** (levels - 1) or shape[1] % 2 ** (levels - 1):
        raise RunError(
            f"recipe segmentation with {levels} levels (recipe.model.filters={list(filters)}) "
            f"needs a height and width divisible by {2 ** (levels - 1)}; the images are "
            f"{shape[0]}x{shape[1]}"
        )
    inputs = keras.Input(shape=shape, name="image")
    x, skips = inputs, []
    for level, n in enumerate(filters[:-1]):
        x = _conv_block(x, n, f"down{level}", batch_norm)
        skips.append(x)
        x = keras.layers.MaxPooling2D(2, name=f"pool{level}")(x)
    x = _conv_block(x, filters[-1], "bottom", batch_norm)
    for level in reversed(range(levels - 1)):
        n = filters[level]
        x = keras.layers.Conv2DTranspose(n, 2, strides=2, name=f"up{level}")(x)
        x = keras.layers.Concatenate(name=f"skip{level}")([x, skips[level]])
        x = _conv_block(x, n, f"dec{level}", batch_norm)
    logits = keras.layers.Conv2D(data.num_classes, 1, name="logits")(x)
    return keras.Model(inputs, logits, name="unet")


def loss() -> keras.losses.Loss:
    """Cross-entropy of every pixel's logits against its class index, averaged over pixels."""
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def metrics(data: DataInfo) -> list[keras.metrics.Metric]:
    """Mean IoU over the classes (each pixel's predicted class is the argmax of its logits),
    and the share of pixels labelled right."""
    return [
        MeanIoU(
            num_classes=data.num_classes, sparse_y_true=True, sparse_y_pred=False, name="mean_iou"
        ),
        keras.metrics.SparseCategoricalAccuracy(name="pixel_accuracy"),
    ]
