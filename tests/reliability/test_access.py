"""Access control and privacy: API keys compared in constant time against every key, keys kept out of
settings' repr, and no patient identifier or pixel byte in anything a real server writes.

Covered elsewhere, and listed with these in docs/reliability.md: the key gate, hashed keys, CORS off by
default (tests/service/api/test_app.py), security headers on the web page (tests/web/test_routes.py), the
container's non-root user (tests/deploy/test_compose.py)."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from pathlib import Path

import pytest

from service.api import auth
from service.settings import Settings
from tests.reliability import privacy
from tests.reliability.harness import running, tiny_model_dir


def test_every_configured_key_is_compared_with_compare_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    """No early exit: a match on the first key, a match on the last and no match cost the same comparisons,
    all through hmac.compare_digest, so timing tells nothing about which key or prefix came close."""
    calls: list[tuple[bytes, bytes]] = []
    original: Callable[[bytes, bytes], bool] = hmac.compare_digest

    def counting(left: bytes, right: bytes) -> bool:
        calls.append((left, right))
        return original(left, right)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    keys = ["first-key", "sha256:" + hashlib.sha256(b"second-key").hexdigest(), "third-key"]
    outcomes = []
    for presented in ("first-key", "second-key", "third-key", "third-kez", "", "x" * 10_000):
        calls.clear()
        outcomes.append(auth.key_matches(presented, keys))
        assert len(calls) == len(keys), presented
    assert outcomes == [True, True, True, False, False, False]


def test_api_keys_stay_out_of_settings_repr(tmp_path: Path) -> None:
    settings = Settings(
        model_dir=tiny_model_dir(tmp_path), api_keys=["plain-secret-key", "sha256:" + "ab" * 32]
    )
    assert "plain-secret-key" not in repr(settings) and "abab" not in repr(settings)


@pytest.mark.slow
def test_identified_dicoms_leave_no_identifier_or_pixel_bytes_in_the_server_output(tmp_path: Path) -> None:
    with running(tiny_model_dir(tmp_path), tmp_path / "server.log", "--log-level", "debug") as service:
        figures = privacy.run(service)
    assert figures.problems() == []
    assert figures.statuses["ok:200"] == 4 and figures.statuses["truncated:400"] == 4  # both paths ran
