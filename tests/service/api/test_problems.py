"""The one error answer (service.api.problems): a server fault is a 500 problem+json, its traceback only in the log."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.support.app import PNG_HEADERS, assert_problem, png, serve, settings_for

pytestmark = pytest.mark.anyio


async def test_server_fault_is_a_500_problem_with_the_traceback_only_in_the_log(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async with serve(settings_for(model_dir)) as client:

        def broken(self: object, batch: np.ndarray) -> None:
            raise RuntimeError("simulated onnxruntime failure")

        monkeypatch.setattr("service.inference.model.OnnxModel.run", broken)
        response = await client.post("/v1/classify", content=png(), headers=PNG_HEADERS)
        monkeypatch.undo()
        recovered = await client.post("/v1/classify", content=png(), headers=PNG_HEADERS)
    body = assert_problem(response, 500)
    assert "simulated" not in body["detail"]
    assert "Traceback" in caplog.text and "simulated onnxruntime failure" in caplog.text
    assert body["request_id"] in caplog.text
    assert recovered.status_code == 200  # the batcher survives a failed batch
