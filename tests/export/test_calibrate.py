"""`cxr calibrate`'s graph edit on the tiny model: sigmoid(z * scale + shift) in the graph, the ranking kept,
and a second calibration replacing the first instead of stacking on it."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from export.calibrate import calibrated, fit, with_logit_output
from tests.support.tinymodel import build_graph


def _run(model: bytes, batch: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(None, {"image": batch}), strict=True))


def test_calibration_is_written_into_the_graph_and_replaces_itself() -> None:
    batch = np.random.default_rng(0).random((16, 32, 32, 1), dtype=np.float32)
    graph = build_graph(32)
    raw = _run(with_logit_output(graph), batch)["raw_logit"].reshape(-1)
    once = calibrated(graph, 2.0, -0.5)
    twice = calibrated(once, 0.5, 1.0)
    assert sum(node.name == "calibration_scale" for node in twice.graph.node) == 1
    got = _run(twice.SerializeToString(), batch)
    expected = 1.0 / (1.0 + np.exp(-(raw * 0.5 + 1.0)))
    np.testing.assert_allclose(got["probabilities"][:, 1], expected, atol=1e-6)
    np.testing.assert_allclose(got["probabilities"].sum(axis=1), 1.0, atol=1e-6)
    # the raw logit is still found behind the calibration nodes
    again = _run(with_logit_output(twice), batch)["raw_logit"].reshape(-1)
    np.testing.assert_allclose(again, raw, atol=1e-6)
    assert np.array_equal(np.argsort(got["probabilities"][:, 1]), np.argsort(expected))
    with pytest.raises(ValueError, match="positive"):
        calibrated(twice, -1.0, 0.0)


def test_fit_recovers_a_known_temperature() -> None:
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 3, 4000)
    truth = (rng.random(4000) < 1 / (1 + np.exp(-logits / 2.0))).astype(float)  # true scale 0.5, no shift
    result = fit(logits, truth)
    assert result["method"] == "temperature"
    assert result["temperature"] == pytest.approx(2.0, rel=0.1)
