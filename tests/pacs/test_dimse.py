"""`cxr pacs` over DIMSE (C-FIND, then C-GET or C-MOVE, C-STORE of the SR) and as a C-STORE listener,
against a real Orthanc and a real service."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import pytest
from pydicom.uid import generate_uid

from pacs.cli import run
from tests.support.dicoms import variants
from tests.support.pacs import (
    GET_AE,
    LISTENER_AE,
    MOVE_AE,
    Orthanc,
    Service,
    check_srs,
    load,
    predict,
    real_samples,
    report_rows,
    settings,
    wait_for,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def _images() -> dict[str, bytes]:
    images = variants(generate_uid())
    samples = real_samples()
    for name in ("barre-CR-MONO1-10-chest", "clunie-RG1_JLSN"):
        if name in samples:
            images[name] = samples[name]
    return images


@pytest.mark.parametrize("retrieve", ["get", "move"])
def test_dimse_pass_writes_one_sr_per_image_matching_cxr_predict(
    orthanc: Orthanc, service: Service, model_dir: Path, tmp_path: Path, retrieve: str
) -> None:
    images = _images()
    for data in images.values():
        orthanc.upload(data)
    config = settings(
        tmp_path,
        service,
        dimse_host="127.0.0.1",
        dimse_port=orthanc.dicom_port,
        pacs_ae="TESTPACS",
        ae_title=MOVE_AE if retrieve == "move" else GET_AE,
        retrieve=retrieve,
        move_port=orthanc.modalities[MOVE_AE][1],
    )
    assert run(config) == 0
    expected = predict(model_dir, images, tmp_path / "files")
    sources = {str(load(data).SOPInstanceUID): load(data) for data in images.values()}
    check_srs(orthanc, expected, sources)
    assert {row["status"] for row in report_rows(tmp_path / "report.jsonl")} == {"written"}
    assert run(config) == 0 and len(orthanc.srs()) == len(images)  # nothing twice


def test_listener_classifies_what_the_pacs_sends_and_writes_srs_back(
    orthanc: Orthanc, service: Service, model_dir: Path, tmp_path: Path
) -> None:
    images = _images()
    orthanc_ids = [orthanc.upload(data) for data in images.values()]
    config = settings(
        tmp_path,
        service,
        listen=True,
        listen_port=orthanc.modalities[LISTENER_AE][1],
        ae_title=LISTENER_AE,
        dimse_host="127.0.0.1",
        dimse_port=orthanc.dicom_port,
        pacs_ae="TESTPACS",
    )
    stop = threading.Event()
    status: list[int] = []
    listener = threading.Thread(target=lambda: status.append(run(config, stop)), daemon=True)
    listener.start()
    try:
        # Orthanc routes the images to the listener as a PACS would (C-STORE from TESTPACS to CXRLISTEN).
        def echoed() -> bool:
            return (
                httpx.post(f"{orthanc.url}/modalities/{LISTENER_AE}/echo", json={}, timeout=5).status_code
                == 200
            )

        wait_for(echoed, 30, "listener C-ECHO")
        sent = httpx.post(f"{orthanc.url}/modalities/{LISTENER_AE}/store", json=orthanc_ids, timeout=60)
        assert sent.status_code == 200 and sent.json()["FailedInstancesCount"] == 0, sent.text
        wait_for(lambda: len(orthanc.srs()) >= len(images), 120, "an SR per routed image", interval=0.3)
    finally:
        stop.set()
        listener.join(timeout=30)
    assert status == [0]
    expected = predict(model_dir, images, tmp_path / "files")
    sources = {str(load(data).SOPInstanceUID): load(data) for data in images.values()}
    check_srs(orthanc, expected, sources)
    assert list((tmp_path / "spool").glob("*.dcm")) == []  # every spooled image reached a final state
