"""The ledger is keyed by image and destination (#25): a second PACS holding the same images gets its
results too, from the same state file; a ledger from before destinations is taken over by the PACS it is
first used with."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.uid import generate_uid

from pacs.cli import run
from pacs.state import UNKNOWN_DESTINATION, StateStore
from tests.support.dicoms import chest_set
from tests.support.pacs import (
    OLD_LEDGER_TABLE,
    Orthanc,
    Service,
    exactly_one_sr_and_sc_each,
    load,
    report_rows,
    settings,
)


def test_rows_of_one_destination_are_not_another_s(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    with StateStore(path, destination="dicomweb:http://a/dicom-web") as first:
        first.mark_classified("1.2", "1", "1.1", result={"label": "covid"}, sr_uid="9", sr=b"SR")
        first.mark_written("1.2")
        assert not first.needs_work("1.2")
    with StateStore(path, destination="dimse:B@b:104") as second:
        assert second.needs_work("1.2") and second.get("1.2") is None and second.counts() == {}
        second.mark_skipped("1.2", "1", "1.1", reason="hand")
    with StateStore(path, destination="dicomweb:http://a/dicom-web") as first:
        record = first.get("1.2")
        assert record is not None and record.status == "written"


def test_a_ledger_keyed_by_uid_alone_is_taken_over_by_its_first_destination(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    old = sqlite3.connect(path)
    old.executescript(
        OLD_LEDGER_TABLE + "CREATE INDEX instances_status ON instances (status);"
        "INSERT INTO instances VALUES ('1', 's', 'se', 'written', '{}', '9', NULL, NULL, NULL, 0, 0, 0);"
    )
    old.commit()
    old.close()
    with StateStore(path) as anonymous:  # a store without a destination takes nothing over
        assert anonymous.get("1") is None
    with StateStore(path, destination="dimse:A@a:104") as first:
        record = first.get("1")
        assert record is not None and record.status == "written" and record.sc is None
    with StateStore(path, destination="dimse:B@b:104") as second:
        assert second.get("1") is None
    with sqlite3.connect(path) as db:
        assert db.execute(
            "SELECT COUNT(*) FROM instances WHERE destination = ?", (UNKNOWN_DESTINATION,)
        ).fetchone() == (0,)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_second_pacs_holding_the_same_images_gets_its_results(
    make_orthanc: Callable[..., Orthanc], service: Service, tmp_path: Path
) -> None:
    images = chest_set(generate_uid(), 2)
    uids = [str(load(data).SOPInstanceUID) for data in images]
    first, second = make_orthanc(), make_orthanc()
    for orthanc in (first, second):
        for data in images:
            orthanc.upload(data)
    assert run(settings(tmp_path, service, dicomweb_url=first.dicomweb)) == 0
    assert run(settings(tmp_path, service, dicomweb_url=second.dicomweb)) == 0  # the same state file
    exactly_one_sr_and_sc_each(first, uids)
    exactly_one_sr_and_sc_each(second, uids)
    assert run(settings(tmp_path, service, dicomweb_url=second.dicomweb)) == 0  # and nothing twice
    exactly_one_sr_and_sc_each(second, uids)


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_a_qido_answer_with_a_non_conformant_uid_is_refused_and_reported_never_retrieved(
    orthanc: Orthanc, service: Service, tmp_path: Path
) -> None:
    """Orthanc stores (and its QIDO answers with) a SOP Instance UID with a leading-zero component; the pass
    refuses that answer, says why in the report, keeps it out of the ledger, and does the others."""
    study = generate_uid()
    good, bad = chest_set(study, 2)
    dataset = load(bad)
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = "1.2.840.0123.4"
    buffer = DicomBytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    for data in (good, buffer.getvalue()):
        orthanc.upload(data)
    assert run(settings(tmp_path, service, dicomweb_url=orthanc.dicomweb)) == 1
    rows = report_rows(tmp_path / "report.jsonl")
    assert sorted((row["status"], row["error_kind"]) for row in rows) == [
        ("refused", "invalid-uid"),
        ("written", None),
    ]
    refused = next(row for row in rows if row["status"] == "refused")
    assert refused["sop_instance_uid"] is None and "leading zero" in refused["error"]
    assert "0123" not in refused["error"]  # the reason, not the peer's value
    exactly_one_sr_and_sc_each(orthanc, [str(load(good).SOPInstanceUID)])
    with sqlite3.connect(tmp_path / "state.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM instances").fetchone() == (1,)
