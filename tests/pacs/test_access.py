"""Credentials and TLS, against a real Orthanc (basic auth, HTTPS with a self-signed certificate) and a real
service with API keys: the right settings work; wrong ones stop the pass with exit status 2 and leave no
image marked as failed, so the next pass with the right settings does everything."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from pydicom.uid import generate_uid

from pacs.cli import run
from tests.support.dicoms import chest_set
from tests.support.pacs import ROOT, Orthanc, Service, free_port, report_rows, settings, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def _upload(orthanc: Orthanc, count: int = 2) -> None:
    for data in chest_set(generate_uid(), count):
        orthanc.upload(data)


def _failures(state: Path) -> dict[str, int]:
    """Rows not written, over every destination of the ledger."""
    with sqlite3.connect(state) as db:
        rows = db.execute("SELECT status, COUNT(*) FROM instances WHERE status != 'written' GROUP BY status")
        return dict(rows.fetchall())


def _error_kinds(state: Path) -> set[str]:
    with sqlite3.connect(state) as db:
        return {row[0] for row in db.execute("SELECT error_kind FROM instances")}


def test_dicomweb_basic_auth(make_orthanc: Callable[..., Orthanc], service: Service, tmp_path: Path) -> None:
    users = {"AuthenticationEnabled": True, "RegisteredUsers": {"cxr": "s3cret"}}
    orthanc = make_orthanc(users, {"auth": ("cxr", "s3cret")})
    _upload(orthanc)
    wrong = settings(tmp_path, service, dicomweb_url=orthanc.dicomweb, username="cxr", password="nope")
    assert run(wrong) == 2
    assert report_rows(tmp_path / "report.jsonl") == []
    right = settings(tmp_path, service, dicomweb_url=orthanc.dicomweb, username="cxr", password="s3cret")
    assert run(right) == 0
    assert len(orthanc.srs()) == 2


def test_service_api_key_and_unknown_model_are_configuration_errors(
    orthanc: Orthanc, model_dir: Path, tmp_path: Path
) -> None:
    service = Service(model_dir, tmp_path / "service.log", flags=("--api-keys", "k-123"))
    service.start()
    try:
        _upload(orthanc)
        base = {"dicomweb_url": orthanc.dicomweb}
        assert run(settings(tmp_path, service, **base)) == 2  # no key: 401
        assert run(settings(tmp_path, service, service_api_key="wrong", **base)) == 2
        assert run(settings(tmp_path, service, service_api_key="k-123", model="nosuch", **base)) == 2  # 404
        # The images that met it are marked with kind "config", which the next pass retries.
        assert _error_kinds(tmp_path / "state.sqlite") == {"config"}
        assert run(settings(tmp_path, service, service_api_key="k-123", **base)) == 0
        assert _failures(tmp_path / "state.sqlite") == {} and len(orthanc.srs()) == 2
    finally:
        service.stop()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_tls_certificate_is_verified(orthanc: Orthanc, model_dir: Path, tmp_path: Path) -> None:
    """The service behind HTTPS (uvicorn's own TLS; Debian's Orthanc 1.10 TLS answers empty replies to
    OpenSSL 3 clients, so it cannot be the test server). Both clients share the verification code."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "CXR_MODEL_DIR": str(model_dir),
        "CXR_PROVIDERS": "CPUExecutionProvider",
    }
    command = [
        sys.executable, "-m", "uvicorn", "--factory", "service.api.app:create_app", "--host", "127.0.0.1",
        "--port", str(port), "--ssl-keyfile", str(key), "--ssl-certfile", str(cert),
    ]  # fmt: skip
    with (tmp_path / "tls-service.log").open("wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"https://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return httpx.get(f"{url}/readyz", verify=str(cert), timeout=1).status_code == 200
        except httpx.TransportError:
            if process.poll() is not None:
                raise RuntimeError((tmp_path / "tls-service.log").read_text()[-3000:]) from None
            return False

    try:
        wait_for(ready, 60, "HTTPS service ready", interval=0.1)
        _upload(orthanc)
        tls = Service(model_dir, tmp_path / "unused.log", port=port)
        base = {"dicomweb_url": orthanc.dicomweb, "service_url": url, "retry_budget_s": 30}
        started = time.monotonic()
        assert run(settings(tmp_path, tls, **base)) == 2
        assert time.monotonic() - started < 10  # not retried for the 30 s budget
        assert run(settings(tmp_path, tls, ca_bundle=cert, **base)) == 0
        assert len(orthanc.srs()) == 2
    finally:
        process.terminate()
        process.wait(timeout=20)
