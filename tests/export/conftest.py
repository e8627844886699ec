"""Fixtures for the training pipeline: a synthetic manifest of X-ray-like images, and the real data when present."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.shareddata import SHARED_DATA  # ../shared/data, or CXR_SHARED_DATA
from tests.support.synthetic import write_manifest

CXR_MANIFEST = SHARED_DATA / "cxr" / "manifest.csv"


@pytest.fixture(scope="session")
def synthetic_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_manifest(tmp_path_factory.mktemp("synthetic"), 150)


@pytest.fixture
def real_manifest() -> Path:
    if not CXR_MANIFEST.is_file():
        pytest.skip(f"real chest X-rays not available at {CXR_MANIFEST} (a fresh clone has no ../shared)")
    return CXR_MANIFEST
