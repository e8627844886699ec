"""Where the real chest X-rays are: `../shared/data` beside the checkout (as in CI), or `CXR_SHARED_DATA`
for a checkout that lives elsewhere (a git worktree). Tests that need them skip, saying why, without them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = Path(os.environ.get("CXR_SHARED_DATA") or ROOT.parent / "shared" / "data")
CXR = SHARED_DATA / "cxr"
BUNDLED_MODELS = ROOT / "models"
BUNDLED_VERSION = BUNDLED_MODELS / "cxr-compact" / "1"


def need_shared_data() -> Path:
    """The cxr/ folder, or skip the test with the reason."""
    if not (CXR / "manifest.csv").is_file():
        pytest.skip(
            f"real chest X-rays not available at {CXR} (a fresh clone has no ../shared; set CXR_SHARED_DATA)"
        )
    return CXR


def split_film(name: str = "nih-") -> Path:
    """One real film of the bundled model's test split whose name starts with `name`."""
    import csv

    folder = need_shared_data()
    with (BUNDLED_VERSION / "split.csv").open(newline="") as handle:
        for row in csv.DictReader(handle):
            if row["split"] == "test" and row["file"].startswith(name):
                return folder / row["file"]
    pytest.skip(f"no test-split film named {name}*")
