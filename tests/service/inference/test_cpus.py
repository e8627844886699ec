"""usable_cpus: the affinity mask and the cgroup CPU quota (v2 and v1 files laid out in a temporary root)."""

from __future__ import annotations

import os
from pathlib import Path

from service.inference.cpus import usable_cpus
from service.settings import Settings

AFFINITY = len(os.sched_getaffinity(0))


def test_no_cgroup_files_means_the_affinity_mask(tmp_path: Path) -> None:
    assert usable_cpus(tmp_path) == AFFINITY


def test_cgroup_v2_quota_rounds_up_and_caps(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("50000 100000\n")  # half a CPU
    assert usable_cpus(tmp_path) == 1
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert usable_cpus(tmp_path) == AFFINITY
    (tmp_path / "cpu.max").write_text(f"{(AFFINITY + 30) * 100000} 100000\n")  # more than we may run on
    assert usable_cpus(tmp_path) == AFFINITY


def test_cgroup_v1_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert usable_cpus(tmp_path) == AFFINITY
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    assert usable_cpus(tmp_path) == 1


def test_decode_workers_default_to_the_usable_cpus() -> None:
    assert Settings().decode_workers == usable_cpus()
