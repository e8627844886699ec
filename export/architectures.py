"""The architecture registry: the designs this project started from, and our compact CNN for serving.

Every network takes the preprocessing contract's single-channel (S, S, 1) input in [0, 1]; three-channel
designs repeat the channel inside the graph. Each builder returns `(model, feature_layer_name)`: the model
maps the image to logits (1 for binary, K for more classes); designs that end in global average pooling
name the last convolutional feature map so the export step can compute an exact class activation map.

`weights="imagenet"` (VGG16, ResNet50) is for users who already have the Keras weight files in
`~/.keras/models`; nothing is downloaded here, and the default is training from scratch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_IMAGENET_CAFFE_MEAN = [103.939, 116.779, 123.68]


@dataclass(frozen=True)
class Architecture:
    name: str
    input_size: int
    has_cam: bool
    description: str
    build: Callable[..., tuple[Any, str | None]]


def _three_channels(inputs: Any) -> Any:
    from keras import layers

    return layers.Concatenate(name="gray_to_rgb")([inputs, inputs, inputs])


def _head(features: Any, outputs: int, dropout_rate: float) -> Any:
    from keras import layers

    x = layers.GlobalAveragePooling2D(name="gap")(features)
    x = layers.Dropout(dropout_rate, name="head_dropout")(x)
    return layers.Dense(outputs, name="head")(x)


def compact_cnn(
    outputs: int, weights: str | None = None, input_size: int = 224, batch_norm: bool = False
) -> tuple[Any, str | None]:
    """Ours: ~0.3 M parameters, ~0.14 GMAC at 224 px; conv-ReLU stages ending in GAP + dense (exact CAM).

    Strided first layers keep the expensive high-resolution stages thin, which is what makes a CPU fast.
    `batch_norm=True` ("compact-bn") adds batch normalisation (folded into the convolutions on export).
    """
    import keras
    from keras import layers

    if weights is not None:
        raise ValueError("compact has no pretrained weights")

    def conv(x: Any, filters: int, stride: int = 1, name: str = "") -> Any:
        # Without batch normalisation by default: with ~30 steps an epoch and a constant learning rate its
        # moving statistics lagged the weights, and the inference-mode network scored far below the
        # training-mode one (measured: train AUROC 0.67 at a training loss of 0.37). With momentum 0.9 and
        # a decaying learning rate it is usable, hence the option.
        x = layers.Conv2D(
            filters,
            3,
            strides=stride,
            padding="same",
            use_bias=not batch_norm,
            kernel_initializer="he_normal",
            name=f"{name}_conv",
        )(x)
        if batch_norm:
            x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)
        return layers.Activation("relu", name=f"{name}_relu")(x)

    inputs = keras.Input((input_size, input_size, 1), name="image")
    centered = layers.Rescaling(2.0, offset=-1.0, name="center")(inputs)  # [0, 1] -> [-1, 1]
    x = conv(centered, 16, 2, "s1")  # 112
    x = conv(x, 32, 2, "s2a")  # 56
    x = conv(x, 32, 1, "s2b")
    x = layers.MaxPooling2D(name="pool2")(x)  # 28
    x = conv(x, 64, 1, "s3a")
    x = conv(x, 64, 1, "s3b")
    x = layers.MaxPooling2D(name="pool3")(x)  # 14
    x = conv(x, 128, 1, "s4a")
    x = layers.SpatialDropout2D(0.1, name="s4_dropout")(x)
    x = conv(x, 128, 1, "features")
    logits = _head(x, outputs, 0.3)
    return keras.Model(inputs, logits, name="compact"), "features_relu"


def basic_cnn(outputs: int, weights: str | None = None, input_size: int = 150) -> tuple[Any, str | None]:
    """Seed design: 150x150x3, Conv32-Conv32-Pool-Conv64-Pool-Conv128-Pool-Flatten-Dense512-Dropout-Dense."""
    import keras
    from keras import layers

    inputs = keras.Input((input_size, input_size, 1), name="image")
    x = _three_channels(inputs)
    x = layers.Conv2D(32, 3, activation="relu")(x)
    x = layers.Conv2D(32, 3, activation="relu")(x)
    x = layers.MaxPooling2D()(x)
    x = layers.Conv2D(64, 3, activation="relu")(x)
    x = layers.MaxPooling2D()(x)
    x = layers.Conv2D(128, 3, activation="relu")(x)
    x = layers.MaxPooling2D()(x)
    x = layers.Flatten()(x)
    x = layers.Dense(512, activation="relu")(x)
    x = layers.Dropout(0.5)(x)
    return keras.Model(inputs, layers.Dense(outputs, name="head")(x), name="basic"), None


def small3_cnn(outputs: int, weights: str | None = None, input_size: int = 150) -> tuple[Any, str | None]:
    """Seed design: Conv32-Pool-Conv16-Pool-Conv16-Pool-Flatten-Dense512-Dense256-Dense."""
    import keras
    from keras import layers

    inputs = keras.Input((input_size, input_size, 1), name="image")
    x = _three_channels(inputs)
    for filters in (32, 16, 16):
        x = layers.Conv2D(filters, 3, activation="relu")(x)
        x = layers.MaxPooling2D()(x)
    x = layers.Flatten()(x)
    x = layers.Dense(512, activation="relu")(x)
    x = layers.Dense(256, activation="relu")(x)
    return keras.Model(inputs, layers.Dense(outputs, name="head")(x), name="small3"), None


def small2_cnn(outputs: int, weights: str | None = None, input_size: int = 100) -> tuple[Any, str | None]:
    """Seed design: Conv32-Conv64-Flatten-Dense8-Dense (the smallest; no pooling, so a small input)."""
    import keras
    from keras import layers

    inputs = keras.Input((input_size, input_size, 1), name="image")
    x = _three_channels(inputs)
    x = layers.Conv2D(32, 3, activation="relu")(x)
    x = layers.Conv2D(64, 3, activation="relu")(x)
    x = layers.Flatten()(x)
    x = layers.Dense(8, activation="relu")(x)
    return keras.Model(inputs, layers.Dense(outputs, name="head")(x), name="small2"), None


def _applications(kind: str) -> Callable[[int, str | None, int], tuple[Any, str | None]]:
    def build(outputs: int, weights: str | None = None, input_size: int = 224) -> tuple[Any, str | None]:
        import keras
        from keras import layers

        if weights not in (None, "imagenet"):
            raise ValueError("weights must be None or 'imagenet'")
        inputs = keras.Input((input_size, input_size, 1), name="image")
        x = _three_channels(inputs)
        # [0, 1] -> the caffe-style input the Keras ImageNet weights expect (BGR means, 0-255 range).
        x = layers.Rescaling(255.0)(x)
        x = layers.Normalization(mean=_IMAGENET_CAFFE_MEAN, variance=[1.0, 1.0, 1.0])(x)
        factory = keras.applications.VGG16 if kind == "vgg16" else keras.applications.ResNet50
        backbone = factory(include_top=False, weights=weights, input_shape=(input_size, input_size, 3))
        features = backbone(x)
        features = layers.Identity(name="features")(features)
        return keras.Model(inputs, _head(features, outputs, 0.5), name=kind), "features"

    return build


REGISTRY: dict[str, Architecture] = {
    "compact": Architecture(
        "compact", 224, True, "our compact CNN for fast CPU serving (GAP head, exact CAM)", compact_cnn
    ),
    "compact-bn": Architecture(
        "compact-bn",
        224,
        True,
        "our compact CNN with batch normalisation (GAP head, exact CAM)",
        lambda outputs, weights=None, input_size=224: compact_cnn(
            outputs, weights, input_size, batch_norm=True
        ),
    ),
    "basic": Architecture("basic", 150, False, "seed basic CNN, 150x150x3, Flatten->Dense512", basic_cnn),
    "small3": Architecture("small3", 150, False, "seed CNN Conv32-Conv16-Conv16 + Dense512-256", small3_cnn),
    "small2": Architecture("small2", 100, False, "seed CNN Conv32-Conv64 + Dense8", small2_cnn),
    "vgg16": Architecture("vgg16", 224, True, "VGG16 backbone + GAP head", _applications("vgg16")),
    "resnet50": Architecture(
        "resnet50", 224, True, "ResNet50 backbone + GAP head", _applications("resnet50")
    ),
}


def build(
    name: str, outputs: int, *, weights: str | None = None, input_size: int | None = None
) -> tuple[Any, str | None]:
    """Instantiate a registered architecture; returns (keras model producing logits, CAM feature layer or None)."""
    if name not in REGISTRY:
        raise ValueError(f"unknown architecture {name!r}; choose from {', '.join(REGISTRY)}")
    arch = REGISTRY[name]
    return arch.build(outputs, weights, input_size or arch.input_size)
