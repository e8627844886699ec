"""loadtest.perf: perf_analyzer on the tensor path, the servers' counters that say every request it sent was
answered, and the skip path when perf_analyzer cannot run here."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import httpx
import numpy as np
import pytest

from loadtest import bench_report, perf, targets
from loadtest.images import load_samples
from service.inference.model import OnnxModel


def _serve(model_dir: Path) -> list[str]:
    flags = ["--default-model", model_dir.parent.name, "--providers", "CPUExecutionProvider"]
    return targets.service_command(
        model_dir.parent.parent, max_batch_size=4, max_queue_delay_ms=2, extra=flags
    )


@pytest.mark.slow
def test_counters_check_catches_a_non_200_answer(tiny_model: Path, tmp_path: Path) -> None:
    """The check reads the service's real /metrics: one refused /v2 request among good ones fails it."""
    size = OnnxModel(tiny_model, providers=["CPUExecutionProvider"]).input_size
    image = np.zeros((1, size, size, 1), dtype=np.float32)
    good = {
        "inputs": [
            {"name": "image", "shape": list(image.shape), "datatype": "FP32", "data": image.ravel().tolist()}
        ]
    }
    wrong = {"inputs": [{"name": "image", "shape": [1, 3], "datatype": "FP32", "data": [0.0, 0.0, 0.0]}]}
    command = _serve(tiny_model)
    with targets.launch("service", command, tmp_path / "serve.log", ready_path="/readyz") as target:
        infer = f"{target.url}/v2/models/{tiny_model.parent.name}/infer"
        before = perf.v2_counts(httpx.get(target.url + "/metrics").text)
        for _ in range(3):
            assert httpx.post(infer, json=good).status_code == 200
        middle = perf.v2_counts(httpx.get(target.url + "/metrics").text)
        assert httpx.post(infer, json=wrong).status_code == 400
        after = perf.v2_counts(httpx.get(target.url + "/metrics").text)
    clean = perf.answered(before, middle, "200", sent=3)
    assert clean == {"ok": 3.0, "other": {}, "sent_measured": 3, "pass": True}
    refused = perf.answered(before, after, "200", sent=3)
    assert refused["pass"] is False and refused["other"] == {"400": 1.0}
    # Fewer answered than perf_analyzer says it measured fails too.
    assert perf.answered(before, middle, "200", sent=4)["pass"] is False


def test_perf_analyzer_that_cannot_run_is_reported_skipped_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_model: Path
) -> None:
    """scripts/perf_analyzer.sh's own one-line reason reaches results.json, the report and acceptance."""
    monkeypatch.setenv("CXR_PERF_ANALYZER_CACHE", str(tmp_path / "cache"))
    reason = perf.prepare(python="/bin/false")
    assert reason == "/bin/false has no pip"
    assert not (tmp_path / "cache").exists() and not (tmp_path / "cache.partial").exists()

    monkeypatch.setattr(perf, "prepare", lambda: reason)
    section = perf.run(tiny_model, [], tmp_path / "out")
    assert section == {"skipped": "/bin/false has no pip"}
    lines = bench_report.perf_analyzer_section(section)
    assert "Skipped: /bin/false has no pip." in lines
    (check,) = bench_report._perf_analyzer_check(section)
    assert check["pass"] is None and "/bin/false has no pip" in check["value"]


def test_report_puts_both_servers_side_by_side_and_fails_a_non_200() -> None:
    row = {"throughput_per_s": 40.0, "p50_ms": 20.0, "p90_ms": 30.0, "p95_ms": 35.0, "p99_ms": 50.0}
    section = {
        "sweep": {"concurrency": "1:4:3", "window_ms": 1000, "max_trials": 3, "stability_percent": 50.0},
        "input": "2 films",
        "service_v2": {
            "rows": [{"concurrency": 1, **row}, {"concurrency": 4, **row}],
            "server_counted": {"ok": 90.0, "other": {"503": 2.0}, "sent_measured": 80, "pass": False},
        },
        "pytriton": {"skipped": "PyTriton did not start: port in use"},
    }
    text = "\n".join(bench_report.perf_analyzer_section(section))
    assert "| 1 | 40.0 | 20.0 / 35.0 / 50.0 | - | - |" in text
    assert "| 4 | 40.0 |" in text
    assert "PyTriton (Triton 2.51): **skipped**: PyTriton did not start: port in use" in text
    (check,) = bench_report._perf_analyzer_check(section)
    assert check["pass"] is False and "503" in check["value"]


def test_input_data_holds_the_prepared_tensors(tiny_model: Path, image_folder: Path, tmp_path: Path) -> None:
    model = OnnxModel(tiny_model, providers=["CPUExecutionProvider"])
    samples = [s for s in load_samples([image_folder]) if s.fmt == "png"]
    path = perf.input_data(model, samples, tmp_path / "data.json", count=2)
    entries = json.loads(path.read_text())["data"]
    assert len(entries) == min(2, len(samples))
    size = model.input_size
    assert entries[0]["image"]["shape"] == [size, size, 1]
    assert len(base64.b64decode(entries[0]["image"]["b64"])) == size * size * 4


def test_triton_counters_are_read_per_model_from_its_exposition() -> None:
    # Triton's counters carry no `_total` suffix; the Prometheus parser renames their samples to it.
    text = (
        "# TYPE nv_inference_request_success counter\n"
        'nv_inference_request_success{model="cxr",version="1"} 1310\n'
        "# TYPE nv_inference_request_failure counter\n"
        'nv_inference_request_failure{model="cxr",version="1"} 2\n'
        'nv_inference_request_failure{model="other",version="1"} 7\n'
    )
    assert perf.triton_counts(text, "cxr") == {"success": 1310.0, "failure": 2.0}
