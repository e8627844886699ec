"""Is an answer a correct classification? A load test counts a fast wrong answer as a failure.

The full check follows the API in docs/api.md (service answers); the short check covers the fields every
target of the benchmark returns (`label`, `probabilities`, `threshold`), so the naive baseline and the
peer framework are held to the same rule as the service.
"""

from __future__ import annotations

import json
import math
from typing import Any, TypeGuard

PROBABILITY_TOLERANCE = 1e-3
"""float32 softmax/sigmoid outputs sum to 1 within ~1e-6; anything past 1e-3 is a wrong answer."""


def _number(value: Any) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_result(result: Any, *, positive_label: str, full: bool) -> str | None:
    """None if one image's result is consistent, else what is wrong with it."""
    if not isinstance(result, dict):
        return "a result is not an object"
    probabilities = result.get("probabilities")
    label = result.get("label")
    threshold = result.get("threshold")
    if not isinstance(probabilities, dict) or not probabilities:
        return "probabilities missing"
    if not all(_number(p) and 0.0 <= p <= 1.0 for p in probabilities.values()):
        return f"probabilities out of [0, 1]: {probabilities}"
    total = sum(probabilities.values())
    if abs(total - 1.0) > PROBABILITY_TOLERANCE:
        return f"probabilities sum to {total:.6f}"
    if not _number(threshold) or not 0.0 <= threshold <= 1.0:
        return f"threshold missing or out of [0, 1]: {threshold!r}"
    if label not in probabilities:
        return f"label {label!r} is not one of {sorted(probabilities)}"
    if len(probabilities) == 2 and positive_label in probabilities:
        other = next(name for name in probabilities if name != positive_label)
        expected = positive_label if probabilities[positive_label] >= threshold else other
    else:
        expected = max(probabilities, key=lambda name: probabilities[name])
    if label != expected:
        return f"label {label!r} contradicts p={probabilities} at threshold {threshold}"
    if full:
        model = result.get("model")
        if not isinstance(model, dict) or not {"name", "version", "sha256"} <= set(model):
            return "model name/version/sha256 missing"
        timing = result.get("timing")
        keys = ("queue_ms", "inference_ms", "total_ms")
        if not isinstance(timing, dict) or not all(_number(timing.get(k)) and timing[k] >= 0 for k in keys):
            return f"timing missing or negative: {timing!r}"
    return None


def _triton_results(answer: dict[str, Any]) -> dict[str, Any]:
    """A Triton (KServe v2) answer of the PyTriton image peer -> {"results": [...]}: its BYTES tensor
    `result` holds one JSON object per image; anything else leaves no results (an error)."""
    outputs = answer.get("outputs")
    result = next(
        (o for o in outputs if isinstance(o, dict) and o.get("name") == "result"), None
    ) if isinstance(outputs, list) else None  # fmt: skip
    data = result.get("data") if isinstance(result, dict) and result.get("datatype") == "BYTES" else None
    if not isinstance(data, list) or not all(isinstance(item, str) for item in data):
        return {}
    try:
        return {"results": [json.loads(item) for item in data]}
    except ValueError:
        return {}


def check_answer(
    status: int, body: bytes, images: int, *, positive_label: str = "covid", full: bool = True
) -> str | None:
    """None if an HTTP answer classifies all `images` images correctly, else a short reason (for stats,
    so it never echoes the body)."""
    if status != 200:
        return f"HTTP {status}"
    try:
        answer = json.loads(body)
    except ValueError:
        return "body is not JSON"
    if isinstance(answer, list) and not full:  # a BentoML batchable API answers the request's list as is
        answer = {"results": answer}
    if isinstance(answer, dict) and "outputs" in answer and not full:
        answer = _triton_results(answer)
    if not isinstance(answer, dict):
        return "body is not a JSON object"
    results = answer.get("results")
    if not isinstance(results, list) or len(results) != images:
        count = len(results) if isinstance(results, list) else "no"
        return f"{count} results for {images} images"
    if full and not isinstance(answer.get("request_id"), str):
        return "request_id missing"
    for index, result in enumerate(results):
        if full and isinstance(result, dict) and result.get("index") != index:
            return f"result {index} has index {result.get('index')!r}"
        problem = check_result(result, positive_label=positive_label, full=full)
        if problem is not None:
            return f"result {index}: {problem}"
    return None
