"""`cxr pacs` in DICOMweb mode against a real Orthanc and a real service: the SRs read back from Orthanc
carry the values `cxr predict` gives for the same files; a second pass does nothing; failures are
recorded, reported and reflected in the exit status."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.uid import JPEG2000Lossless, generate_uid

from tests.support.dicoms import make_dicom, phantom, quantise, variants
from tests.support.pacs import (
    Orthanc,
    Service,
    check_srs,
    cxr,
    load,
    predict,
    real_samples,
    report_rows,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def build_test_set() -> tuple[dict[str, bytes], dict[str, bytes]]:
    """(images to classify, images the pass must skip): synthetic formats, real samples, a lateral view,
    a dark image (classified negative by the tiny model); a hand radiograph in another study and a
    multi-frame image, both to be skipped."""
    study = generate_uid()
    images = variants(study)
    images["lateral"] = make_dicom(
        quantise(phantom(seed=4), 12), bits_stored=12, window=(2048, 4096), view="LL", study_uid=study
    )
    images["dark"] = make_dicom(
        quantise(phantom(seed=5, blob=False) * 0.4, 12), bits_stored=12, window=(2048, 4096), study_uid=study
    )
    images |= real_samples()
    skipped = {
        # refused at search time, from the series' BodyPartExamined: never retrieved
        "hand": make_dicom(
            quantise(phantom(seed=6), 12), bits_stored=12, window=(2048, 4096), body_part="HAND"
        ),
        # refused by the service (problem type unsupported-dicom): a policy skip, not a failure
        "multiframe": make_dicom(
            quantise(phantom(seed=8), 12), bits_stored=12, study_uid=study, extra={"NumberOfFrames": 2}
        ),
    }
    return images, skipped


def test_dicomweb_pass_writes_one_sr_per_image_matching_cxr_predict(
    orthanc: Orthanc, service: Service, model_dir: Path, tmp_path: Path
) -> None:
    images, skipped = build_test_set()
    for data in (images | skipped).values():
        orthanc.upload(data)
    report = tmp_path / "report.jsonl"
    flags = ("--service-url", service.url, "--state", str(tmp_path / "state.sqlite"), "--report", str(report))
    first = cxr("pacs", "--dicomweb-url", orthanc.dicomweb, *flags, "--progress", "log")
    assert first.returncode == 0, first.stderr[-3000:]

    expected = predict(model_dir, images, tmp_path / "files")
    sources = {uid: load(data) for data in images.values() for uid in [str(load(data).SOPInstanceUID)]}
    srs = check_srs(orthanc, expected, sources)
    labels = {record["label"] for record in expected.values()}
    assert labels == {"covid", "non-covid"}  # both findings were written

    rows = {row["sop_instance_uid"]: row for row in report_rows(report)}
    for name, data in skipped.items():
        row = rows.pop(str(load(data).SOPInstanceUID))
        assert (row["status"], row["error_kind"]) == ("skipped", "unsupported"), name
    assert set(rows) == set(expected) and {row["status"] for row in rows.values()} == {"written"}
    assert all(rows[uid]["sr_sop_instance_uid"] == srs[uid].SOPInstanceUID for uid in rows)
    lateral_uid = str(load(images["lateral"]).SOPInstanceUID)
    assert rows[lateral_uid]["flags"]["lateral"] == "true"
    assert "Test^Synthetic" not in report.read_text() and "TEST-0001" not in report.read_text()

    again = cxr("pacs", "--dicomweb-url", orthanc.dicomweb, *flags)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "0 images to process" in again.stderr
    assert len(orthanc.srs()) == len(expected)
    assert len(report_rows(report)) == len(expected) + len(skipped)  # the second pass had nothing to report


def test_dry_run_writes_nothing_and_records_nothing(
    orthanc: Orthanc, service: Service, tmp_path: Path
) -> None:
    from pacs.cli import run
    from tests.support.pacs import settings

    study = generate_uid()
    for data in list(variants(study).values())[:3]:
        orthanc.upload(data)
    config = settings(tmp_path, service, dicomweb_url=orthanc.dicomweb, dry_run=True)
    assert run(config) == 0
    assert orthanc.srs() == []
    rows = report_rows(tmp_path / "report.jsonl")
    assert [row["status"] for row in rows] == ["classified"] * 3 and all(row["probability"] for row in rows)
    # Nothing was recorded: a real pass afterwards does all three.
    assert run(settings(tmp_path, service, dicomweb_url=orthanc.dicomweb)) == 0
    assert len(orthanc.srs()) == 3


def test_permanent_failure_is_recorded_reported_and_exit_status_1(
    orthanc: Orthanc, service: Service, tmp_path: Path
) -> None:
    from pacs.cli import run
    from tests.support.pacs import settings

    study = generate_uid()
    good = make_dicom(quantise(phantom(), 12), bits_stored=12, window=(2048, 4096), study_uid=study)
    broken = make_dicom(
        quantise(phantom(seed=1), 12), bits_stored=12, transfer_syntax=JPEG2000Lossless, study_uid=study
    )
    start = broken.index(b"\xff\x4f\xff\x51")
    broken = broken[:start] + b"\xaa" * 64 + broken[start + 64 :]
    orthanc.upload(good)
    orthanc.upload(broken)
    config = settings(tmp_path, service, dicomweb_url=orthanc.dicomweb)
    assert run(config) == 1
    rows = {row["sop_instance_uid"]: row for row in report_rows(tmp_path / "report.jsonl")}
    failed = rows[str(load(broken).SOPInstanceUID)]
    assert failed["status"] == "failed" and failed["error_kind"] == "permanent"
    assert "HTTP 400" in failed["error"] and "could not be decoded" in failed["error"]
    assert rows[str(load(good).SOPInstanceUID)]["status"] == "written"
    assert run(config) == 0  # recorded: not retried, nothing new failed
    assert run(settings(tmp_path, service, dicomweb_url=orthanc.dicomweb, retry_failed=True)) == 1
    assert len(orthanc.srs()) == 1
