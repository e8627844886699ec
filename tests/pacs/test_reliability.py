"""Exactly once and nothing lost: a pass SIGKILLed mid-way and run again, a crash between writing the SC or
the SR and recording it, and the PACS or the service stopped during a pass and started again. Each image
ends with exactly one SR and one heatmap SC in the PACS."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from pacs.cli import run
from pacs.client import ServiceClient
from pacs.dicomweb import DicomWebClient
from pacs.pipeline import Processor
from pacs.report import Report
from pacs.source import InstanceRef
from pacs.state import StateStore
from tests.support.dicoms import chest_set
from tests.support.pacs import (
    ROOT,
    Orthanc,
    Service,
    exactly_one_sr_and_sc_each,
    load,
    report_rows,
    settings,
    wait_for,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def _upload_set(orthanc: Orthanc, count: int) -> list[str]:
    images = chest_set(generate_uid(), count)
    for data in images:
        orthanc.upload(data)
    return [str(load(data).SOPInstanceUID) for data in images]


def test_sigkill_mid_pass_then_rerun_gives_exactly_one_sr_and_one_sc_per_image(
    orthanc: Orthanc, service: Service, tmp_path: Path
) -> None:
    uids = _upload_set(orthanc, 24)
    report = tmp_path / "report.jsonl"
    command = [
        sys.executable, "-m", "cxr", "pacs", "--dicomweb-url", orthanc.dicomweb,
        "--service-url", service.url, "--state", str(tmp_path / "state.sqlite"), "--report", str(report),
        "--workers", "1", "--progress", "off",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    classified_before = service.images_classified()
    kills = 0
    for kill_after in (4, 12):
        with (tmp_path / f"pass{kills}.log").open("wb") as log:
            process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
            wait_for(
                lambda n=kill_after: len(report_rows(report)) >= n, 60, f"{kill_after} images reported", 0.01
            )
            process.send_signal(signal.SIGKILL)
            assert process.wait(timeout=10) == -signal.SIGKILL
        kills += 1
        assert len(report_rows(report)) < len(uids), "the pass finished before it could be killed"
    finished = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr[-3000:]

    exactly_one_sr_and_sc_each(orthanc, uids)
    written = [row["sop_instance_uid"] for row in report_rows(report) if row["status"] == "written"]
    assert sorted(written) == sorted(uids)  # each image reported written exactly once over the three runs
    # Each kill can lose at most the answer in flight (one worker): classified at most once more.
    extra = service.images_classified() - classified_before - len(uids)
    assert 0 <= extra <= kills


class _DiesAfterStoring:
    """A sink that stores `count` objects (the SC, then the SR), then dies before the ledger records
    them (as a SIGKILL would)."""

    def __init__(self, inner: DicomWebClient, count: int) -> None:
        self.inner = inner
        self.count = count

    def store(self, dicom: bytes, study_uid: str | None = None) -> None:
        self.inner.store(dicom, study_uid)
        self.count -= 1
        if self.count == 0:
            raise SystemExit("killed after STOW-RS, before mark_written")


@pytest.mark.parametrize("stored", [1, 2], ids=["after-the-sc", "after-the-sc-and-the-sr"])
def test_crash_between_storing_the_results_and_recording_them_does_not_duplicate(
    orthanc: Orthanc, service: Service, tmp_path: Path, stored: int
) -> None:
    uid = _upload_set(orthanc, 1)[0]
    web = DicomWebClient(orthanc.dicomweb)
    source = load(web_retrieve(orthanc, uid))
    ref = InstanceRef(str(source.StudyInstanceUID), str(source.SeriesInstanceUID), uid)
    classifier = ServiceClient(service.url)
    with StateStore(tmp_path / "state.sqlite") as state:
        dying = Processor(
            state=state, service=classifier, sink=_DiesAfterStoring(web, stored), report=Report(None)
        )  # type: ignore[arg-type]
        with pytest.raises(SystemExit):
            dying.process(ref, lambda: web.retrieve(ref))
        assert state.get(uid) is not None and state.get(uid).status == "classified"  # type: ignore[union-attr]
        before = service.images_classified()
        again = Processor(state=state, service=classifier, sink=web, report=Report(None))
        assert again.process(ref, lambda: pytest.fail("must not retrieve again")).status == "written"
        assert service.images_classified() == before  # not classified a second time
    exactly_one_sr_and_sc_each(orthanc, [uid])
    web.close()
    classifier.close()


def web_retrieve(orthanc: Orthanc, sop_uid: str) -> bytes:
    import httpx

    (orthanc_id,) = orthanc.find("Instance", {"SOPInstanceUID": sop_uid})
    return httpx.get(f"{orthanc.url}/instances/{orthanc_id}/file", timeout=30).content


def _retries(caplog: pytest.LogCaptureFixture) -> int:
    return sum(
        1
        for record in list(caplog.records)
        if record.name == "pacs.retry" and "; retry " in record.getMessage()
    )


def _run_in_thread(config: object) -> tuple[threading.Thread, list[int]]:
    status: list[int] = []
    thread = threading.Thread(target=lambda: status.append(run(config)), daemon=True)
    thread.start()
    return thread, status


def test_pacs_outage_during_a_pass_is_retried_and_nothing_is_lost(
    orthanc: Orthanc, service: Service, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pacs.retry")
    # The PACS dies abruptly (SIGKILL): Orthanc's graceful stop took long enough for a warm service to
    # finish the whole pass first, and then no retry happened at all.
    uids = _upload_set(orthanc, 32)
    config = settings(tmp_path, service, dicomweb_url=orthanc.dicomweb, workers=1)
    thread, status = _run_in_thread(config)
    wait_for(lambda: len(report_rows(tmp_path / "report.jsonl")) >= 3, 60, "3 images done", 0.01)
    orthanc.stop(signal.SIGKILL)
    done = report_rows(tmp_path / "report.jsonl")
    assert thread.is_alive() and len(done) < len(uids), (status, len(done), done[-1:])
    wait_for(lambda: _retries(caplog) >= 3, 60, "3 retries while the PACS is down")
    orthanc.start()
    thread.join(timeout=120)
    assert status == [0]
    exactly_one_sr_and_sc_each(orthanc, uids)
    assert sorted(row["sop_instance_uid"] for row in report_rows(tmp_path / "report.jsonl")) == sorted(uids)


def test_service_outage_during_a_pass_is_retried_and_nothing_is_lost(
    orthanc: Orthanc, own_service: Service, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pacs.retry")
    uids = _upload_set(orthanc, 16)
    config = settings(tmp_path, own_service, dicomweb_url=orthanc.dicomweb, workers=1)
    thread, status = _run_in_thread(config)
    wait_for(lambda: len(report_rows(tmp_path / "report.jsonl")) >= 3, 60, "3 images done", 0.01)
    own_service.stop()
    wait_for(lambda: _retries(caplog) >= 3, 60, "3 retries while the service is down")
    own_service.start()
    thread.join(timeout=120)
    assert status == [0]
    exactly_one_sr_and_sc_each(orthanc, uids)
    retried = [
        r.getMessage() for r in caplog.records if r.name == "pacs.retry" and "; retry " in r.getMessage()
    ]
    assert any("classify" in message for message in retried)


def test_outage_longer_than_the_budget_stops_the_pass_with_status_3_and_the_next_pass_completes(
    orthanc: Orthanc, own_service: Service, tmp_path: Path
) -> None:
    uids = _upload_set(orthanc, 3)
    own_service.stop()
    config = settings(tmp_path, own_service, dicomweb_url=orthanc.dicomweb, retry_budget_s=1.0)
    assert run(config) == 3
    rows = report_rows(tmp_path / "report.jsonl")
    assert rows and {row["error_kind"] for row in rows} == {"transient"}
    assert len(rows) < len(uids) or len(rows) <= config.workers  # stopped starting new images
    own_service.start()
    assert run(config) == 0
    exactly_one_sr_and_sc_each(orthanc, uids)
