"""The Open Inference Protocol endpoints driven by a client nobody here wrote: `tritonclient.http` with its
defaults (binary tensor data both ways) against a real `cxr serve` on a free loopback port; and /healthz
staying responsive while four maximum-size /v2 bodies are being parsed."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from export.triton import write_config
from tests.support.app import png
from tests.support.serverproc import Server, serving
from tests.support.tinymodel import make_tiny_model
from tests.support.v2wire import tensor_for, tensor_json

pytestmark = pytest.mark.slow

KEY = "triton-client-key"
CAPACITY = 16


def auth() -> dict[str, str]:
    """A new headers dict per call: tritonclient adds Inference-Header-Content-Length to the one it gets."""
    return {"X-API-Key": KEY}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    """`cxr serve` on the tiny model (with its Triton config.pbtxt), API keys on, a small queue."""
    root = tmp_path_factory.mktemp("triton")
    make_tiny_model(root / "models")
    write_config(root / "models" / "tiny")
    flags = ["--queue-capacity", str(CAPACITY)]
    with serving(root / "models", root / "server.log", *flags, env={"CXR_API_KEYS": KEY}) as running:
        yield running, root / "models"


@pytest.fixture
def client(server: tuple[Server, Path]) -> Iterator[triton.InferenceServerClient]:
    url = server[0].url.removeprefix("http://")
    triton_client = triton.InferenceServerClient(url, network_timeout=30.0, connection_timeout=10.0)
    try:
        yield triton_client
    finally:
        triton_client.close()


def _image_input(tensor: np.ndarray, name: str = "image") -> triton.InferInput:
    infer_input = triton.InferInput(name, list(tensor.shape), "FP32")
    infer_input.set_data_from_numpy(tensor)  # binary_data=True: the client's default
    return infer_input


def _v1_probabilities(url: str, images: list[bytes]) -> np.ndarray:
    answer = httpx.post(
        f"{url}/v1/classify", files=[("file", image) for image in images], headers=auth(), timeout=30
    ).json()
    labels = list(answer["results"][0]["probabilities"])
    return np.array([[result["probabilities"][label] for label in labels] for result in answer["results"]])


def _failure(call: Callable[[], object]) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as raised:
        call()
    return raised.value


def test_health_metadata_and_config_through_tritonclient(
    server: tuple[Server, Path], client: triton.InferenceServerClient
) -> None:
    assert client.is_server_live() and client.is_server_ready()
    metadata = client.get_server_metadata()
    assert "binary_tensor_data" in metadata["extensions"]
    assert client.is_model_ready("tiny", headers=auth())
    assert client.is_model_ready("tiny", "1", headers=auth())
    assert not client.is_model_ready("tiny")  # no key: not confirmed
    model = client.get_model_metadata("tiny", headers=auth())
    assert model["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 32, 32, 1]}]
    config = client.get_model_config("tiny", headers=auth())
    assert config["name"] == "tiny" and config["platform"] == "onnxruntime_onnx"
    assert [tensor["name"] for tensor in config["input"]] == ["image"]


@pytest.mark.parametrize("count", [1, 4])
def test_infer_with_the_clients_defaults_equals_v1(
    server: tuple[Server, Path], client: triton.InferenceServerClient, count: int
) -> None:
    running, model_dir = server
    images = [png(seed=10 + index, centre=None if index % 2 else (0.5, 0.5)) for index in range(count)]
    tensor = tensor_for(model_dir, images)
    result = client.infer("tiny", [_image_input(tensor)], headers=auth(), request_id=f"batch-{count}")
    probabilities = result.as_numpy("probabilities")
    assert probabilities is not None and probabilities.shape == (count, 2)
    np.testing.assert_allclose(probabilities, _v1_probabilities(running.url, images), atol=1e-6)
    cam = result.as_numpy("cam")
    assert cam is not None and cam.shape == (count, 8, 8)
    response = result.get_response()
    assert response["id"] == f"batch-{count}"
    assert all("data" not in output for output in response["outputs"])  # they came as binary data
    # JSON both ways (binary_data=False) gives the same numbers.
    as_json = triton.InferInput("image", list(tensor.shape), "FP32")
    as_json.set_data_from_numpy(tensor, binary_data=False)
    outputs = [triton.InferRequestedOutput("probabilities", binary_data=False)]
    plain = client.infer("tiny", [as_json], outputs=outputs, headers=auth())
    np.testing.assert_array_equal(plain.as_numpy("probabilities"), probabilities)


def test_errors_reach_tritonclient_with_status_and_message(client: triton.InferenceServerClient) -> None:
    good = np.full((1, 32, 32, 1), 0.5, np.float32)
    cases = {
        "unknown model": (
            lambda: client.get_model_metadata("no-such-model", headers=auth()),
            "404",
            "available: tiny",
        ),
        "unknown model infer": (
            lambda: client.infer("no-such-model", [_image_input(good)], headers=auth()),
            "404",
            "No model named",
        ),
        "no key": (lambda: client.get_model_metadata("tiny"), "401", "API key is required"),
        "wrong key": (
            lambda: client.infer("tiny", [_image_input(good)], headers={"X-API-Key": "x"}),
            "401",
            "not valid",
        ),
        "wrong shape": (
            lambda: client.infer("tiny", [_image_input(np.zeros((1, 2, 2, 1), np.float32))], headers=auth()),
            "400",
            "shape must be [N, 32, 32, 1]",
        ),
        "wrong name": (
            lambda: client.infer("tiny", [_image_input(good, "pixels")], headers=auth()),
            "400",
            "Unknown input",
        ),
        "NaN": (
            lambda: client.infer("tiny", [_image_input(np.full_like(good, np.nan))], headers=auth()),
            "400",
            "NaN",
        ),
        "batch over capacity": (
            lambda: client.infer(
                "tiny", [_image_input(np.zeros((CAPACITY + 1, 32, 32, 1), np.float32))], headers=auth()
            ),
            "413",
            f"limit of {CAPACITY} images per request",
        ),
        "unknown output": (
            lambda: client.infer(
                "tiny", [_image_input(good)], outputs=[triton.InferRequestedOutput("x")], headers=auth()
            ),
            "400",
            "Unknown output",
        ),
    }
    for case, (call, status, words) in cases.items():
        error = _failure(call)
        assert error.status() == status, (case, error)
        assert words in error.message(), (case, error.message())
        assert "decoding the response" not in error.message(), case


def test_healthz_answers_while_four_maximum_size_v2_bodies_are_parsed(tmp_path: Path) -> None:
    """Parsing ran on the event loop: one 33 MB JSON body stalled /healthz for 1.4 s, four for 3.7 s (past
    the liveness probe's 3 s). Four bodies at the /v2 limit are in flight here, on a model with a
    224-px input so that the largest valid JSON request is also a maximum-size one."""
    limit = 16 * 1024 * 1024
    make_tiny_model(tmp_path / "models", input_size=224)
    rng = np.random.default_rng(19)
    images = rng.random((16, 224, 224, 1), dtype=np.float32)
    valid = json.dumps({"inputs": [tensor_json(images)]}).encode()
    assert limit - 2_000_000 < len(valid) <= limit
    small = json.dumps({"inputs": [tensor_json(images[:1])]}).encode()
    bodies = [
        valid,  # 16 images as JSON numbers: ~800k values
        valid.replace(b"[", b"[ ", 1),
        small[:-1] + b" " * (limit - len(small)) + b"}",  # padded with whitespace to the limit
        small[:-1] + b', "id": "' + b"x" * (limit - len(small) - 10) + b'"}',  # one long string
    ]
    assert all(limit - 2_000_000 < len(body) <= limit for body in bodies)
    with serving(tmp_path / "models", tmp_path / "server.log", "--decode-workers", "2") as running:
        url = running.url

        def infer(body: bytes) -> tuple[int, float]:
            with httpx.Client(timeout=60) as http:
                response = http.post(f"{url}/v2/models/tiny/infer", content=body)
            return response.status_code, time.monotonic()

        with httpx.Client(timeout=10) as probe, ThreadPoolExecutor(4) as senders:
            probe.get(f"{url}/healthz")  # connection open before the load starts
            started = time.monotonic()
            inflight = [senders.submit(infer, body) for body in bodies]
            samples: list[tuple[float, float]] = []  # (answered at, seconds)
            while not all(future.done() for future in inflight):
                sent = time.monotonic()
                assert probe.get(f"{url}/healthz").status_code == 200
                samples.append((time.monotonic(), time.monotonic() - sent))
            results = [future.result() for future in inflight]
    assert [status for status, _ in results] == [200] * 4
    first_done = min(done for _, done in results)
    during = [seconds for answered, seconds in samples if answered < first_done]
    print(
        f"/healthz under four maximum-size /v2 bodies: {len(during)} probes in {first_done - started:.2f} s, "
        f"median {statistics.median(during) * 1000:.1f} ms, max {max(during) * 1000:.1f} ms"
    )
    # Ordering: /healthz kept answering while all four were still in flight (before the first finished),
    # typically within 100 ms; the bounds are generous for a busy 2-core CI machine, where even an idle
    # server's probes show outliers of a few hundred ms. Parsing on the event loop gave one probe per
    # body parsed, each waiting for the parse: about a second.
    assert len(during) >= 5
    assert statistics.median(during) < 0.1
    assert max(during) < 2.0  # the liveness probe's timeout is 3 s
