"""loadtest.compare for real, in seconds: two service processes with different settings (tiny model,
synthetic full-size images), measured in alternating rounds."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtest.compare import compare, report
from loadtest.images import load_samples
from loadtest.plan import Plan

pytestmark = pytest.mark.slow


def test_compare_alternates_configurations_and_reports_per_round_ratios(
    tiny_model: Path, image_folder: Path, tmp_path: Path
) -> None:
    samples = load_samples([image_folder], formats={"jpeg"})
    plan = Plan(model_dir=tiny_model, samples=samples, out_dir=tmp_path, log_dir=tmp_path / "logs")
    plan.warmup_s, plan.duration_s = 0.3, 0.8

    configs = compare(plan, ["", "--max-batch-size 1 --max-queue-delay-ms 0"], rounds=2, clients=2)

    for config in configs:
        assert len(config.images_per_s) == 2 and all(rate > 0 for rate in config.images_per_s)
        assert all(ms > 0 for ms in config.loop_ms + config.workers_ms + config.generator_ms)
    lines = report(configs)
    assert lines[2].startswith("| (defaults) |") and lines[2].endswith("| - |")
    assert "| --max-batch-size 1 --max-queue-delay-ms 0 |" in lines[3]
    assert "faster in" in lines[3] and "of 2)" in lines[3]
    assert (tmp_path / "logs" / "compare-1.log").is_file()
