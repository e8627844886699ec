"""The parts that need no server: settings and flags, the retry loop, multipart parsing, the ledger."""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from cxr.cli import build_parser
from pacs.canvas import MIN_WIDTH, compose
from pacs.cli import main
from pacs.dicomweb import split_multipart
from pacs.retry import Backoff, Permanent, Transient, retry
from pacs.sc import Look
from pacs.settings import PacsSettings, add_cli_flags, from_cli
from pacs.state import StateStore
from tests.support.pacs import OLD_LEDGER_TABLE


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_cli_flags(parser)
    return parser.parse_args(argv)


def test_flags_override_environment_and_lists_repeat(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CXR_PACS_SERVICE_URL", "http://from-env:8000")
    monkeypatch.setenv("CXR_PACS_MODALITIES", "CR")
    monkeypatch.setenv("CXR_PACS_TOKEN", "t0ken")
    args = _parse(
        "--dicomweb-url", "http://pacs/dicom-web", "--study-uid", "1.2.3,1.2.4", "--study-uid", "1.2.5",
        "--no-tls-verify", "--state", str(tmp_path / "s.sqlite"),
    )  # fmt: skip
    settings = from_cli(args)
    assert settings.service_url == "http://from-env:8000" and settings.modalities == ["CR"]
    assert settings.study_uids == ["1.2.3", "1.2.4", "1.2.5"]
    assert settings.verify is False and settings.mode == "dicomweb"
    assert settings.token is not None and "t0ken" not in repr(settings)
    assert from_cli(_parse("--dimse-host", "pacs", "--modality", "dx")).mode == "dimse"
    assert from_cli(_parse("--dimse-host", "pacs", "--modality", "dx")).modalities == ["DX"]


@pytest.mark.parametrize(
    "argv",
    [
        (),  # no PACS at all
        ("--dicomweb-url", "http://p", "--study-date", "2024-01-01"),
        ("--dicomweb-url", "http://p", "--username", "u", "--token", "t"),
        ("--dicomweb-url", "http://p", "--ae-title", "MUCH-TOO-LONG-AE-TITLE"),
        ("--listen",),  # nowhere to write results
        ("--dicomweb-url", "http://p", "--sc-opacity", "1.5"),
        ("--dicomweb-url", "http://p", "--sc-max-size", "64"),
    ],
)
def test_bad_settings_exit_2(argv: tuple[str, ...], monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("CXR_PACS_DICOMWEB_URL", "CXR_PACS_DIMSE_HOST"):
        monkeypatch.delenv(variable, raising=False)
    args = build_parser(["pacs", *argv]).parse_args(["pacs", *argv])
    assert main(args) == 2


def test_write_and_sc_flags_become_the_pipelines_outputs() -> None:
    default = from_cli(_parse("--dicomweb-url", "http://p")).outputs
    assert (default.sr, default.sc, default.look) == (True, True, Look("jet", 0.45, 1024))
    chosen = from_cli(
        _parse("--dicomweb-url", "http://p", "--write", "sc", "--sc-colormap", "turbo", "--sc-opacity", "0.3",
               "--sc-max-size", "2048")
    ).outputs  # fmt: skip
    assert (chosen.sr, chosen.sc, chosen.look) == (False, True, Look("turbo", 0.3, 2048))
    assert from_cli(_parse("--dicomweb-url", "http://p", "--write", "sr")).outputs.sc is False


def test_sc_canvas_keeps_the_caution_at_both_ends_and_the_radiograph_untouched() -> None:
    rng = np.random.default_rng(0)
    for shape in ((96, 80), (1024, 900)):
        gray = rng.integers(0, 256, shape, dtype=np.uint8)
        picture, layout = compose(
            gray,
            None,
            result_lines=["NOT ANALYSED: " + "a long reason that must wrap " * 4],
            model_lines=["model.onnx sha256 " + "f" * 64],
        )
        x0, y0, x1, y1 = layout.image_box
        assert picture.shape == (layout.height, layout.width, 3) and layout.width >= MIN_WIDTH
        assert (x1 - x0, y1 - y0) == (shape[1], shape[0])
        assert np.array_equal(picture[y0:y1, x0:x1, 0], gray)  # the radiograph's own pixels, not resampled
        red = (picture[:, :, 0] > 150) & (picture[:, :, 1] < 40)  # the caution's band (white text on red)
        red_rows = np.nonzero(red.mean(axis=1) > 0.5)[0]
        assert red_rows.min() < y0 and red_rows.max() >= y1  # above and below the radiograph


def test_study_date_range_forms_are_accepted() -> None:
    for value in ("20240101", "20240101-20240131", "20240101-", "-20240131"):
        assert PacsSettings(dicomweb_url="http://p", study_date=value).study_date == value


def test_retry_until_success_and_retry_after_is_a_floor() -> None:
    calls: list[float] = []

    def flaky() -> str:
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise Transient("down", retry_after_s=0.2 if len(calls) == 1 else None)
        return "ok"

    assert retry(flaky, Backoff(attempts=5, initial_s=0.01, maximum_s=0.02, budget_s=5), what="t") == "ok"
    assert calls[1] - calls[0] >= 0.2


def test_retry_gives_up_on_attempts_budget_and_stop_and_never_retries_permanent() -> None:
    count = 0

    def down() -> None:
        nonlocal count
        count += 1
        raise Transient("down")

    with pytest.raises(Transient):
        retry(down, Backoff(attempts=3, initial_s=0, maximum_s=0, budget_s=5), what="t")
    assert count == 3
    started = time.monotonic()
    with pytest.raises(Transient):
        retry(down, Backoff(attempts=1000, initial_s=0.05, maximum_s=0.05, budget_s=0.3), what="t")
    assert time.monotonic() - started < 1.0
    stop = threading.Event()
    stop.set()
    count = 0
    with pytest.raises(Transient):
        retry(down, Backoff(attempts=1000, initial_s=10, maximum_s=10, budget_s=100), what="t", stop=stop)
    assert count == 1

    def refused() -> None:
        nonlocal count
        count += 1
        raise Permanent("no")

    count = 0
    with pytest.raises(Permanent):
        retry(refused, Backoff(), what="t")
    assert count == 1
    with pytest.raises(ValueError, match="attempts"):
        Backoff(attempts=0)


def test_split_multipart_related() -> None:
    body = (
        b"--b1\r\nContent-Type: application/dicom\r\n\r\n\x00\x01--b1 in data\r\n"
        b"--b1\r\nContent-Type: application/dicom\r\n\r\nsecond\r\n--b1--\r\n"
    )
    assert split_multipart(body, 'multipart/related; type="application/dicom"; boundary=b1') == [
        b"\x00\x01--b1 in data",
        b"second",
    ]
    with pytest.raises(Permanent):
        split_multipart(body, "multipart/related")


def test_ledger_transitions(tmp_path: Path) -> None:
    with StateStore(tmp_path / "state.sqlite") as state:
        assert state.needs_work("1")
        state.mark_failed("1", "s", "se", kind="transient", error="down")
        assert state.needs_work("1")
        state.mark_classified("1", "s", "se", result={"label": "covid"}, sr_uid="9", sr=b"SR")
        state.mark_failed("1", "s", "se", kind="transient", error="STOW down")  # keeps the result and SR
        record = state.get("1")
        assert record is not None and record.status == "classified" and record.sr == b"SR"
        assert record.attempts == 2  # failures counted over the image's life
        state.mark_written("1")
        assert not state.needs_work("1")
        state.mark_failed("2", "s", "se", kind="permanent", error="bad")
        assert not state.needs_work("2") and state.needs_work("2", retry_failed=True)
        state.mark_skipped("3", "s", "se", reason="hand")
        assert not state.needs_work("3", retry_failed=True)
        assert state.counts() == {"written": 1, "failed": 1, "skipped": 1}
    with StateStore(tmp_path / "state.sqlite") as state:  # the SC travels with the SR, and is dropped with it
        state.mark_classified("4", "s", "se", result={}, sr_uid=None, sr=None, sc_uid="8", sc=b"SC")
        record = state.get("4")
        assert record is not None and (record.sr, record.sc, record.sc_sop_instance_uid) == (None, b"SC", "8")
        state.mark_written("4")
        assert state.get("4").sc is None  # type: ignore[union-attr]
    with StateStore(tmp_path / "state.sqlite") as reopened:  # durable
        assert reopened.get("1") is not None and reopened.get("1").sr is None  # type: ignore[union-attr]


def test_a_ledger_from_before_the_sc_gains_its_columns(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.sqlite"
    old = sqlite3.connect(path)
    old.executescript(
        OLD_LEDGER_TABLE
        + "INSERT INTO instances VALUES ('1', 's', 'se', 'classified', '{}', '9', x'5352', NULL, NULL, 0, 0, 0);"
    )
    old.commit()
    old.close()
    with StateStore(path, destination="dicomweb:http://pacs/dicom-web") as state:
        record = state.get("1")
        assert record is not None and (record.sr, record.sc) == (b"SR", None)  # finished as it was begun
