"""DICOM TLS (PS3.15 B.1), against TLS peers nobody here wrote: DCMTK's storescu (+tls) sending to the
listener, DCMTK's storescp (+tls) receiving from the DIMSE client, and pynetdicom clients. With client
certificates required, a peer without one the CA vouches for is refused in the handshake."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from pacs.dimse import DimseClient
from pacs.retry import Backoff
from pacs.tls import client_context
from tests.support.dicompeers import (
    PACS_AE,
    Certificates,
    hostile_file,
    listening,
    make_certificates,
    needs_dcmtk,
    needs_openssl,
    store,
    storescu,
)
from tests.support.dicoms import chest_set
from tests.support.pacs import Service, free_port, load, report_rows, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300), needs_openssl]


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certificates"))


def _tls_settings(certificates: Certificates, **values: object) -> dict[str, object]:
    return {
        "dicom_tls": True,
        "dicom_tls_cert": certificates.server_cert,
        "dicom_tls_key": certificates.server_key,
        "dicom_tls_ca": certificates.ca,
        **values,
    }


@needs_dcmtk
def test_storescu_over_tls_stores_and_is_refused_without_a_trusted_certificate(
    tmp_path: Path, service: Service, certificates: Certificates
) -> None:
    image = hostile_file(chest_set(generate_uid(), 1)[0], tmp_path / "images")  # a plain Part 10 file
    trust = ["+cf", str(certificates.ca)]
    with listening(
        tmp_path, service.url, echo_tls=certificates.client(), **_tls_settings(certificates)
    ) as listener:
        trusted = storescu(
            listener.port,
            image,
            calling=PACS_AE,
            tls=["+tls", str(certificates.client_key), str(certificates.client_cert), *trust],
        )
        anonymous = storescu(listener.port, image, calling=PACS_AE, tls=["+tla", *trust])
        stranger = storescu(
            listener.port,
            image,
            calling=PACS_AE,
            tls=["+tls", str(certificates.stranger_key), str(certificates.stranger_cert), *trust],
        )
        plain = storescu(listener.port, image, calling=PACS_AE)
        report = listener.config.report
        assert report is not None
        wait_for(lambda: len(report_rows(report)) == 1, 60, "the image classified")
    assert trusted == "Success"
    for refused in (anonymous, stranger, plain):
        assert refused.startswith("failed"), refused


def test_pynetdicom_over_tls_and_client_certificates(
    tmp_path: Path, service: Service, certificates: Certificates
) -> None:
    image = chest_set(generate_uid(), 1)[0]
    with listening(
        tmp_path, service.url, echo_tls=certificates.client(), **_tls_settings(certificates)
    ) as listener:
        trusted = store(listener.port, image, tls=certificates.client())
        without = store(listener.port, image, tls=certificates.client(certificate=False))
        stranger = store(listener.port, image, tls=certificates.client(stranger=True))
        plain = store(listener.port, image)
    assert trusted.status == 0x0000
    assert [sent.established for sent in (without, stranger, plain)] == [False, False, False]
    with listening(
        tmp_path / "optional",
        service.url,
        echo_tls=certificates.client(certificate=False),
        **_tls_settings(certificates, dicom_tls_require_client_cert=False),
    ) as listener:
        assert store(listener.port, image, tls=certificates.client(certificate=False)).status == 0x0000


def test_a_silent_peer_does_not_hold_up_the_tls_handshakes_of_others(
    tmp_path: Path, service: Service, certificates: Certificates
) -> None:
    """pynetdicom does the handshake on the accepting thread; one peer that connects and says nothing would
    keep everyone else waiting. Here it is done per connection, under the idle timeout."""
    image = chest_set(generate_uid(), 1)[0]
    with (
        listening(
            tmp_path,
            service.url,
            echo_tls=certificates.client(),
            **_tls_settings(certificates, idle_timeout_s=3.0, artim_timeout_s=3.0),
        ) as listener,
        socket.create_connection(("127.0.0.1", listener.port), timeout=20) as silent,
    ):
        started = time.monotonic()
        assert store(listener.port, image, tls=certificates.client()).status == 0x0000
        assert time.monotonic() - started < 3.0  # not after the silent peer's timeout
        assert silent.recv(1) == b""  # then the silent one is dropped
        assert time.monotonic() - started < 10.0


@needs_dcmtk
def test_the_dimse_client_writes_over_tls_to_dcmtk_storescp(
    tmp_path: Path, certificates: Certificates
) -> None:
    port = free_port()
    received = tmp_path / "received"
    received.mkdir()
    command = [
        "storescp", "-v", "+tls", str(certificates.server_key), str(certificates.server_cert),
        "+cf", str(certificates.ca), "-aet", "TLSPACS", "-od", str(received), str(port),
    ]  # fmt: skip
    with (tmp_path / "storescp.log").open("wb") as log:
        scp = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:

        def listening() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return True
            except OSError:
                return False

        wait_for(listening, 30, "storescp listening")
        data = chest_set(generate_uid(), 1)[0]
        context = client_context(certificates.ca, certificates.client_cert, certificates.client_key)
        client = DimseClient(
            "127.0.0.1", port, pacs_ae="TLSPACS", ae_title="CXR", tls=context, backoff=Backoff(attempts=1)
        )
        client.store(data)
        client.close()
        stored = list(received.iterdir())
        assert len(stored) == 1
        assert load(stored[0].read_bytes()).SOPInstanceUID == load(data).SOPInstanceUID
    finally:
        scp.terminate()
        scp.wait(timeout=20)
