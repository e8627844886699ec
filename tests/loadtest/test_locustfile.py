"""Real, short locust runs: headless locust against a real uvicorn on a free loopback port, every answer
checked by the locustfile.

- the tiny model and synthetic images: requests in every task and zero failures;
- issue 27: the bundled model (its input-domain check on) and the locustfile's default images: the
  images the service refuses as not chest radiographs are reported once each at start-up and left out,
  and the run has zero failures;
- the bundled model and only images it refuses: locust stops at once with one error line, exit 1."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from loadtest import targets
from loadtest.images import DEFAULT_FOLDERS, load_samples
from loadtest.refusals import refused_by_model
from service.inference.model import load_default
from tests.support.shareddata import BUNDLED_MODELS

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def _locust(
    model_repository: Path, tmp_path: Path, images: Path | None, *, users: int = 4
) -> tuple[subprocess.CompletedProcess[str], dict[str, dict[str, str]] | None, str]:
    """One headless run against a fresh `cxr serve` of the repository -> (the process, the stats rows
    by name or None when locust wrote none, the failures table)."""
    command = targets.service_command(
        model_repository,
        max_batch_size=8,
        max_queue_delay_ms=2.0,
        extra=["--providers", "CPUExecutionProvider", "--log-level", "warning"],
    )
    with targets.launch(
        "service", command, tmp_path / "service.log", ready_path="/readyz", timeout_s=60
    ) as server:
        env = {k: v for k, v in os.environ.items() if k != "CXR_LOADTEST_IMAGES"}
        env |= {"PYTHONPATH": str(ROOT), **({"CXR_LOADTEST_IMAGES": str(images)} if images else {})}
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
                str(users),
                "--spawn-rate",
                str(users),
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
            timeout=180,
        )
    stats = tmp_path / "locust_stats.csv"
    if not stats.is_file():
        return run, None, ""
    with stats.open() as handle:
        rows = {row["Name"]: row for row in csv.DictReader(handle)}
    return run, rows, (tmp_path / "locust_failures.csv").read_text()


def _classify_counts(rows: dict[str, dict[str, str]]) -> dict[str, int]:
    return {name: int(row["Request Count"]) for name, row in rows.items() if name.startswith("/v1/classify")}


def test_locust_headless_run_has_no_failures(tiny_model: Path, image_folder: Path, tmp_path: Path) -> None:
    run, rows, failures = _locust(tiny_model.parent.parent, tmp_path, image_folder)
    assert run.returncode == 0 and rows is not None, f"{run.stderr[-3000:]}\n{failures}"
    assert int(rows["Aggregated"]["Failure Count"]) == 0, failures
    classify = _classify_counts(rows)
    # Every format of the mix and the multipart task ran, each at least once.
    assert set(classify) == {f"/v1/classify [{kind}]" for kind in ("png", "jpeg", "dicom", "multipart")}
    assert min(classify.values()) >= 1, classify
    assert "leaving out" not in run.stderr  # the tiny model's card has no input-domain check


def test_the_default_images_have_no_failures_against_the_bundled_model(tmp_path: Path) -> None:
    """Issue 27: a photographed monitor (a colour image) among the defaults was refused with 422 and
    counted as a failure. Each refused image is now named once at start-up, with the reason, and left out."""
    if not any(folder.is_dir() for folder in DEFAULT_FOLDERS):
        pytest.skip(f"none of the default image folders is here: {[str(f) for f in DEFAULT_FOLDERS]}")
    expected = sorted(
        r.sample.name for r in refused_by_model(load_samples(), load_default(repository=BUNDLED_MODELS))
    )
    run, rows, failures = _locust(BUNDLED_MODELS, tmp_path, None, users=8)
    assert run.returncode == 0 and rows is not None, f"{run.stderr[-3000:]}\n{failures}"
    assert int(rows["Aggregated"]["Failure Count"]) == 0, failures
    assert min(_classify_counts(rows).values()) >= 1, rows
    left_out = [line for line in run.stderr.splitlines() if "leaving out " in line]
    assert sorted(line.split("leaving out ")[1].split(":")[0] for line in left_out) == expected, left_out
    for line in left_out:  # the service's reason, with the score that failed and the card's threshold
        assert "not analysed" in line and any(
            word in line for word in ("refused above", "refused below", "needs")
        ), line


def test_locust_stops_with_one_line_when_the_service_refuses_every_image(
    colour_folder: Path, tmp_path: Path
) -> None:
    """Colour pictures: the bundled model's check refuses them all."""
    run, _, _ = _locust(BUNDLED_MODELS, tmp_path, colour_folder)
    assert run.returncode == 1, run.stderr[-3000:]
    errors = [line for line in run.stderr.splitlines() if "/ERROR/" in line]
    assert len(errors) == 1 and "refuses all 4 images as not chest radiographs" in errors[0], run.stderr
    assert "Traceback" not in run.stderr
