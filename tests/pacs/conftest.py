"""Fixtures for the PACS tests: Orthancs and `cxr serve` started for a test or a session (the components
themselves are in tests.support.pacs)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.pacs import Orthanc, Service, orthanc_factory
from tests.support.tinymodel import make_tiny_model


@pytest.fixture
def make_orthanc(tmp_path: Path) -> Iterator[Callable[..., Orthanc]]:
    """Start Orthancs (extra config and client options as keywords); all are stopped after the test."""
    with orthanc_factory(tmp_path) as make:
        yield make


@pytest.fixture
def orthanc(make_orthanc: Callable[..., Orthanc]) -> Orthanc:
    return make_orthanc()


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repository = tmp_path_factory.mktemp("models")
    make_tiny_model(repository)
    return repository


@pytest.fixture(scope="session")
def service(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """One service for the tests that do not stop it."""
    server = Service(model_dir, tmp_path_factory.mktemp("service") / "service.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_service(model_dir: Path, tmp_path: Path) -> Iterator[Service]:
    """A service this test may stop and start again."""
    server = Service(model_dir, tmp_path / "service.log")
    server.start()
    yield server
    server.stop()
