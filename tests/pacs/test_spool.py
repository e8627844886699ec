"""pacs.spool: names that do not depend on the peer's text, the size limit, and files only this user reads."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from pacs.spool import Spool, SpoolFull


def test_spooled_images_are_private_to_this_user_and_named_by_digest(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", max_bytes=1000)
    path = spool.put("1.2.3.4", b"x" * 10)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "spool").stat().st_mode) == 0o700
    assert "1.2.3.4" not in path.name and path.parent == (tmp_path / "spool").resolve()


def test_a_put_that_does_not_fit_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", max_bytes=15)
    spool.put("1.2.3.4", b"x" * 10)
    with pytest.raises(SpoolFull):
        spool.put("1.2.3.5", b"y" * 10)
    assert len(list((tmp_path / "spool").iterdir())) == 1
    assert spool.used_bytes == 10
