"""The ICU artefact renderer (export.icu): what it draws, where, and that the two styles differ."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from export.icu import HELD_OUT, TRAIN, Recipe, burn_text, film_geometry, icu_film, paint_devices
from tests.support.tinymodel import blob_image

BOX = (60, 50, 260, 300)


def film(seed: int = 0) -> np.ndarray:
    return blob_image((360, 320), centre=None, background=90, seed=seed)


@pytest.mark.parametrize("style", [TRAIN, HELD_OUT], ids=lambda s: s.name)
def test_devices_are_bright_shapes_over_the_chest_and_leave_the_input_alone(style: object) -> None:
    image = film()
    before = image.copy()
    painted = paint_devices(image, BOX, np.random.default_rng(1), style)  # type: ignore[arg-type]
    assert np.array_equal(image, before)
    assert painted.shape == image.shape and painted.dtype == np.uint8
    changed = painted.astype(int) - image.astype(int)
    x0, y0, x1, y1 = BOX
    assert (changed[y0:y1, x0:x1] > 20).sum() > 200  # something radiopaque lies over the lungs
    assert changed.mean() > 0  # radiopaque: brighter, not darker


def test_same_seed_same_drawing_other_seed_other_drawing() -> None:
    image = film()
    first = paint_devices(image, BOX, np.random.default_rng(5))
    assert np.array_equal(first, paint_devices(image, BOX, np.random.default_rng(5)))
    assert not np.array_equal(first, paint_devices(image, BOX, np.random.default_rng(6)))


def test_held_out_style_differs_from_training_in_shapes_widths_positions_and_fonts() -> None:
    differ = {
        f.name for f in dataclasses.fields(TRAIN) if getattr(TRAIN, f.name) != getattr(HELD_OUT, f.name)
    }
    assert {"curve", "electrode", "pacemaker", "line_entry", "ng_side", "fonts", "words", "corners"} <= differ
    assert not set(TRAIN.fonts) & set(HELD_OUT.fonts)
    assert not set(TRAIN.words) & set(HELD_OUT.words)
    assert not set(TRAIN.corners) & set(HELD_OUT.corners)
    assert HELD_OUT.line_width[1] > TRAIN.line_width[1]


def test_training_text_stays_out_of_the_corners_the_evaluation_uses() -> None:
    """TRAIN burns text top-left, top-right and mid-left; the bottom-right quarter is HELD_OUT's."""
    image = film()
    for seed in range(30):
        marked = burn_text(image, np.random.default_rng(seed), TRAIN)
        assert np.array_equal(marked[270:, 200:], image[270:, 200:]), seed
    assert any(
        not np.array_equal(burn_text(image, np.random.default_rng(seed), HELD_OUT)[250:], image[250:])
        for seed in range(10)
    )


def test_tilted_film_keeps_its_lung_box_inside_and_has_a_collimation_border() -> None:
    image = film()
    for seed in range(10):
        tilted, box = film_geometry(image, BOX, np.random.default_rng(seed))
        height, width = tilted.shape
        x0, y0, x1, y1 = box
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
        corners = [tilted[0, 0], tilted[0, -1], tilted[-1, 0], tilted[-1, -1]]
        assert any(value in (0, 255) for value in corners)  # black or white outside the exposed field


def test_ward_film_recipe_zero_is_the_film_itself() -> None:
    image = film()
    same, box = icu_film(image, BOX, np.random.default_rng(0), TRAIN, Recipe(0, 0, 0, 0))
    assert np.array_equal(same, image) and box == BOX


def test_training_augmentation_with_ward_films_gives_a_valid_input() -> None:
    from export.dataset import Row
    from export.train import Example, augment
    from service.imaging.preprocess import PreprocessSpec, locate

    spec = PreprocessSpec(input_size=64, lung_crop=False)
    image = film()
    row = Row(Path("x.png"), "x.png", "normal", "s", "p", "PA")
    example = Example(row, image, locate(image, spec, None), 0)
    tensors = [augment(example, spec, np.random.default_rng(seed), icu=1.0) for seed in range(4)]
    for tensor in tensors:
        assert tensor.shape == (64, 64, 1) and tensor.dtype == np.float32
        assert tensor.min() >= 0.0 and tensor.max() <= 1.0
    plain = augment(example, spec, np.random.default_rng(0), icu=0.0)
    assert not np.array_equal(plain, tensors[0])
