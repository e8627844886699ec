"""The training path and the serving path produce the same model input for the same file."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from export.dataset import LABELS_BINARY, read_manifest
from export.train import load_examples, training_tensor
from service.imaging.decode import decode
from service.inference.model import OnnxModel, default_repository, find_versions
from tests.support.synthetic import synthetic_xray


def _bundled() -> OnnxModel:
    versions = find_versions(default_repository())
    if not versions:
        pytest.skip("no bundled model under models/")
    return OnnxModel(versions[-1])


def _serving_tensor(model: OnnxModel, path: Path) -> np.ndarray:
    return model.prepare(decode(path.read_bytes()))[0]


def _training_tensor(model: OnnxModel, path: Path, label: str = "covid") -> np.ndarray:
    manifest = path.parent / "parity_manifest.csv"
    manifest.write_text(f"file,label,patient_id\n{path.name},{label},p1\n")
    (example,) = load_examples(read_manifest(manifest), LABELS_BINARY, model.spec, model.segmenter)
    return training_tensor(example, model.spec)


def test_synthetic_png_gives_identical_tensors(tmp_path: Path) -> None:
    model = _bundled()
    path = tmp_path / "x.png"
    cv2.imwrite(str(path), cv2.resize(synthetic_xray(np.random.default_rng(3), True), (400, 380)))
    served, trained = _serving_tensor(model, path), _training_tensor(model, path)
    assert served.shape == (model.input_size, model.input_size, 1) and served.dtype == np.float32
    np.testing.assert_array_equal(served, trained)


def test_real_images_give_identical_tensors(real_manifest: Path) -> None:
    model = _bundled()
    rows = read_manifest(real_manifest)
    for row in rows[:3] + rows[-3:]:
        served = model.prepare(decode(row.path.read_bytes()))[0]
        (example,) = load_examples([row], LABELS_BINARY, model.spec, model.segmenter)
        np.testing.assert_array_equal(served, training_tensor(example, model.spec))
