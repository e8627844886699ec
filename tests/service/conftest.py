"""Fixtures for the service tests: a tiny real ONNX model and a gate that holds the model's run() to control
timing (the helpers they share with other test packages are in tests.support.app)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from service.inference.model import OnnxModel
from tests.support.app import Gate
from tests.support.tinymodel import make_tiny_model


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    repository = tmp_path / "models"
    make_tiny_model(repository)
    return repository


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Any:
    held = Gate()
    monkeypatch.setattr(OnnxModel, "run", held.wrap(OnnxModel.run))
    yield held
    held.open()  # never leave a worker thread blocked
