"""Issue 16 in the PACS pass: an image the service's input-domain check refuses (422, problem type ending
/not-a-chest-radiograph) gets no classification and no SR; the ledger records it as skipped, with the
service's reasons, and the pass still exits 0 (a refusal is not a fault). A real Orthanc and a real
`cxr serve` with the bundled model and its view model."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest
from pydicom.uid import generate_uid

from tests.support.dicoms import make_dicom
from tests.support.pacs import Orthanc, Service, cxr, load, report_rows
from tests.support.shareddata import BUNDLED_MODELS

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture
def bundled_service(tmp_path: Path) -> Service:
    server = Service(BUNDLED_MODELS, tmp_path / "service.log")
    server.start()
    yield server  # type: ignore[misc]
    server.stop()


def test_an_out_of_domain_dicom_gets_no_classification(
    orthanc: Orthanc, bundled_service: Service, tmp_path: Path
) -> None:
    study = generate_uid()
    rng = np.random.default_rng(16)
    # A "chest CR" whose pixels are noise and a flat ramp: the tags pass the search policy, the pixels
    # are not a radiograph.
    noise = make_dicom(
        rng.integers(0, 256, (512, 512)).astype(np.uint16), bits_stored=8, modality="CR", study_uid=study
    )
    ramp = np.tile(np.linspace(0, 255, 512), (512, 1)).astype(np.uint16)
    gradient = make_dicom(ramp, bits_stored=8, modality="CR", study_uid=study)
    for data in (noise, gradient):
        orthanc.upload(data)
    report = tmp_path / "report.jsonl"
    state = tmp_path / "state.sqlite"
    result = cxr(
        "pacs", "--dicomweb-url", orthanc.dicomweb, "--service-url", bundled_service.url,
        "--state", str(state), "--report", str(report), "--progress", "off", "--write", "sr",
    )  # fmt: skip
    # SR only: nothing may be written for these (with the SC on, each gets a "not analysed" SC instead, as
    # tests/pacs/test_sc.py checks against a stand-in service).
    assert result.returncode == 0, result.stderr[-3000:]
    assert orthanc.srs() == []  # nothing written into the record
    rows = {row["sop_instance_uid"]: row for row in report_rows(report)}
    with sqlite3.connect(state) as db:
        ledger = {uid: (status, kind, error) for uid, status, kind, error, result_json in db.execute(
            "SELECT sop_instance_uid, status, error_kind, error, result FROM instances"
        ) if result_json is None}  # fmt: skip
    for data in (noise, gradient):
        uid = str(load(data).SOPInstanceUID)
        assert (rows[uid]["status"], rows[uid]["error_kind"]) == ("skipped", "out-of-domain")
        assert rows[uid].get("label") is None and rows[uid].get("probability") is None
        status, kind, error = ledger[uid]
        assert (status, kind) == ("skipped", "out-of-domain")
        assert "not analysed" in error and "chest radiograph" in error
        # Issue 27: the service's reason names the score that failed and the card's threshold.
        assert "refused above 0.50" in error, error
