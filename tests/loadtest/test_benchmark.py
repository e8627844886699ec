"""`cxr bench --quick`: the whole harness for real, in seconds (tiny model, synthetic full-size images,
real uvicorn processes on free loopback ports, LitServe from its own cached environment), and the Ray Serve
peer answering the same images."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from loadtest import targets
from loadtest.benchmark import run
from loadtest.checks import check_answer
from loadtest.images import load_samples
from loadtest.plan import BenchError, Plan
from tests.loadtest.conftest import colour_samples
from tests.support.shareddata import BUNDLED_VERSION

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def test_quick_benchmark_writes_results_doc_and_plot(
    tiny_model: Path, image_folder: Path, tmp_path: Path
) -> None:
    samples = load_samples([image_folder], formats={"jpeg", "png"})
    plan = Plan(
        model_dir=tiny_model,
        samples=samples,
        out_dir=tmp_path,
        targets=["naive", "service", "litserve"],
        log_dir=tmp_path / "logs",
    )
    plan.shrink()
    plan.concurrency = [1, 2]
    plan.service_variants = {"--log-level warning": ["--log-level", "warning"]}

    results = run(plan)

    assert results == json.loads((tmp_path / "results.json").read_text())
    runs = results["runs"]
    assert runs[0]["target"] == "service"  # the service goes first: it sets the open-loop rates
    # LitServe (loadtest/peers.py) is measured from its own environment, or skipped with the reason.
    litserve = results["peers"]["litserve"]
    measured_peers = () if "skipped" in litserve else ("litserve",)
    assert {(r["target"], r["mode"]) for r in runs} == {
        (target, mode) for target in ("service", "naive", *measured_peers) for mode in ("closed", "open")
    } | {("service --log-level warning", "variant")}
    for closed in (r for r in runs if r["mode"] == "closed"):
        assert closed["ok"] > 0 and closed["error_rate"] == 0.0, closed
    assert results["limit"]["images_per_s"] > 0
    assert {"decode (full-size)", "inference, batch 8 (per image)"} <= set(results["limit"]["stages_ms"])
    overload = results["overload"]
    assert overload["only_2xx_503_429"], overload["statuses_all"]
    assert overload["max_request_s"] <= overload["deadline_s"] + 0.5
    # Recovery is measured against the same level just before the overload, both real windows.
    assert overload["before"]["ok"] > 0 and overload["before"]["images_per_s"] > 0
    assert results["limit"]["cpu_ms_per_image"] > 0
    # The HTTP floor ran at the service's peak level and its CPU per request was measured.
    floor = results["http_floor"]
    assert floor["ok"] > 0 and floor["error_rate"] == 0.0 and floor["cpu_ms"]["event loop thread"] > 0
    # The limit's pipeline in its own process, alone and beside the floor under load.
    beside = results["beside_floor"]
    assert len(beside["pairs"]) == plan.pairs and beside["offered_requests_per_s"] > 0
    for pair in beside["pairs"]:
        assert pair["alone"] > 0 and pair["beside"] > 0 and pair["floor_cpu_ms"]["event loop thread"] > 0
    repeats = [r for r in runs if r["target"] == "service" and r.get("repeat")]
    assert len(repeats) == plan.pairs and all(r["paired_limit"] > 0 for r in repeats)
    checks = {check["check"].split(" (")[0]: check for check in results["acceptance"]}
    assert "median of 1 back-to-back pairs" in next(
        check["check"] for check in results["acceptance"] if check["check"].startswith("service peak / in-")
    )
    document = (tmp_path / "benchmarks.md").read_text()
    if measured_peers:
        # The quick plan tries the first documented setting only, and the report says which was kept.
        (setting,) = litserve["settings"]
        assert setting["ok"] > 0 and setting["error_rate"] == 0.0 and litserve["chosen"] == setting["setting"]
        assert f"| LitServe (the service's decoder) | {setting['setting']} (kept) |" in document
        assert checks["service peak / best peer"]["value"] > 0
    else:
        assert litserve["skipped"] and "| LitServe (the service's decoder) | **skipped**: " in document
        assert checks["service peak / best peer"]["pass"] is None  # not measured, not passed
    assert "skipped" in results["gpu"] or results["gpu"]["providers"]
    assert "Do not edit by hand" in document and "Quick smoke run" in document
    assert "## Service settings, measured end to end" in document and "event loop thread ms" in document
    # Each variant is measured next to the defaults (not against the sweep, minutes earlier).
    (variant,) = [r for r in runs if r["mode"] == "variant"]
    assert variant["ok"] > 0 and variant["paired_defaults"] > 0
    assert "| --log-level warning |" in document and "defaults next to it" in document
    assert "## GPU" in document and "| cxr service (defaults) | 1 |" in document
    assert "| HTTP floor: uvicorn + an app that only reads the body |" in document
    assert "What receiving the films costs, measured: the limit's pipeline" in document
    # The batch policy the service chose at warm-up is recorded and stated.
    batching = results["batching"]
    assert batching["policy"] == "auto" and batching["batch_sizes"][-1] == batching["max_batch_size"]
    assert (
        f"Batch policy chosen by the service at warm-up: auto, batches up to {batching['max_batch_size']}"
        in document
    )
    assert (tmp_path / "benchmarks-throughput-p99.png").read_bytes().startswith(b"\x89PNG")


def test_ray_serve_peer_answers_like_the_naive_baseline(
    tiny_model: Path, image_folder: Path, tmp_path: Path
) -> None:
    pytest.importorskip("ray.serve")
    port = targets.free_port()
    command = targets.peer_command(tiny_model, port, max_batch_size=4, max_queue_delay_ms=2.0)
    with targets.launch(
        "peer", command, tmp_path / "peer.log", ready_path="/healthz", port=port, timeout_s=180
    ) as peer:
        for sample in load_samples([image_folder]):
            response = httpx.post(
                peer.url + "/", content=sample.data, headers={"Content-Type": sample.content_type}, timeout=60
            )
            assert check_answer(response.status_code, response.content, 1, full=False) is None, sample.name


def test_bench_without_images_the_model_classifies_stops_with_one_line(
    colour_folder: Path, tmp_path: Path
) -> None:
    """Regression (issue 27): `cxr bench` given only images the bundled model's input-domain check refuses
    (then: its synthetic images) crashed with `ValueError: rate must be > 0` after its first sweep. It now
    stops before measuring anything, saying why in one line."""
    env = {k: v for k, v in os.environ.items() if k != "CXR_LOADTEST_IMAGES"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "cxr",
            "bench",
            "--quick",
            "--images",
            str(colour_folder),
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**env, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("cxr bench: the input-domain check of cxr-compact v1 refuses all 2 images")
    assert "--images" in last and "Traceback" not in result.stderr
    assert not (tmp_path / "out" / "results.json").exists()


def test_a_service_that_classifies_nothing_is_a_bench_error_not_a_zero_rate(tmp_path: Path) -> None:
    """The same bug one level down: `run()` given only images the service refuses (every answer a 422)
    says so instead of scheduling an open-loop sweep at 0 requests/s."""
    plan = Plan(
        model_dir=BUNDLED_VERSION,
        samples=colour_samples(),  # every one refused by the colour rule
        out_dir=tmp_path,
        targets=["service"],
        log_dir=tmp_path / "logs",
    )
    plan.shrink()
    plan.concurrency = [1]
    with pytest.raises(BenchError, match="the service classified no image at any load level") as raised:
        run(plan)
    assert "'422'" in str(raised.value), raised.value
