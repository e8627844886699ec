"""Every registered design builds from scratch on the single-channel preprocessing contract."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tensorflow", reason="the [train] extra is not installed")

from export.architectures import REGISTRY, build


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_architecture_builds_and_maps_image_to_logits(name: str) -> None:
    arch = REGISTRY[name]
    size = 64 if name in ("vgg16", "resnet50", "compact") else arch.input_size
    model, feature_layer = build(name, 1, input_size=size)
    assert model.input_shape == (None, size, size, 1)
    logits = model.predict(np.zeros((2, size, size, 1), np.float32), verbose=0)
    assert logits.shape == (2, 1)
    if arch.has_cam:
        features = model.get_layer(feature_layer).output
        assert len(features.shape) == 4  # (N, h, w, C) feeding a GAP head: the CAM is exact
    else:
        assert feature_layer is None


def test_three_class_head_and_unknown_names() -> None:
    model, _ = build("compact", 3, input_size=64)
    assert model.output_shape == (None, 3)
    with pytest.raises(ValueError, match="unknown architecture"):
        build("inception", 1)
    with pytest.raises(ValueError):
        build("compact", 1, weights="imagenet")


def test_compact_is_small_enough_to_serve_fast() -> None:
    model, _ = build("compact", 1)
    assert model.count_params() < 1_000_000
