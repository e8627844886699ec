"""Real components for the PACS tests (and the DICOM pixel tests that compare with Orthanc): Orthanc with its
DICOMweb plugin and `cxr serve` with a tiny model, each a subprocess on free loopback ports, waited for by
polling (never a fixed sleep); the settings, readers and checks those tests share. Fixtures that start them
are in tests/pacs/conftest.py."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO

from pacs.settings import PacsSettings

ROOT = Path(__file__).resolve().parents[2]
DICOM_SAMPLES = ROOT.parent / "shared" / "data" / "dicom"
ORTHANC = shutil.which("Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
LISTENER_AE = "CXRLISTEN"
MOVE_AE = "CXRMOVE"
GET_AE = "CXRGET"

needs_orthanc = pytest.mark.skipif(
    ORTHANC is None or not DICOMWEB_PLUGIN.exists(),
    reason="Orthanc with the DICOMweb plugin is not installed (apt-get install orthanc orthanc-dicomweb; .ci/run does)",
)


OLD_LEDGER_TABLE = (
    "CREATE TABLE instances (sop_instance_uid TEXT PRIMARY KEY, study_instance_uid TEXT NOT NULL,"
    " series_instance_uid TEXT NOT NULL, status TEXT NOT NULL, result TEXT, sr_sop_instance_uid TEXT,"
    " sr BLOB, error_kind TEXT, error TEXT, attempts INTEGER NOT NULL DEFAULT 0, first_seen REAL NOT NULL,"
    " updated REAL NOT NULL);"
)
"""The ledger's table as the first versions wrote it (keyed by SOP Instance UID alone, no SC columns): the
tests that open an old ledger start from it."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout} s")
        time.sleep(interval)


def _stop(process: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


@dataclass
class Orthanc:
    """One Orthanc process; `stop()` and `start()` again keep its ports and its database."""

    folder: Path
    http_port: int = field(default_factory=free_port)
    dicom_port: int = field(default_factory=free_port)
    modalities: dict[str, tuple[str, int]] = field(default_factory=dict)
    extra_config: dict[str, Any] = field(default_factory=dict)
    """e.g. users (AuthenticationEnabled, RegisteredUsers) or TLS (SslEnabled, SslCertificate)."""
    process: subprocess.Popen[bytes] | None = None
    client_options: dict[str, Any] = field(default_factory=dict)
    """httpx options the fixture's own calls need (auth, verify)."""

    @property
    def url(self) -> str:
        scheme = "https" if self.extra_config.get("SslEnabled") else "http"
        return f"{scheme}://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    def start(self) -> None:
        config = {
            "Name": "TESTPACS",
            "StorageDirectory": str(self.folder / "db"),
            "IndexDirectory": str(self.folder / "db"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": "TESTPACS",
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False,
            "Plugins": [str(DICOMWEB_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "DicomModalities": {ae: [ae, host, port] for ae, (host, port) in self.modalities.items()},
            "StableAge": 1,
            **self.extra_config,
        }
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "config.json").write_text(json.dumps(config))
        log = (self.folder / "orthanc.log").open("ab")
        assert ORTHANC is not None
        self.process = subprocess.Popen([ORTHANC, str(self.folder / "config.json")], stdout=log, stderr=log)
        log.close()

        def up() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited:\n{(self.folder / 'orthanc.log').read_text()[-3000:]}")
            try:
                return httpx.get(f"{self.url}/system", timeout=1, **self.client_options).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(up, 30, "Orthanc GET /system")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        _stop(self.process, sig)

    def upload(self, data: bytes) -> str:
        response = httpx.post(f"{self.url}/instances", content=data, timeout=30, **self.client_options)
        response.raise_for_status()
        return str(response.json()["ID"])

    def find(self, level: str, query: dict[str, str]) -> list[str]:
        body = {"Level": level, "Query": query, "Expand": False}
        return list(httpx.post(f"{self.url}/tools/find", json=body, timeout=30, **self.client_options).json())

    def dataset(self, orthanc_id: str) -> Dataset:
        data = httpx.get(f"{self.url}/instances/{orthanc_id}/file", timeout=30, **self.client_options).content
        return dcmread(DicomBytesIO(data), force=True)

    def srs(self) -> list[Dataset]:
        """Every SR instance Orthanc holds, read back as DICOM."""
        return [self.dataset(i) for i in self.find("Instance", {"Modality": "SR"})]

    def scs(self) -> list[Dataset]:
        """Every Secondary Capture Orthanc holds (our SCs are Modality OT), read back as DICOM."""
        return [self.dataset(i) for i in self.find("Instance", {"Modality": "OT"})]


@contextmanager
def orthanc_factory(tmp_path: Path) -> Iterator[Callable[..., Orthanc]]:
    """Start Orthancs (extra config and client options as keywords); all are stopped after the test."""
    if ORTHANC is None or not DICOMWEB_PLUGIN.exists():
        pytest.skip(
            "Orthanc with the DICOMweb plugin is not installed (apt-get install orthanc orthanc-dicomweb)"
        )
    started: list[Orthanc] = []

    def make(
        extra_config: dict[str, Any] | None = None, client_options: dict[str, Any] | None = None
    ) -> Orthanc:
        server = Orthanc(tmp_path / f"orthanc{len(started)}")
        server.extra_config = extra_config or {}
        server.client_options = client_options or {}
        # Orthanc answers C-FIND/C-GET/C-MOVE only for AEs it knows (DicomAlwaysAllowFind and friends are off).
        server.modalities = {ae: ("127.0.0.1", free_port()) for ae in (LISTENER_AE, MOVE_AE, GET_AE)}
        started.append(server)
        server.start()
        return server

    yield make
    for server in started:
        server.stop()


@dataclass
class Service:
    """`cxr serve` on a fixed free port (so a restart keeps its URL)."""

    model_dir: Path
    log: Path
    port: int = field(default_factory=free_port)
    flags: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        env.pop("CXR_API_KEYS", None)
        command = [
            sys.executable, "-m", "cxr", "serve", "--host", "127.0.0.1", "--port", str(self.port),
            "--model-dir", str(self.model_dir), "--providers", "CPUExecutionProvider", "--decode-workers", "1",
            *self.flags,
        ]  # fmt: skip
        with self.log.open("ab") as sink:
            self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT)

        def ready() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"service exited:\n{self.log.read_text()[-3000:]}")
            try:
                return httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(ready, 60, "service /readyz", interval=0.1)

    def stop(self) -> None:
        _stop(self.process)

    def images_classified(self) -> float:
        """Total of the images counter in /metrics (every image the service answered for)."""
        text = httpx.get(f"{self.url}/metrics", timeout=5).text
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("cxr_images_classified_total{")
        )


def settings(tmp_path: Path, service: Service | str, **values: Any) -> PacsSettings:
    """PacsSettings for a test (the service, or its URL): state and report under tmp_path, quick retries,
    no progress bar."""
    defaults: dict[str, Any] = {
        "service_url": service if isinstance(service, str) else service.url,
        "state": tmp_path / "state.sqlite",
        "report": tmp_path / "report.jsonl",
        "progress": "off",
        "timeout_s": 10,
        "backoff_initial_s": 0.1,
        "backoff_max_s": 0.5,
        "retry_budget_s": 60,
        "attempts": 400,
    }
    return PacsSettings(**(defaults | values))


def report_rows(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def sr_by_source(srs: list[Dataset]) -> dict[str, list[Dataset]]:
    """SRs keyed by the SOP Instance UID of the image each references (evidence sequence; the heatmap SC
    listed there too is not a source)."""
    from pacs.sr import read_result

    found: dict[str, list[Dataset]] = {}
    for sr in srs:
        pictures = set(read_result(sr)["secondary_capture_uids"])
        for study in sr.CurrentRequestedProcedureEvidenceSequence:
            for series in study.ReferencedSeriesSequence:
                for item in series.ReferencedSOPSequence:
                    if str(item.ReferencedSOPInstanceUID) not in pictures:
                        found.setdefault(str(item.ReferencedSOPInstanceUID), []).append(sr)
    return found


def sc_by_source(scs: list[Dataset]) -> dict[str, list[Dataset]]:
    """SCs keyed by the SOP Instance UID of the image each derives from (Source Image Sequence)."""
    found: dict[str, list[Dataset]] = {}
    for sc in scs:
        for item in sc.SourceImageSequence:
            found.setdefault(str(item.ReferencedSOPInstanceUID), []).append(sc)
    return found


def exactly_one_sr_and_sc_each(orthanc: Orthanc, uids: list[str]) -> None:
    """Orthanc holds one SR and one SC for each image in `uids`, and none for any other."""
    for kind, by_source in (("SR", sr_by_source(orthanc.srs())), ("SC", sc_by_source(orthanc.scs()))):
        assert sorted(by_source) == sorted(uids), kind
        assert {uid: len(found) for uid, found in by_source.items() if len(found) != 1} == {}, kind


def load(data: bytes) -> Dataset:
    return dcmread(DicomBytesIO(data), force=True)


def cxr(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the `cxr` command (python -m cxr) and capture its output."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "cxr", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def predict(model_dir: Path, images: dict[str, bytes], folder: Path) -> dict[str, dict[str, Any]]:
    """`cxr predict --format jsonl` on the images written to files: records keyed by SOP Instance UID."""
    folder.mkdir(parents=True, exist_ok=True)
    by_path: dict[str, str] = {}
    for name, data in images.items():
        path = folder / f"{name}.dcm"
        path.write_bytes(data)
        by_path[str(path)] = str(load(data).SOPInstanceUID)
    done = cxr("predict", "--model", str(model_dir / "tiny" / "1"), "--format", "jsonl", *by_path)
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return {by_path[record["file"]]: record for record in records}


def real_samples() -> dict[str, bytes]:
    """The real chest DICOMs in ../shared/data/dicom, when present."""
    if not DICOM_SAMPLES.is_dir():
        return {}
    return {path.stem: path.read_bytes() for path in sorted(DICOM_SAMPLES.glob("*.dcm"))}


def check_srs(
    orthanc: Orthanc, expected: dict[str, dict[str, Any]], sources: dict[str, Dataset]
) -> dict[str, Dataset]:
    """Exactly one SR per expected image, whose references and values match `cxr predict`'s record."""
    from pacs.sc import SERIES_DESCRIPTION as SC_SERIES_DESCRIPTION
    from pacs.sr import SERIES_DESCRIPTION, read_result

    by_source = sr_by_source(orthanc.srs())
    scs = sc_by_source(orthanc.scs())
    assert set(by_source) == set(expected), (sorted(by_source), sorted(expected))
    assert set(scs) == set(expected), (sorted(scs), sorted(expected))
    for uid, record in expected.items():
        assert len(by_source[uid]) == 1, f"{len(by_source[uid])} SRs for {uid}"
        sr, source = by_source[uid][0], sources[uid]
        values = read_result(sr)
        assert values["referenced_sop_instance_uids"] == [uid]
        assert sr.StudyInstanceUID == source.StudyInstanceUID
        assert sr.get("PatientID", "") == source.get("PatientID", "")
        assert sr.VerificationFlag == "UNVERIFIED" and sr.CompletionFlag == "COMPLETE"
        assert sr.SeriesDescription == SERIES_DESCRIPTION
        assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
        assert values["algorithm_name"] == record["model"]["name"]
        assert values["algorithm_version"] == record["model"]["version"]
        assert values["probability"] == pytest.approx(record["probabilities"]["covid"], abs=1e-6)
        assert values["threshold"] == pytest.approx(record["threshold"])
        assert values["finding"] == ("Suspected" if record["label"] == "covid" else "Not detected")
        assert len(scs[uid]) == 1, f"{len(scs[uid])} SCs for {uid}"
        sc = scs[uid][0]
        assert values["secondary_capture_uids"] == [sc.SOPInstanceUID]  # the SR points at its picture
        assert (
            sc.StudyInstanceUID == source.StudyInstanceUID
            and sc.SeriesInstanceUID != source.SeriesInstanceUID
        )
        assert sc.get("PatientID", "") == source.get("PatientID", "")
        assert sc.SeriesDescription == SC_SERIES_DESCRIPTION and sc.BurnedInAnnotation == "YES"
        assert list(sc.ImageType)[:2] == ["DERIVED", "SECONDARY"]
        assert "RESEARCH USE ONLY - NOT FOR DIAGNOSIS" in sc.ImageComments
        assert f"{record['probabilities']['covid']:.3f}" in sc.ImageComments
        assert sc.pixel_array.shape[2] == 3 and sc.PhotometricInterpretation == "RGB"
    return {uid: srs[0] for uid, srs in by_source.items()}
