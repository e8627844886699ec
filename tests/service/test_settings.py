"""Settings: CXR_* environment, `cxr serve` flags overriding it, and validation before any model loads."""

from __future__ import annotations

import argparse
import hashlib
import logging
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from service import server
from service.api.auth import key_matches
from service.settings import Settings, add_cli_flags, from_cli


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_cli_flags(parser)
    return parser.parse_args(list(argv))


def test_environment_is_read_with_the_prefix(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXR_MODEL_DIR", str(model_dir))
    monkeypatch.setenv("CXR_MAX_BATCH_SIZE", "4")
    monkeypatch.setenv("CXR_PROVIDERS", "CUDAExecutionProvider, CPUExecutionProvider")
    monkeypatch.setenv("CXR_API_KEYS", "key-one,key-two")
    monkeypatch.setenv("CXR_LOG_LEVEL", "DEBUG")
    settings = Settings()
    assert settings.model_dir == model_dir and settings.max_batch_size == 4
    assert settings.providers == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert settings.api_keys == ["key-one", "key-two"] and settings.log_level == "debug"
    assert settings.cors_origins == []  # CORS is off unless asked for
    assert "key-one" not in repr(settings) and "api_keys" not in repr(settings)


def test_flags_override_the_environment(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXR_MAX_BATCH_SIZE", "4")
    monkeypatch.setenv("CXR_QUEUE_CAPACITY", "7")
    settings = from_cli(
        parse(
            "--model-dir",
            str(model_dir),
            "--max-batch-size",
            "16",
            "--overload-status",
            "429",
            "--batch-policy",
            "fixed",
        )
    )
    assert settings.max_batch_size == 16  # flag beats env
    assert settings.batch_policy == "fixed" and Settings().batch_policy == "auto"
    assert settings.queue_capacity == 7  # env beats default when no flag is given
    assert settings.overload_status == 429


def test_every_field_has_a_flag() -> None:
    parser = argparse.ArgumentParser()
    add_cli_flags(parser)
    listed = set(re.findall(r"--([a-z0-9-]+)", parser.format_help())) - {"help"}
    listed -= {f"no-{name}" for name in listed}  # a boolean's --no-x
    assert listed == {name.replace("_", "-") for name in Settings.model_fields}
    with pytest.raises(SystemExit):
        parse("--overload-status", "500")
    with pytest.raises(SystemExit):
        parse("--batch-policy", "sometimes")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("max_batch_size", 0, "greater than or equal to 1"),
        ("queue_capacity", 0, "greater than or equal to 1"),
        ("request_timeout_s", 0, "greater than 0"),
        ("overload_status", 500, "503 or 429"),
        ("default_model", "absent", "is not in"),
        ("api_keys", ["sha256:nothex"], "64 hex digits"),
    ],
)
def test_invalid_values_are_refused(model_dir: Path, field: str, value: object, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(model_dir=model_dir, **{field: value})  # type: ignore[arg-type]


def test_an_empty_repository_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="holds no model"):
        Settings(model_dir=tmp_path)


def test_server_main_reports_bad_settings_without_values(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    args = parse("--model-dir", str(tmp_path), "--api-keys", "very-secret-key", "--max-batch-size", "0")
    with caplog.at_level(logging.ERROR):
        assert server.main(args) == 2
    assert "max_batch_size" in caplog.text and "very-secret-key" not in caplog.text


def test_key_matching_plain_and_hashed() -> None:
    hashed = "sha256:" + hashlib.sha256(b"k2").hexdigest()
    assert key_matches("k1", ["k1", hashed])
    assert key_matches("k2", ["k1", hashed])
    assert not key_matches("k3", ["k1", hashed])
    assert not key_matches(hashed, ["k1", hashed])  # the hash itself is not a key
    assert not key_matches("k1", [])


def test_the_default_model_repository_is_this_checkouts_models() -> None:
    """Regression: after model.py moved into service/inference/ (issue 26), `default_repository()` looked
    for service/models, missed it, and took an installed checkout's models instead (another worktree's,
    under an editable install), so `cxr serve`, `cxr predict` and the tests ran a model this checkout
    does not hold."""
    from service.inference.model import default_repository

    root = Path(__file__).resolve().parents[2]
    assert default_repository() == root / "models"
    assert Settings().model_dir == root / "models"
