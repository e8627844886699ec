"""The response check both load generators rely on: a fast wrong answer must count as a failure."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from loadtest.checks import check_answer
from loadtest.images import load_samples, multipart

GOOD: dict[str, Any] = {
    "request_id": "abc",
    "results": [
        {
            "index": 0,
            "label": "covid",
            "probabilities": {"non-covid": 0.25, "covid": 0.75},
            "threshold": 0.5,
            "model": {"name": "tiny", "version": "1", "sha256": "00"},
            "timing": {"queue_ms": 0.1, "inference_ms": 1.0, "total_ms": 5.0},
        }
    ],
}


def _broken(path: list[str | int], value: Any) -> bytes:
    answer = copy.deepcopy(GOOD)
    where: Any = answer
    for key in path[:-1]:
        where = where[key]
    if value is KeyError:
        del where[path[-1]]
    else:
        where[path[-1]] = value
    return json.dumps(answer).encode()


def test_a_consistent_answer_passes() -> None:
    assert check_answer(200, json.dumps(GOOD).encode(), 1) is None


@pytest.mark.parametrize(
    ("path", "value", "reason"),
    [
        (["results", 0, "label"], "non-covid", "contradicts"),  # p(covid) 0.75 >= 0.5 but labelled negative
        (["results", 0, "probabilities", "covid"], 0.9, "sum to"),
        (["results", 0, "probabilities"], KeyError, "probabilities missing"),
        (["results", 0, "threshold"], KeyError, "threshold"),
        (["results", 0, "label"], "pneumonia", "not one of"),
        (["results", 0, "model"], KeyError, "model"),
        (["results", 0, "timing", "total_ms"], -1.0, "timing"),
        (["results", 0, "index"], 3, "index"),
        (["request_id"], KeyError, "request_id"),
        (["results"], [], "0 results for 1 images"),
    ],
)
def test_a_wrong_or_malformed_answer_is_a_failure(path: list[str | int], value: Any, reason: str) -> None:
    problem = check_answer(200, _broken(path, value), 1)
    assert problem is not None and reason in problem


def test_the_threshold_not_argmax_decides_a_binary_label() -> None:
    answer = copy.deepcopy(GOOD)
    answer["results"][0].update(probabilities={"non-covid": 0.6, "covid": 0.4}, threshold=0.3, label="covid")
    assert check_answer(200, json.dumps(answer).encode(), 1) is None


def test_non_200_and_non_json_are_failures() -> None:
    assert check_answer(503, b"{}", 1) == "HTTP 503"
    assert check_answer(200, b"<html>", 1) == "body is not JSON"


def test_the_short_check_holds_baselines_to_the_same_rule() -> None:
    short = {
        "results": [
            {"label": "non-covid", "probabilities": {"non-covid": 0.3, "covid": 0.7}, "threshold": 0.5}
        ]
    }
    assert "contradicts" in (check_answer(200, json.dumps(short).encode(), 1, full=False) or "")


def test_the_loader_finds_every_format_and_builds_multipart(image_folder: Any) -> None:
    samples = load_samples([image_folder])
    assert {sample.fmt for sample in samples} == {"png", "jpeg", "dicom"}
    body, content_type = multipart(samples[:2])
    boundary = content_type.split("boundary=")[1]
    assert body.count(f"--{boundary}".encode()) == 3 and body.endswith(f"--{boundary}--\r\n".encode())


def test_bentoml_list_answer_counts_only_for_peers() -> None:
    """A BentoML batchable API answers a request's list of results as is: fine for a peer (full=False),
    never for the service, whose answer must be an object with a request_id."""
    from loadtest.checks import check_answer

    item = {"label": "covid", "probabilities": {"covid": 0.9, "non-covid": 0.1}, "threshold": 0.5}
    body = json.dumps([item]).encode()
    assert check_answer(200, body, 1, full=False) is None
    assert check_answer(200, body, 2, full=False) == "1 results for 2 images"
    assert check_answer(200, body, 1, full=True) == "body is not a JSON object"


def _triton(data: list[Any], datatype: str = "BYTES", name: str = "result") -> bytes:
    output = {"name": name, "datatype": datatype, "shape": [1, 1], "data": data}
    return json.dumps({"model_name": "cxr-image", "model_version": "1", "outputs": [output]}).encode()


def test_triton_answer_is_read_from_its_result_tensor() -> None:
    """The PyTriton image peer answers Triton's JSON; its BYTES tensor `result` holds each image's object,
    held to the same rule as every other peer's (a wrong label is still wrong)."""
    item = {"label": "covid", "probabilities": {"covid": 0.9, "non-covid": 0.1}, "threshold": 0.5}
    assert check_answer(200, _triton([json.dumps(item)]), 1, full=False) is None
    wrong = {**item, "label": "non-covid"}
    assert "contradicts" in (check_answer(200, _triton([json.dumps(wrong)]), 1, full=False) or "")
    assert check_answer(200, _triton([json.dumps({"error": "not a readable image"})]), 1, full=False) == (
        "result 0: probabilities missing"
    )
    for broken in (_triton(["{not json"]), _triton([0.5], datatype="FP32"), _triton(["{}"], name="other")):
        assert check_answer(200, broken, 1, full=False) == "no results for 1 images"
    assert check_answer(200, _triton([json.dumps(item)]), 1, full=True) == "no results for 1 images"
