"""Peers for the DICOM security tests: a pynetdicom SCU that can send what a hostile peer sends (a dataset
whose UIDs no conformant sender would write), throwaway certificates made with `openssl`, and the
`cxr pacs --listen` listener run in a thread on a free loopback port, waited for with C-ECHO."""

from __future__ import annotations

import os
import re
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.filebase import DicomBytesIO
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from pacs.cli import run
from pacs.settings import PacsSettings
from tests.support.pacs import free_port, settings, wait_for

PACS_AE = "TESTPACS"
OUR_AE = "CXRLISTEN"

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
needs_dcmtk = pytest.mark.skipif(
    shutil.which("storescu") is None, reason="DCMTK is not installed (apt-get install dcmtk; .ci/run does)"
)


@dataclass(frozen=True)
class Sent:
    """What a C-STORE attempt got: the association's fate and the C-STORE status (None: none came)."""

    established: bool
    rejected: bool
    status: int | None


def hostile_file(data: bytes, folder: Path, **uids: str) -> Path:
    """`data` rewritten as a Part 10 file with the UIDs given (e.g. `SOPInstanceUID="/../x"`), the file meta
    agreeing, as an attacker's SCU writes it."""
    dataset = dcmread(DicomBytesIO(data), force=True)
    for keyword, value in uids.items():
        setattr(dataset, keyword, value)
    if "SOPInstanceUID" in uids:
        dataset.file_meta.MediaStorageSOPInstanceUID = uids["SOPInstanceUID"]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{generate_uid()}.dcm"
    dataset.save_as(path, enforce_file_format=True)
    return path


def storescu(
    port: int, path: Path, *, calling: str, called: str = OUR_AE, tls: list[str] | None = None
) -> str:
    """DCMTK's storescu sends `path` (it sends what the file holds, checking nothing); returns what the
    peer answered, e.g. "Success", "Error: CannotUnderstand", or "rejected" / "failed" (its output)."""
    command = [
        "storescu",
        "-v",
        *(tls or []),
        "-aet",
        calling,
        "-aec",
        called,
        "127.0.0.1",
        str(port),
        str(path),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    output = done.stdout + done.stderr
    answer = re.search(r"Received Store Response \(([^)]*)\)", output)
    if answer:
        return answer.group(1)
    return "rejected" if "Association Rejected" in output else f"failed: {output[-500:]}"


def store(
    port: int,
    payload: bytes | Path,
    *,
    calling: str = PACS_AE,
    called: str = OUR_AE,
    tls: ssl.SSLContext | None = None,
) -> Sent:
    """One association, one C-STORE of `payload` (Part 10 bytes, or a file sent as it is)."""
    header = dcmread(
        DicomBytesIO(payload) if isinstance(payload, bytes) else payload, stop_before_pixels=True
    )
    dataset: Any = dcmread(DicomBytesIO(payload), force=True) if isinstance(payload, bytes) else payload
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    ae.add_requested_context(header.SOPClassUID, [header.file_meta.TransferSyntaxUID])
    tls_args = (tls, "127.0.0.1") if tls is not None else None
    assoc = ae.associate("127.0.0.1", port, ae_title=called, tls_args=tls_args)
    if not assoc.is_established:
        return Sent(False, bool(assoc.is_rejected), None)
    try:
        answer = assoc.send_c_store(dataset)
    finally:
        assoc.release()
    return Sent(True, False, int(answer.Status) if answer is not None and "Status" in answer else None)


def echo(
    port: int, *, calling: str = PACS_AE, called: str = OUR_AE, tls: ssl.SSLContext | None = None
) -> bool:
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 5
    ae.add_requested_context(Verification)
    tls_args = (tls, "127.0.0.1") if tls is not None else None
    assoc = ae.associate("127.0.0.1", port, ae_title=called, tls_args=tls_args)
    if not assoc.is_established:
        return False
    try:
        answer = assoc.send_c_echo()
        return answer is not None and int(answer.Status) == 0
    finally:
        assoc.release()


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def files_under(root: Path) -> set[Path]:
    return {path for path in root.rglob("*") if path.is_file()}


@dataclass
class Listener:
    port: int
    config: PacsSettings
    status: list[int] = field(default_factory=list)


@contextmanager
def listening(
    tmp_path: Path,
    service_url: str,
    *,
    echo_tls: ssl.SSLContext | None = None,
    echoes: bool = True,
    **values: Any,
) -> Iterator[Listener]:
    """`cxr pacs --listen --dry-run` (pacs.cli.run) on a free loopback port as OUR_AE, the PACS being
    PACS_AE, until the block ends; ready once a C-ECHO from the first allowed calling AE succeeds (once the port accepts TCP
    connections, for a listener that is not to answer: `echoes=False`)."""
    port = free_port()
    config = settings(
        tmp_path,
        service_url,
        **(
            {"listen": True, "dry_run": True, "listen_port": port, "ae_title": OUR_AE, "pacs_ae": PACS_AE}
            | values
        ),
    )
    listener = Listener(port, config)
    stop = threading.Event()
    thread = threading.Thread(target=lambda: listener.status.append(run(config, stop)), daemon=True)
    thread.start()
    try:
        if echoes:
            wait_for(
                lambda: echo(port, calling=config.calling_aes[0], tls=echo_tls),
                30,
                "listener C-ECHO",
                interval=0.1,
            )
        else:
            wait_for(lambda: _accepts(port), 30, "listener port open", interval=0.1)
        yield listener
    finally:
        stop.set()
        thread.join(timeout=30)


@dataclass(frozen=True)
class Certificates:
    """A test CA, a server and a client certificate it signed (CN and SAN 127.0.0.1), and a client
    certificate of another CA nobody trusts."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path
    stranger_key: Path

    def client(self, *, certificate: bool = True, stranger: bool = False) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.ca)
        if stranger:
            context.load_cert_chain(self.stranger_cert, self.stranger_key)
        elif certificate:
            context.load_cert_chain(self.client_cert, self.client_key)
        return context


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def make_certificates(folder: Path) -> Certificates:
    folder.mkdir(parents=True, exist_ok=True)
    extensions = folder / "leaf.ext"
    extensions.write_text(
        "basicConstraints=critical,CA:FALSE\nsubjectAltName=IP:127.0.0.1\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\n"
    )

    def ca(name: str) -> tuple[Path, Path]:
        cert, key = folder / f"{name}.pem", folder / f"{name}.key"
        _openssl(
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={name}",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout", str(key), "-out", str(cert),
        )  # fmt: skip
        return cert, key

    def leaf(name: str, authority: tuple[Path, Path]) -> tuple[Path, Path]:
        cert, key, request = folder / f"{name}.pem", folder / f"{name}.key", folder / f"{name}.csr"
        _openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(request),
        )
        _openssl(
            "x509", "-req", "-in", str(request), "-CA", str(authority[0]), "-CAkey", str(authority[1]),
            "-CAcreateserial", "-days", "1", "-extfile", str(extensions), "-out", str(cert),
        )  # fmt: skip
        os.chmod(key, 0o600)
        return cert, key

    trusted = ca("test-ca")
    other = ca("stranger-ca")
    server, client, stranger = leaf("server", trusted), leaf("client", trusted), leaf("stranger", other)
    return Certificates(trusted[0], *server, *client, *stranger)
