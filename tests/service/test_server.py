"""One real uvicorn process per test (`cxr serve` on a free loopback port, readiness polled): serving,
SIGTERM drain, and refusing to start on a checksum mismatch."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.inference.batch_policy import choose_max_batch_size
from service.inference.batcher import batch_sizes
from tests.support.app import PNG_HEADERS, metric, png
from tests.support.dicoms import IDENTIFYING_FILENAME, PATIENT_ID, PATIENT_NAME, identified_dicom
from tests.support.serverproc import Server, start_server, wait_bound
from tests.support.tinymodel import blob_image, encode

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


async def wait_ready(client: httpx.AsyncClient, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while (await client.get("/readyz")).status_code != 200:
        assert time.monotonic() < deadline, "never ready"
        await asyncio.sleep(0.02)


async def wait_queue_depth(client: httpx.AsyncClient, depth: int) -> None:
    deadline = time.monotonic() + 10
    while metric((await client.get("/metrics")).text, "cxr_queue_depth", model="tiny/1") < depth:
        assert time.monotonic() < deadline, "queue never filled"
        await asyncio.sleep(0.01)


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for server in started:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait(10)


async def test_cxr_serve_lists_the_batch_policy_it_chose_at_warm_up(
    model_dir: Path, tmp_path: Path, servers: list[Server]
) -> None:
    server = start_server(model_dir, tmp_path / "server.log", "--max-batch-size", "4")  # --batch-policy auto
    servers.append(server)
    wait_bound(server)
    async with httpx.AsyncClient(base_url=server.url, timeout=20) as client:
        await wait_ready(client)
        (entry,) = (await client.get("/v1/models")).json()["models"]
    batching = entry["batching"]
    figures = {int(size): rate for size, rate in batching["warmup_images_per_s"].items()}
    assert batching["policy"] == "auto" and batching["configured_max_batch_size"] == 4
    assert batching["max_batch_size"] == choose_max_batch_size(figures, batching["margin"])
    assert entry["batch_sizes"] == batch_sizes(batching["max_batch_size"])
    assert f"warmed tiny/1: batch policy auto, batches up to {batching['max_batch_size']}:" in server.output()


async def test_uvicorn_serves_then_drains_queued_work_on_sigterm(
    model_dir: Path, tmp_path: Path, servers: list[Server]
) -> None:
    server = start_server(
        model_dir, tmp_path / "server.log", "--max-batch-size", "1", "--drain-timeout-s", "10", delay_s=1.0
    )
    servers.append(server)
    wait_bound(server)
    async with httpx.AsyncClient(base_url=server.url, timeout=20) as client:
        await wait_ready(client)
        single = await client.post("/v1/classify", content=png(), headers=PNG_HEADERS)
        image = blob_image()
        files = [
            ("file", (IDENTIFYING_FILENAME, encode(image), "image/png")),
            ("file", ("study.dcm", identified_dicom(image), "application/dicom")),
        ]
        multipart = await client.post("/v1/classify", files=files)
        burst = [
            asyncio.ensure_future(client.post("/v1/classify", content=png(seed=i), headers=PNG_HEADERS))
            for i in range(4)
        ]
        # Every image queued behind the one in the model (1 s each) before the signal: a request still being
        # decoded then would rightly be refused (503), and that is not what this test is about.
        await wait_queue_depth(client, 3)
        server.process.send_signal(signal.SIGTERM)
        responses = await asyncio.gather(*burst)
    async with httpx.AsyncClient(base_url=server.url, timeout=5) as fresh:
        try:
            late_status = (await fresh.post("/v1/classify", content=png(), headers=PNG_HEADERS)).status_code
        except httpx.TransportError:
            late_status = 0  # connection refused: the listening socket is closed
    returncode = server.process.wait(timeout=20)
    log = server.output()
    assert single.status_code == 200 and single.headers["x-request-id"]
    assert multipart.status_code == 200 and [r["image"]["format"] for r in multipart.json()["results"]] == [
        "png",
        "dicom",
    ]
    assert [r.status_code for r in responses] == [200] * 4  # queued work finished, none failed
    assert late_status in (0, 503)
    assert returncode == 0, log  # drained: a clean stop, not a kill (uvicorn re-raises into our handler)
    assert "draining" in log and "Application shutdown complete" in log
    # One access line per request, with the classification details on it, and no second line.
    request_id = single.headers["x-request-id"]
    lines = [line for line in log.splitlines() if f"request_id={request_id}" in line]
    assert len(lines) == 1 and "POST /v1/classify status=200" in lines[0], lines
    assert "model=tiny/1 images=1 formats=png" in lines[0] and "sizes=" in lines[0], lines
    for secret in (PATIENT_NAME, PATIENT_ID, IDENTIFYING_FILENAME, "Traceback"):
        assert secret not in log


async def test_sigterm_fails_what_the_drain_timeout_leaves_without_hanging(
    model_dir: Path, tmp_path: Path, servers: list[Server]
) -> None:
    flags = ("--max-batch-size", "1", "--drain-timeout-s", "0.3")
    server = start_server(model_dir, tmp_path / "server.log", *flags, delay_s=1.5)
    servers.append(server)
    wait_bound(server)
    async with httpx.AsyncClient(base_url=server.url, timeout=20) as client:
        await wait_ready(client)
        runs_before = server.runs_started()  # the warm-up's
        burst = [
            asyncio.ensure_future(client.post("/v1/classify", content=png(seed=i), headers=PNG_HEADERS))
            for i in range(3)
        ]
        await wait_queue_depth(client, 2)
        server.process.send_signal(signal.SIGTERM)
        responses = await asyncio.gather(*burst)
    server.process.wait(timeout=20)
    # Answered by the drain timeout, not by the work: of the three images (1.5 s each), only the one already
    # in the model when the signal came was ever run.
    assert server.runs_started() - runs_before == 1
    for response in responses:
        assert response.status_code == 503
        assert response.headers["content-type"] == "application/problem+json"
        assert "shut" in response.json()["detail"]


def test_cli_refuses_to_start_on_checksum_mismatch(
    model_dir: Path, tmp_path: Path, servers: list[Server]
) -> None:
    model_file = model_dir / "tiny" / "1" / "model.onnx"
    model_file.write_bytes(model_file.read_bytes()[:-1] + b"\x01")
    server = start_server(model_dir, tmp_path / "server.log")
    servers.append(server)
    returncode = server.process.wait(timeout=60)
    log = server.output()
    assert returncode == 3, log
    assert "refusing to start" in log and "does not match the model card" in log


def test_cli_reports_invalid_settings_without_echoing_values(tmp_path: Path, servers: list[Server]) -> None:
    server = start_server(tmp_path / "missing", tmp_path / "server.log", "--api-keys", "hunter2-secret")
    servers.append(server)
    returncode = server.process.wait(timeout=60)
    log = server.output()
    assert returncode == 2, log
    assert "holds no model" in log and "hunter2-secret" not in log
