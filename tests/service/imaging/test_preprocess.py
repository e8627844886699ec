"""The thin-structure opening of the preprocessing contract (service.imaging.preprocess.remove_thin)."""

from __future__ import annotations

import cv2
import numpy as np

from service.imaging.preprocess import Geometry, PreprocessSpec, crop_and_finish, remove_thin


def _film() -> np.ndarray:
    """A grey field with a broad bright blob (an opacity) and a 3 px bright line (a wire) across it."""
    film = np.full((224, 224), 90, np.uint8)
    cv2.circle(film, (70, 120), 30, 200, -1)
    cv2.line(film, (140, 10), (150, 210), 250, 3)
    return film


def test_opening_removes_a_wire_and_keeps_an_opacity() -> None:
    opened = remove_thin(_film(), PreprocessSpec(thin_opening=7))
    assert opened[110, 145] < 100  # the wire is gone: the field's grey, not the wire's 250
    assert opened[120, 70] == 200  # the blob's centre is untouched
    assert abs(int((opened > 150).sum()) - int(np.pi * 30**2)) < 0.1 * np.pi * 30**2  # and so is its extent


def test_opening_off_returns_the_crop_itself() -> None:
    film = _film()
    assert remove_thin(film, PreprocessSpec()) is film


def test_the_model_input_goes_through_the_opening_when_the_spec_asks() -> None:
    film = _film()
    geometry = Geometry(224, 224, (0, 0, 224, 224), "off")
    plain = crop_and_finish(film, geometry, PreprocessSpec(lung_crop=False))
    opened = crop_and_finish(film, geometry, PreprocessSpec(lung_crop=False, thin_opening=7))
    assert plain[110, 145, 0] > 0.9
    assert opened[110, 145, 0] < plain[110, 145, 0] - 0.3


def test_the_spec_round_trips_the_opening_and_older_cards_have_none() -> None:
    assert PreprocessSpec.from_dict(PreprocessSpec(thin_opening=7).to_dict()).thin_opening == 7
    older = PreprocessSpec().to_dict()
    del older["thin_opening"]
    assert PreprocessSpec.from_dict(older).thin_opening == 0
