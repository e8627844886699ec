"""Faults against a real `cxr serve`: SIGTERM under load, clients that vanish, a corrupted model file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.reliability import faults
from tests.reliability.decode_fuzz import _gradient
from tests.reliability.harness import Service, running, tiny_model_dir
from tests.support.dicoms import make_dicom

pytestmark = pytest.mark.slow


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    return tiny_model_dir(tmp_path)


@pytest.fixture
def slow_server(model_dir: Path, tmp_path: Path) -> Iterator[Service]:
    flags = ("--max-batch-size", "1", "--max-queue-delay-ms", "0")
    with running(model_dir, tmp_path / "server.log", *flags, delay_s=0.5) as service:
        yield service


def test_sigterm_under_open_loop_load_loses_no_accepted_request(model_dir: Path, tmp_path: Path) -> None:
    figures = faults.sigterm_under_load(model_dir, tmp_path / "server.log")
    assert figures.problems() == [], figures.as_dict()
    assert figures.completed + figures.refused_cleanly + figures.never_accepted == figures.sent
    assert figures.refused_cleanly + figures.never_accepted > 0  # requests did arrive after the signal
    assert figures.queued_at_signal > 0  # and the drain had queued work to finish


def test_client_disconnect_mid_upload_is_not_a_server_fault(slow_server: Service) -> None:
    """Regression: starlette's ClientDisconnect while reading the body was logged as a server fault with a
    traceback and counted as a 500."""
    figures = faults.disconnect_mid_upload(slow_server)
    assert figures.problems() == []
    assert "status=499" in slow_server.output()


def test_client_disconnect_mid_queue_costs_no_inference(slow_server: Service) -> None:
    figures = faults.disconnect_mid_queue(slow_server)
    assert figures.problems() == []
    assert figures.dropped_cancelled == 1


def test_checksum_mismatch_exits_with_one_line_reason_not_a_traceback(model_dir: Path) -> None:
    """Regression: `cxr serve` exited 3 but printed uvicorn's lifespan traceback around the reason."""
    figures = faults.checksum_mismatch(model_dir)
    assert figures.problems() == []
    assert figures.exit_code == 3
    assert "refusing to start" in figures.error_lines[0] and "model.onnx" in figures.error_lines[0]


def test_decoder_crash_on_hostile_dicom_leaves_the_server_serving(slow_server: Service) -> None:
    """Regression: the same hostile JPEG-LS file (see test_decoder) aborted the whole server process."""
    pixels = _gradient(96, 80, np.uint16, 4095)
    hostile = make_dicom(
        pixels, bits_stored=12, transfer_syntax="1.2.840.10008.1.2.4.80", after={"Rows": 65535}
    )
    headers = {"Content-Type": "application/dicom"}
    refused = httpx.post(f"{slow_server.url}/v1/classify", content=hostile, headers=headers, timeout=30)
    after = httpx.post(
        f"{slow_server.url}/v1/classify",
        content=faults.request_body(),
        headers={"Content-Type": "image/png"},
        timeout=30,
    )
    assert refused.status_code == 400 and "crashed its decoder" in refused.json()["detail"]
    assert after.status_code == 200 and slow_server.process.poll() is None
