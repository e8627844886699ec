"""A real, short locust run: headless locust against a real uvicorn on a free loopback port (tiny model),
every answer checked by the locustfile; the run must end with requests in every task and zero failures."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from loadtest import targets

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def test_locust_headless_run_has_no_failures(tiny_model: Path, image_folder: Path, tmp_path: Path) -> None:
    command = targets.service_command(
        tiny_model.parent.parent,
        max_batch_size=8,
        max_queue_delay_ms=2.0,
        extra=["--providers", "CPUExecutionProvider", "--log-level", "warning"],
    )
    with targets.launch(
        "service", command, tmp_path / "service.log", ready_path="/readyz", timeout_s=60
    ) as server:
        env = {**os.environ, "CXR_LOADTEST_IMAGES": str(image_folder), "PYTHONPATH": str(ROOT)}
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "locust",
                "-f",
                str(ROOT / "loadtest" / "locustfile.py"),
                "--headless",
                "--host",
                server.url,
                "--users",
                "4",
                "--spawn-rate",
                "4",
                "--run-time",
                "4s",
                "--csv",
                str(tmp_path / "locust"),
                "--only-summary",
                "--loglevel",
                "WARNING",
            ],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    with (tmp_path / "locust_stats.csv").open() as handle:
        rows = {row["Name"]: row for row in csv.DictReader(handle)}
    failures = (tmp_path / "locust_failures.csv").read_text()
    assert run.returncode == 0, f"{run.stderr[-3000:]}\n{failures}"
    assert int(rows["Aggregated"]["Failure Count"]) == 0, failures
    classify = {
        name: int(row["Request Count"]) for name, row in rows.items() if name.startswith("/v1/classify")
    }
    # Every format of the mix and the multipart task ran, each at least once.
    assert set(classify) == {f"/v1/classify [{kind}]" for kind in ("png", "jpeg", "dicom", "multipart")}
    assert min(classify.values()) >= 1, classify
