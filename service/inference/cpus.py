"""How many CPUs this process may really use: its affinity mask and its cgroup's CPU quota.

`os.cpu_count()` reports the host's cores: a Kubernetes replica limited to 2 CPUs on a 32-core node would
start 32 decode threads that the quota then throttles. Thread pools are sized from `usable_cpus()` instead.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _quota(root: Path) -> float | None:
    """CPUs allowed by the cgroup quota (v2 `cpu.max`, else v1 `cpu.cfs_quota_us`), None when unlimited."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us


def usable_cpus(cgroup_root: Path = CGROUP_ROOT) -> int:
    """CPUs this process may use: the smaller of its affinity mask and its cgroup quota (rounded up), >= 1.

    Inside a container the cgroup namespace makes `/sys/fs/cgroup` the container's own cgroup, which is
    where Docker's `--cpus` and Kubernetes' `limits.cpu` land."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = _quota(cgroup_root)
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)
