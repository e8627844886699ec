"""Fixtures for the pixel tests that compare with an independent reader: a real Orthanc."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.pacs import Orthanc, orthanc_factory


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    with orthanc_factory(tmp_path) as make:
        yield make()
