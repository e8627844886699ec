"""Open Inference Protocol v2 endpoints over ASGI: agreement with /v1/classify, the binary tensor data
extension, the real model I/O and configuration, the protocol's error bodies, and the limits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

from export.triton import write_config
from service.inference.model import find_versions
from tests.support.app import PNG_HEADERS, png, serve, settings_for
from tests.support.v2wire import HEADER_LENGTH, binary_outputs, binary_request, tensor_for, tensor_json

pytestmark = pytest.mark.anyio

INFER = "/v2/models/tiny/infer"
SIZE = 32  # tests.support.tinymodel's default input size


def assert_v2_error(response: httpx.Response, status: int) -> str:
    """The protocol's error body, `{"error": "..."}` as JSON, with the status; returns the message."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert list(body) == ["error"] and isinstance(body["error"], str) and body["error"]
    assert "Traceback" not in body["error"]
    return str(body["error"])


async def _v1_probabilities(client: httpx.AsyncClient, images: list[bytes]) -> np.ndarray:
    answers = [
        (await client.post("/v1/classify", content=image, headers=PNG_HEADERS)).json()["results"][0]
        for image in images
    ]
    labels = list(answers[0]["probabilities"])
    return np.array([[answer["probabilities"][label] for label in labels] for answer in answers])


async def test_v2_infer_on_the_preprocessed_tensor_matches_v1_classify(model_dir: Path) -> None:
    images = [png(seed=1, centre=None), png(seed=2)]
    tensors = tensor_for(model_dir, images)
    async with serve(settings_for(model_dir)) as client:
        expected = await _v1_probabilities(client, images)
        body = {"id": "req-7", "inputs": [tensor_json(tensors)]}
        response = await client.post(INFER, json=body)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/json"
        assert HEADER_LENGTH not in response.headers
        answer = response.json()
        assert answer["id"] == "req-7" and answer["model_name"] == "tiny" and answer["model_version"] == "1"
        outputs = {o["name"]: o for o in answer["outputs"]}
        probabilities = np.asarray(outputs["probabilities"]["data"]).reshape(
            outputs["probabilities"]["shape"]
        )
        np.testing.assert_allclose(probabilities, expected, atol=1e-6)
        assert outputs["cam"]["shape"] == [2, SIZE // 4, SIZE // 4]

        only = await client.post(INFER, json={**body, "outputs": [{"name": "probabilities"}]})
        assert [o["name"] for o in only.json()["outputs"]] == ["probabilities"]


async def test_v2_binary_tensor_data_in_and_out_agrees_with_json(model_dir: Path) -> None:
    images = [png(seed=3), png(seed=4, centre=None), png(seed=5)]
    tensors = tensor_for(model_dir, images)
    async with serve(settings_for(model_dir)) as client:
        expected = await _v1_probabilities(client, images)
        as_json = (await client.post(INFER, json={"inputs": [tensor_json(tensors)]})).json()
        # tritonclient's default: no outputs named, binary_data_output for all of them.
        body, headers = binary_request(tensors, parameters={"binary_data_output": True}, id="b-1")
        response = await client.post(INFER, content=body, headers=headers)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/octet-stream"
        header, arrays = binary_outputs(response.content, int(response.headers[HEADER_LENGTH]))
        assert header["id"] == "b-1" and {o["name"] for o in header["outputs"]} == {"probabilities", "cam"}
        np.testing.assert_allclose(arrays["probabilities"], expected, atol=1e-6)
        json_cam = next(o for o in as_json["outputs"] if o["name"] == "cam")
        np.testing.assert_allclose(arrays["cam"].ravel(), json_cam["data"], atol=1e-6)
        # Mixed: binary probabilities, JSON cam.
        body, headers = binary_request(
            tensors,
            outputs=[{"name": "probabilities", "parameters": {"binary_data": True}}, {"name": "cam"}],
        )
        mixed = await client.post(INFER, content=body, headers=headers)
        header, arrays = binary_outputs(mixed.content, int(mixed.headers[HEADER_LENGTH]))
        np.testing.assert_allclose(arrays["probabilities"], expected, atol=1e-6)
        assert "data" in header["outputs"][1] and "parameters" not in header["outputs"][1]
        # Binary input, JSON output: no header length in the answer.
        body, headers = binary_request(tensors)
        plain = await client.post(INFER, content=body, headers=headers)
        assert plain.headers["content-type"] == "application/json" and HEADER_LENGTH not in plain.headers
        assert plain.json()["outputs"] == as_json["outputs"]


async def test_v2_metadata_matches_the_onnx_graph(model_dir: Path) -> None:
    version_dir = find_versions(model_dir)[-1]
    graph = onnx.load(str(version_dir / "model.onnx")).graph
    async with serve(settings_for(model_dir)) as client:
        assert (await client.get("/v2/health/live")).json() == {"live": True}
        assert (await client.get("/v2/health/ready")).status_code == 200
        server = (await client.get("/v2")).json()
        name = version_dir.parent.name
        metadata = (await client.get(f"/v2/models/{name}")).json()
        assert (await client.get(f"/v2/models/{name}/ready")).json()["ready"] is True
        assert (await client.get(f"/v2/models/{name}/versions/1/ready")).json()["ready"] is True
    assert {"binary_tensor_data", "model_configuration"} <= set(server["extensions"])
    (graph_input,) = graph.input
    dims = [d.dim_value or -1 for d in graph_input.type.tensor_type.shape.dim]
    assert metadata["inputs"] == [{"name": graph_input.name, "datatype": "FP32", "shape": dims}]
    graph_outputs = {o.name: [d.dim_value or -1 for d in o.type.tensor_type.shape.dim] for o in graph.output}
    for output in metadata["outputs"]:
        assert output["datatype"] == "FP32"
        assert output["shape"] == graph_outputs[output["name"]]


def _image(**overrides: Any) -> dict[str, Any]:
    return {
        "name": "image",
        "shape": [1, SIZE, SIZE, 1],
        "datatype": "FP32",
        "data": [0.5] * SIZE * SIZE,
        **overrides,
    }


_VALID = np.full((1, SIZE, SIZE, 1), 0.5, np.float32)
_RAW = _VALID.tobytes()


def _header(binary_data_size: int = len(_RAW)) -> bytes:
    tensor = {"name": "image", "shape": [1, SIZE, SIZE, 1], "datatype": "FP32"}
    return json.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": binary_data_size}}]}).encode()


_HEADER = _header()
_OCTETS = {"Content-Type": "application/octet-stream"}

# (case, body bytes, extra headers, status, words the message must hold)
MALFORMED: list[tuple[str, bytes, dict[str, str], int, str]] = [
    ("not json", b"{not json", {}, 400, "not valid JSON"),
    ("deep nesting", b"[" * 100_000, {}, 400, "arrays and objects"),
    ("not an object", b"[1, 2]", {}, 400, "JSON object"),
    ("not utf-8", b'{"id": "\xff"}', {}, 400, "UTF-8"),
    ("no inputs", json.dumps({"inputs": []}).encode(), {}, 400, "exactly one input"),
    ("unknown input", json.dumps({"inputs": [_image(name="pixels")]}).encode(), {}, 400, "Unknown input"),
    (
        "datatype",
        json.dumps({"inputs": [_image(datatype="INT32")]}).encode(),
        {},
        400,
        "datatype must be FP32",
    ),
    ("shape", json.dumps({"inputs": [_image(shape=[1, 2, 2, 1])]}).encode(), {}, 400, "shape must be"),
    (
        "shape of bools",
        json.dumps({"inputs": [_image(shape=[True, SIZE, SIZE, 1])]}).encode(),
        {},
        400,
        "shape",
    ),
    (
        "empty batch",
        json.dumps({"inputs": [_image(shape=[0, SIZE, SIZE, 1], data=[])]}).encode(),
        {},
        400,
        "at least 1",
    ),
    ("too few values", json.dumps({"inputs": [_image(data=[0.5] * 3)]}).encode(), {}, 400, "holds 3 values"),
    (
        "strings",
        json.dumps({"inputs": [_image(data=["0.5"] * SIZE * SIZE)]}).encode(),
        {},
        400,
        "numbers only",
    ),
    (
        "booleans",
        json.dumps({"inputs": [_image(data=[True] * SIZE * SIZE)]}).encode(),
        {},
        400,
        "numbers only",
    ),
    ("nulls", json.dumps({"inputs": [_image(data=[None] * SIZE * SIZE)]}).encode(), {}, 400, "numbers only"),
    ("data not a list", json.dumps({"inputs": [_image(data={"a": 1})]}).encode(), {}, 400, "flat array"),
    (
        "nested data",
        json.dumps({"inputs": [_image(data=_VALID.tolist())]}).encode(),
        {},
        400,
        "one flat array",
    ),
    ("NaN", json.dumps({"inputs": [_image(data=[float("nan")] * SIZE * SIZE)]}).encode(), {}, 400, "NaN"),
    (
        "Infinity",
        json.dumps({"inputs": [_image(data=[float("inf")] * SIZE * SIZE)]}).encode(),
        {},
        400,
        "Infinity",
    ),
    (
        "out of FP32 range",
        json.dumps({"inputs": [_image(data=[1e39] * SIZE * SIZE)]}).encode(),
        {},
        400,
        "FP32",
    ),
    ("huge integer", json.dumps({"inputs": [_image(data=[10**60] * SIZE * SIZE)]}).encode(), {}, 400, "FP32"),
    ("long number", b'{"inputs": [{"data": [0.' + b"5" * 1000 + b"]}]}", {}, 400, "longer than 64"),
    (
        "id not a string",
        json.dumps({"id": 7, "inputs": [_image()]}).encode(),
        {},
        400,
        "`id` must be a string",
    ),
    (
        "unknown output",
        json.dumps({"inputs": [_image()], "outputs": [{"name": "x"}]}).encode(),
        {},
        400,
        "Unknown output",
    ),
    (
        "classification",
        json.dumps(
            {
                "inputs": [_image()],
                "outputs": [{"name": "probabilities", "parameters": {"classification": 1}}],
            }
        ).encode(),
        {},
        400,
        "classification extension",
    ),
    (
        "binary size",
        _header(12) + _RAW[:12],
        {HEADER_LENGTH: str(len(_header(12)))},
        400,
        "binary_data_size is 12",
    ),
    ("binary short", _HEADER + _RAW[:-4], {HEADER_LENGTH: str(len(_HEADER))}, 400, "after the JSON header"),
    (
        "binary extra",
        _HEADER + _RAW + b"\0" * 4,
        {HEADER_LENGTH: str(len(_HEADER))},
        400,
        "after the JSON header",
    ),
    ("header longer than body", _HEADER, {HEADER_LENGTH: str(len(_HEADER) + 1)}, 400, "more than the body"),
    ("header length not a number", _HEADER + _RAW, {HEADER_LENGTH: "-3"}, 400, "byte count"),
    ("binary without header length", _HEADER + _RAW, {}, 400, "not valid JSON"),
    ("binary_data_size in plain JSON", _HEADER, {}, 400, "needs the Inference-Header-Content-Length"),
    (
        "binary NaN",
        _HEADER + np.full(SIZE * SIZE, np.nan, np.float32).tobytes(),
        {HEADER_LENGTH: str(len(_HEADER))},
        400,
        "NaN",
    ),
    ("compressed", b"\x1f\x8b", {"Content-Encoding": "gzip"}, 415, "uncompressed"),
]


async def test_v2_malformed_bodies_get_the_protocols_error_body_never_a_500(model_dir: Path) -> None:
    wrong: list[str] = []
    async with serve(settings_for(model_dir)) as client:
        for case, body, headers, status, words in MALFORMED:
            response = await client.post(INFER, content=body, headers={**_OCTETS, **headers})
            try:
                assert words in assert_v2_error(response, status)
            except AssertionError as error:
                wrong.append(f"{case}: {response.status_code} {response.text[:200]!r} ({error})")
        # The server is still serving after all of them.
        assert (await client.post(INFER, json={"inputs": [_image()]})).status_code == 200
    assert wrong == []


async def test_v2_routing_errors_and_limits_use_the_protocols_body_and_v1_keeps_problems(
    model_dir: Path,
) -> None:
    async with serve(settings_for(model_dir, max_v2_body_bytes=10_000)) as client:
        assert "available: tiny" in assert_v2_error(await client.get("/v2/models/no-such-model"), 404)
        assert_v2_error(await client.post("/v2/models/no-such-model/infer", json={}), 404)
        assert "no version" in assert_v2_error(await client.get("/v2/models/tiny/versions/9"), 404)
        assert_v2_error(await client.get("/v2/no/such/route"), 404)
        assert_v2_error(await client.get(INFER), 405)
        declared = await client.post(INFER, content=b" " * 10_001, headers=_OCTETS)
        assert "limit of 10000 bytes" in assert_v2_error(declared, 413)

        async def chunks() -> Any:
            for _ in range(3):
                yield b" " * 4000

        streamed = await client.post(INFER, content=chunks(), headers=_OCTETS)
        assert_v2_error(streamed, 413)
        problem = await client.get("/v1/no/such/route")
    assert problem.status_code == 404 and problem.headers["content-type"] == "application/problem+json"


async def test_v2_batch_over_the_queue_capacity_is_413_naming_the_limit(model_dir: Path) -> None:
    async with serve(settings_for(model_dir, queue_capacity=4)) as client:
        five = np.full((5, SIZE, SIZE, 1), 0.5, np.float32)
        as_json = await client.post(INFER, json={"inputs": [tensor_json(five)]})
        body, headers = binary_request(five)
        as_binary = await client.post(INFER, content=body, headers=headers)
        four = await client.post(INFER, json={"inputs": [tensor_json(five[:4])]})
    for response in (as_json, as_binary):
        message = assert_v2_error(response, 413)
        assert "5 images" in message and "limit of 4 images" in message
        assert "retry-after" not in response.headers
    assert four.status_code == 200


async def test_v2_model_endpoints_need_the_key_and_health_does_not(model_dir: Path) -> None:
    key = {"X-API-Key": "k-19"}
    async with serve(settings_for(model_dir, api_keys=["k-19"])) as client:
        for path in ("/v2/health/live", "/v2/health/ready", "/v2"):
            assert (await client.get(path)).status_code == 200, path
        for path in (
            "/v2/models/tiny",
            "/v2/models/tiny/ready",
            "/v2/models/no-such-model/ready",  # 401, not 404: without a key, no name is confirmed or denied
            "/v2/models/tiny/versions/1/ready",
            "/v2/models/tiny/config",
        ):
            assert "API key" in assert_v2_error(await client.get(path), 401), path
        assert_v2_error(await client.post(INFER, json={}), 401)
        assert (await client.get("/v2/models/tiny/ready", headers=key)).status_code == 200
        assert_v2_error(await client.get("/v2/models/no-such-model/ready", headers=key), 404)


async def test_v2_model_config_is_the_repositorys_config_pbtxt_with_this_servers_batching(
    model_dir: Path,
) -> None:
    async with serve(settings_for(model_dir)) as client:
        missing = await client.get("/v2/models/tiny/config")
    assert "config.pbtxt" in assert_v2_error(missing, 404)
    path = write_config(model_dir / "tiny")
    on_disk = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    # The file's batching (export/triton.py's defaults: Triton's 2 ms wait) set on this server too.
    delay_ms = on_disk.dynamic_batching.max_queue_delay_microseconds / 1000
    async with serve(settings_for(model_dir, max_queue_delay_ms=delay_ms)) as client:
        same = (await client.get("/v2/models/tiny/config")).json()
        version = (await client.get("/v2/models/tiny/versions/1/config")).json()
    # The answer is a valid ModelConfig in protobuf's JSON form, equal to the file when this server batches
    # as the file says.
    assert json_format.ParseDict(same, model_config_pb2.ModelConfig()) == on_disk
    assert version == same
    async with serve(settings_for(model_dir, max_batch_size=4, max_queue_delay_ms=5)) as client:
        own = json_format.ParseDict(
            (await client.get("/v2/models/tiny/config")).json(), model_config_pb2.ModelConfig()
        )
    assert own.max_batch_size == 4 and list(own.dynamic_batching.preferred_batch_size) == [2, 4]
    assert own.dynamic_batching.max_queue_delay_microseconds == 5000
    assert own.input == on_disk.input and own.output == on_disk.output
    # A file that describes another model is not reported as this one's.
    path.write_text(path.read_text().replace('name: "image"', 'name: "pixels"'))
    async with serve(settings_for(model_dir)) as client:
        stale = await client.get("/v2/models/tiny/config")
    assert "does not describe the served model" in assert_v2_error(stale, 404)
