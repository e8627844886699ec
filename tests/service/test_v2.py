"""Open Inference Protocol v2 endpoints agree with /v1/classify and describe the model's real I/O."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from service.decode import decode
from service.model import OnnxModel, find_versions

from .conftest import PNG_HEADERS, png, serve, settings_for

pytestmark = pytest.mark.anyio


def _tensor_for(model_dir: Path, image: bytes) -> np.ndarray:
    model = OnnxModel(find_versions(model_dir)[-1])
    return model.prepare(decode(image).pixels)[0]


async def test_v2_infer_on_the_preprocessed_tensor_matches_v1_classify(model_dir: Path) -> None:
    images = [png(seed=1, centre=None), png(seed=2)]
    tensors = np.stack([_tensor_for(model_dir, image) for image in images])
    async with serve(settings_for(model_dir)) as client:
        v1 = [
            (await client.post("/v1/classify", content=image, headers=PNG_HEADERS)).json() for image in images
        ]
        name = v1[0]["results"][0]["model"]["name"]
        body = {
            "id": "req-7",
            "inputs": [
                {
                    "name": "image",
                    "shape": list(tensors.shape),
                    "datatype": "FP32",
                    "data": tensors.ravel().tolist(),
                }
            ],
        }
        response = await client.post(f"/v2/models/{name}/infer", json=body)
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["id"] == "req-7" and answer["model_name"] == name
        outputs = {o["name"]: o for o in answer["outputs"]}
        probabilities = np.asarray(outputs["probabilities"]["data"]).reshape(
            outputs["probabilities"]["shape"]
        )
        labels = list(v1[0]["results"][0]["probabilities"])
        expected = np.array([[r["results"][0]["probabilities"][label] for label in labels] for r in v1])
        np.testing.assert_allclose(probabilities, expected, atol=1e-6)
        assert outputs["cam"]["shape"][0] == 2

        only = await client.post(
            f"/v2/models/{name}/infer", json={**body, "outputs": [{"name": "probabilities"}]}
        )
        assert [o["name"] for o in only.json()["outputs"]] == ["probabilities"]


async def test_v2_metadata_matches_the_onnx_graph(model_dir: Path) -> None:
    version_dir = find_versions(model_dir)[-1]
    graph = onnx.load(str(version_dir / "model.onnx")).graph
    async with serve(settings_for(model_dir)) as client:
        assert (await client.get("/v2/health/live")).json() == {"live": True}
        assert (await client.get("/v2/health/ready")).status_code == 200
        name = version_dir.parent.name
        metadata = (await client.get(f"/v2/models/{name}")).json()
        assert (await client.get(f"/v2/models/{name}/ready")).json()["ready"] is True
    (graph_input,) = graph.input
    dims = [d.dim_value or -1 for d in graph_input.type.tensor_type.shape.dim]
    assert metadata["inputs"] == [{"name": graph_input.name, "datatype": "FP32", "shape": dims}]
    graph_outputs = {o.name: [d.dim_value or -1 for d in o.type.tensor_type.shape.dim] for o in graph.output}
    for output in metadata["outputs"]:
        assert output["datatype"] == "FP32"
        assert output["shape"] == graph_outputs[output["name"]]


async def test_v2_rejects_bad_tensors_with_problem_json(model_dir: Path) -> None:
    async with serve(settings_for(model_dir)) as client:
        name = find_versions(model_dir)[-1].parent.name
        cases = [
            (
                {
                    "inputs": [
                        {"name": "pixels", "shape": [1, 2, 2, 1], "datatype": "FP32", "data": [0, 0, 0, 0]}
                    ]
                },
                422,
            ),
            (
                {
                    "inputs": [
                        {"name": "image", "shape": [1, 2, 2, 1], "datatype": "FP32", "data": [0, 0, 0, 0]}
                    ]
                },
                422,
            ),
            ({"inputs": []}, 422),
        ]
        for body, status in cases:
            response = await client.post(f"/v2/models/{name}/infer", json=body)
            assert response.status_code == status
            assert response.headers["content-type"].startswith("application/problem+json")
        garbage = await client.post(
            f"/v2/models/{name}/infer", content=b"{not json", headers={"Content-Type": "application/json"}
        )
        assert garbage.status_code == 400
        missing = await client.get("/v2/models/no-such-model")
        assert missing.status_code == 404
