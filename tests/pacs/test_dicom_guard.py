"""Issue #25 against a real `cxr pacs --listen` on loopback: hostile UIDs are refused and nothing is written
outside the spool; only the allowed calling AE, calling our AE title, gets an association; the spool's
limit answers Out of Resources and loses nothing acknowledged; a silent peer is dropped."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from pydantic import ValidationError
from pydicom.uid import generate_uid

from pacs.dimse import DimseClient
from pacs.retry import Backoff, Transient
from pacs.settings import PacsSettings
from pacs.source import InstanceRef
from pacs.spool import spool_name
from pacs.uids import MAX_LENGTH, uid_problem
from tests.support.dicompeers import (
    OUR_AE,
    PACS_AE,
    files_under,
    hostile_file,
    listening,
    needs_dcmtk,
    store,
    storescu,
)
from tests.support.dicoms import chest_set
from tests.support.pacs import Service, cxr, free_port, load, real_samples, report_rows, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

_OUT_OF_RESOURCES, _CANNOT_UNDERSTAND = 0xA700, 0xC000


@pytest.mark.parametrize(
    ("value", "conformant"),
    [
        ("1.2.840.10008.5.1.4.1.1.1", True),
        ("0", True),
        ("0.0.10", True),
        ("9" * MAX_LENGTH, True),
        ("1." + "2" * (MAX_LENGTH - 1), False),  # 65 characters
        ("", False),
        ("..", False),
        ("/", False),
        ("1.2.\x00", False),
        ("1.2\x00", False),
        ("1.02.3", False),
        ("01", False),
        ("1..2", False),
        ("1.2.", False),
        (".1.2", False),
        ("1.2.3 ", False),
        ("١.٢", False),  # digits, but not ASCII ones
        (None, False),
        (["1.2", "1.3"], False),  # a multi-valued element
    ],
)
def test_uid_validation_follows_ps3_5_section_9_1(value: object, conformant: bool) -> None:
    assert (uid_problem(value) is None) is conformant


def _hostile_sop_instance_uids(outside: Path) -> dict[str, str]:
    return {
        "traversal-to-an-absolute-directory": "/../../../../../../.." + str(outside) + "/evil",
        "dot-dot": "..",
        "slash": "/",
        "nul": "1.2.840\x00/../../evil",
        "65-characters": "1." + "2" * 63,
        "leading-zero-component": "1.2.840.010008",
    }


@needs_dcmtk
@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
@pytest.mark.filterwarnings("ignore:The value length .* exceeds the maximum length of 64")
def test_hostile_uids_are_refused_and_nothing_is_written_outside_the_spool(
    tmp_path: Path, service: Service
) -> None:
    """The attack of #25: a real chest radiograph, its SOP Instance UID replaced, sent by DCMTK's storescu
    (which sends what the file holds) from an allowed AE; and UIDs pynetdicom lets through (an empty
    Study Instance UID, a traversal as the Series Instance UID)."""
    samples = real_samples()
    if not samples:
        pytest.skip("real chest DICOMs not available in ../shared/data/dicom")
    radiograph = samples.get("barre-CR-MONO1-10-chest") or next(iter(samples.values()))
    outside = tmp_path / "outside"
    outside.mkdir()
    attack = tmp_path / "attack"
    by_storescu = {
        name: hostile_file(radiograph, attack, SOPInstanceUID=uid)
        for name, uid in _hostile_sop_instance_uids(outside).items()
    }
    by_pynetdicom = {
        "empty-study-uid": hostile_file(radiograph, attack, StudyInstanceUID=""),
        "series-uid-traversal": hostile_file(radiograph, attack, SeriesInstanceUID="../../../evil"),
    }
    with listening(tmp_path / "run", service.url, allowed_calling_aes=["ATTACKER"]) as listener:
        spool = listener.config.spool
        before = files_under(tmp_path)
        answers = {
            name: storescu(listener.port, path, calling="ATTACKER") for name, path in by_storescu.items()
        }
        statuses = {
            name: store(listener.port, path, calling="ATTACKER").status
            for name, path in by_pynetdicom.items()
        }
        after = files_under(tmp_path)
        # the same image with its own, conformant UIDs is stored (and classified, in dry run)
        accepted = store(
            listener.port, hostile_file(radiograph, tmp_path / "good"), calling="ATTACKER"
        ).status
        report = listener.config.report
        assert report is not None
        wait_for(lambda: bool(report_rows(report)), 60, "the good image classified")
    assert answers == dict.fromkeys(by_storescu, "Error: CannotUnderstand")
    assert statuses == dict.fromkeys(by_pynetdicom, _CANNOT_UNDERSTAND)
    assert after - before == set(), "files appeared while the hostile images were sent"
    assert list(outside.iterdir()) == []
    assert accepted == 0x0000
    assert [row["status"] for row in report_rows(report)] == ["classified"]
    assert all(path.parent == spool for path in files_under(spool))


def test_spool_names_do_not_depend_on_the_peers_text() -> None:
    name = spool_name("1.2.3")
    assert "1.2.3" not in name and len(name) == 64 + len(".dcm") and name == spool_name("1.2.3")


def test_unknown_calling_ae_and_wrong_called_ae_are_rejected_at_association(
    tmp_path: Path, service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    image = chest_set(generate_uid(), 1)[0]
    with listening(tmp_path, service.url) as listener:  # no allow-list: the PACS's AE title alone
        caplog.clear()
        unknown = store(listener.port, image, calling="ATTACKER", called=OUR_AE)
        calling_log = caplog.text
        caplog.clear()
        wrong_called = store(listener.port, image, calling=PACS_AE, called="ANYTHING")
        called_log = caplog.text
        allowed = store(listener.port, image, calling=PACS_AE, called=OUR_AE)
        wait_for(lambda: len(report_rows(listener.config.report)) == 1, 60, "the allowed image classified")  # type: ignore[arg-type]
    assert (unknown.established, unknown.rejected) == (False, True)
    assert "Calling AE title not recognised" in calling_log  # what the peer was told (pynetdicom's SCU log)
    assert "rejected: calling AE title not recognised" in calling_log  # our one line
    assert (wrong_called.established, wrong_called.rejected) == (False, True)
    assert "Called AE title not recognised" in called_log
    assert allowed.status == 0x0000


def test_a_hospital_allows_exactly_its_three_modalities(tmp_path: Path, service: Service) -> None:
    modalities = ["DX-ROOM1", "DX-ROOM2", "CR-WARD"]
    image = chest_set(generate_uid(), 1)[0]
    with listening(tmp_path, service.url, allowed_calling_aes=modalities) as listener:
        answers = {
            calling: store(listener.port, image, calling=calling)
            for calling in [*modalities, PACS_AE, "DX-ROOM4"]
        }
    assert {calling: sent.established for calling, sent in answers.items()} == {
        "DX-ROOM1": True, "DX-ROOM2": True, "CR-WARD": True, PACS_AE: False, "DX-ROOM4": False,
    }  # fmt: skip


def test_peer_address_outside_the_allowed_networks_is_disconnected(
    tmp_path: Path, service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    image = chest_set(generate_uid(), 1)[0]
    with listening(tmp_path / "open", service.url, allowed_peers=["127.0.0.0/8"]) as listener:
        assert store(listener.port, image).status == 0x0000
    with listening(tmp_path / "closed", service.url, allowed_peers=["10.0.0.0/8"], echoes=False) as listener:
        refused = store(listener.port, image)
    assert (refused.established, refused.status) == (False, None)
    assert "refused (address not allowed)" in caplog.text


def test_full_spool_answers_out_of_resources_and_every_acknowledged_image_is_processed(
    tmp_path: Path, model_dir: Path
) -> None:
    """The service is down while the images arrive, so they stay spooled; the spool (1 MiB) holds two of
    these ~0.46 MB images. When it comes back, both are processed and the spool takes images again."""
    images = chest_set(generate_uid(), 6, size=(480, 480))
    later = Service(model_dir, tmp_path / "service.log")
    try:
        with listening(tmp_path, later.url, spool_max_bytes=1024**2, retry_budget_s=600) as listener:
            statuses = [store(listener.port, image).status for image in images[:5]]
            assert statuses == [0x0000, 0x0000, _OUT_OF_RESOURCES, _OUT_OF_RESOURCES, _OUT_OF_RESOURCES]
            later.start()
            report = listener.config.report
            assert report is not None
            wait_for(
                lambda: len(report_rows(report)) == 2,
                120,
                "both acknowledged images classified",
                interval=0.2,
            )
            wait_for(lambda: not list(listener.config.spool.glob("*.dcm")), 30, "the spool emptied")
            assert store(listener.port, images[5]).status == 0x0000  # room again
            wait_for(lambda: len(report_rows(report)) == 3, 60, "the last image classified", interval=0.2)
    finally:
        later.stop()
    sent = {str(load(image).SOPInstanceUID) for image in (images[0], images[1], images[5])}
    assert {row["sop_instance_uid"] for row in report_rows(report)} == sent
    assert {row["status"] for row in report_rows(report)} == {"classified"}


def test_a_silent_connection_is_closed_within_the_artim_timeout(tmp_path: Path, service: Service) -> None:
    with (
        listening(tmp_path, service.url, artim_timeout_s=1.0, idle_timeout_s=2.0) as listener,
        socket.create_connection(("127.0.0.1", listener.port), timeout=10) as silent,
    ):
        started = time.monotonic()
        closed = silent.recv(1)  # b"" (or an A-ABORT) once the listener drops us
        elapsed = time.monotonic() - started
    assert elapsed < 5.0, elapsed
    assert closed in (b"", b"\x07")


def test_the_c_move_destination_admits_only_the_pacs_and_keeps_only_what_it_asked_for() -> None:
    move_port = free_port()
    client = DimseClient(
        "127.0.0.1",
        free_port(),  # no PACS there: the retrieval fails, the C-MOVE destination is up all the same
        pacs_ae=PACS_AE,
        ae_title="CXRMOVE",
        retrieve_with="move",
        move_port=move_port,
        timeout_s=5,
        backoff=Backoff(attempts=1),
    )
    image = chest_set(generate_uid(), 1)[0]
    try:
        with pytest.raises(Transient):
            client.retrieve(InstanceRef(generate_uid(), generate_uid(), generate_uid()))
        attacker = store(move_port, image, calling="ATTACKER", called="CXRMOVE")
        wrong_called = store(move_port, image, calling=PACS_AE, called="ANYTHING")
        not_asked_for = store(move_port, image, calling=PACS_AE, called="CXRMOVE")
    finally:
        client.close()
    assert (attacker.established, attacker.rejected) == (False, True)
    assert (wrong_called.established, wrong_called.rejected) == (False, True)
    assert not_asked_for.status == _CANNOT_UNDERSTAND


def test_help_states_the_default_allow_list() -> None:
    shown_help = " ".join(cxr("pacs", "--help").stdout.split())
    assert "from --pacs-ae alone" in shown_help and "--allow-calling-ae" in shown_help


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"study_uids": ["1.2.3", "/../x"]}, "--study-uid"),
        ({"allowed_calling_aes": ["A" * 17]}, "allowed calling AE title"),
        ({"allowed_peers": ["10.0.0.0/33"]}, "allowed_peers"),
        ({"dicom_tls_cert": Path(__file__)}, "together"),
        ({"listen": True, "dicom_tls": True}, "needs --dicom-tls-cert"),
        (
            {
                "listen": True,
                "dicom_tls": True,
                "dicom_tls_cert": Path(__file__),
                "dicom_tls_key": Path(__file__),
            },
            "needs --dicom-tls-ca",
        ),
    ],
)
def test_unsafe_or_inconsistent_dicom_settings_fail_before_any_connection(
    tmp_path: Path, values: dict[str, object], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        PacsSettings(state=tmp_path / "s.sqlite", dimse_host="127.0.0.1", **values)


def test_the_default_allow_list_is_the_pacs_alone_and_a_list_replaces_it(tmp_path: Path) -> None:
    base = {"state": tmp_path / "s.sqlite", "dimse_host": "127.0.0.1", "pacs_ae": "PACS"}
    assert PacsSettings(**base).calling_aes == ("PACS",)
    assert PacsSettings(**base, allowed_calling_aes="DX1, DX2,CR3").calling_aes == ("DX1", "DX2", "CR3")
