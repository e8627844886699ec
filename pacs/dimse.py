"""DIMSE client with pynetdicom: C-FIND (Study Root), C-GET or C-MOVE to retrieve, C-STORE to write back.

Every operation opens its own association, so an outage costs one failed operation, not a stale
connection. Association rejects/aborts, timeouts and "out of resources" statuses are `Transient`; other
failure statuses are `Permanent`. Statuses are those of PS3.4 Annex C.4 (Q/R) and B.2.3 (Storage).

C-GET (PS3.4 C.4.3) needs no extra network setup: the images come back on the same association, for
which this client proposes one presentation context per (storage class, transfer syntax) with the SCP
role (PS3.7 D.3.3.4), so the PACS can send each image as stored, without transcoding.
C-MOVE (PS3.4 C.4.2) is what older PACSs offer: the PACS opens a second association to `ae_title` at the
host and port it has configured for it, so this client runs a C-STORE SCP on `move_port` meanwhile, on the
admission terms of pacs.acceptor (by default: called as `ae_title`, calling as `pacs_ae`, nobody else), and
keeps only the images it is waiting for.

Every UID a C-FIND answer or a C-GET/C-MOVE sub-operation carries is checked (pacs.uids) before it is used:
a search answer with a non-conformant one is yielded as `Rejected`; a sub-operation with one, or with an
image not asked for, or larger than `max_dataset_bytes`, is refused and nothing of it is kept.
With `tls` every association is DICOM TLS (PS3.15 B.1), the PACS's certificate checked against `host`.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Callable, Iterator
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, build_role, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    SecondaryCaptureImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from pacs.acceptor import Admission, serve
from pacs.retry import Backoff, Permanent, Transient, retry
from pacs.source import Found, InstanceRef, Query, Rejected
from pacs.uids import InvalidUid, check_uid, shown, uid_problem
from service.imaging.dicom import CHEST_BODY_PARTS

logger = logging.getLogger(__name__)

IMAGE_CLASSES = (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    SecondaryCaptureImageStorage,
)
"""Storage classes a chest radiograph may arrive in (Secondary Capture: exported or digitised films)."""

TRANSFER_SYNTAXES = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
)
"""What service.imaging.dicom decodes; proposed one per context so nothing needs transcoding."""

_PENDING = (0xFF00, 0xFF01)
_STORED, _OUT_OF_RESOURCES, _CANNOT_UNDERSTAND = 0x0000, 0xA700, 0xC000  # PS3.4 B.2.3


def dataset_size(event: Any) -> int:
    """Bytes of the dataset a C-STORE request carries, before anything decodes it."""
    with event.request.DataSet.getbuffer() as view:
        return int(view.nbytes)


def _rejected(what: str, value: object) -> Rejected | None:
    problem = uid_problem(value)
    return None if problem is None else Rejected(f"{what} in a C-FIND answer is not a UID: {problem}")


def _status(status: Dataset | None, what: str) -> int:
    """The Status value; no status at all means the association failed (timeout, abort): Transient."""
    if status is None or "Status" not in status:
        raise Transient(f"{what}: no response (association aborted or timed out)")
    return int(status.Status)


def _raise_for(code: int, what: str) -> None:
    """PS3.4 C.4.1.1.4 / B.2.3: 0xA7xx, 0xA701, 0xA702 out of resources (retry); others are final."""
    if code == 0x0000 or code in _PENDING or code & 0xF000 == 0xB000:
        return
    if code & 0xFF00 == 0xA700 or code == 0xFE00:  # out of resources; cancelled (e.g. shutdown)
        raise Transient(f"{what}: status 0x{code:04X}")
    raise Permanent(f"{what}: status 0x{code:04X}")


class DimseClient:
    """One PACS reached over DIMSE; every public method retries transient failures within `backoff`."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        pacs_ae: str = "ANY-SCP",
        ae_title: str = "CXR",
        retrieve_with: str = "get",
        move_port: int = 11113,
        move_host: str = "127.0.0.1",
        move_admission: Admission | None = None,
        tls: ssl.SSLContext | None = None,
        max_dataset_bytes: int = 256 * 1024**2,
        timeout_s: float = 30.0,
        backoff: Backoff | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        if retrieve_with not in ("get", "move"):
            raise ValueError("retrieve_with must be 'get' or 'move'")
        self.host, self.port, self.pacs_ae, self.ae_title = host, port, pacs_ae, ae_title
        self._retrieve_with = retrieve_with
        self._move_address = (move_host, move_port)
        self._move_admission = move_admission or Admission(
            ae_title=ae_title, calling_aes=(pacs_ae,), dimse_timeout_s=timeout_s
        )
        self._tls = tls
        self._max_dataset_bytes = max_dataset_bytes
        self._awaited: set[str] = set()
        self._timeout_s = timeout_s
        self._backoff = backoff or Backoff()
        self._stop = stop
        self._move_server: Any = None
        self._moved: dict[str, bytes] = {}
        self._moved_lock = threading.Lock()
        self._server_lock = threading.Lock()

    def close(self) -> None:
        if self._move_server is not None:
            self._move_server.shutdown()
            self._move_server = None

    def _ae(self) -> AE:
        ae = AE(ae_title=self.ae_title)
        for attribute in ("acse_timeout", "dimse_timeout", "network_timeout", "connection_timeout"):
            setattr(ae, attribute, self._timeout_s)
        return ae

    def _associate(self, ae: AE, what: str, **kwargs: Any) -> Association:
        if self._tls is not None:
            kwargs["tls_args"] = (self._tls, self.host)
        assoc = ae.associate(self.host, self.port, ae_title=self.pacs_ae, **kwargs)
        if not assoc.is_established:
            detail = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "failed"
            raise Transient(f"{what}: association with {self.pacs_ae}@{self.host}:{self.port} {detail}")
        return assoc

    def _with_retry(self, what: str, call: Callable[[], Any]) -> Any:
        return retry(call, self._backoff, what=what, stop=self._stop)

    # --- C-FIND
    def _find(self, identifier: Dataset) -> list[Dataset]:
        what = f"C-FIND {identifier.QueryRetrieveLevel}"

        def once() -> list[Dataset]:
            ae = self._ae()
            ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
            assoc = self._associate(ae, what)
            try:
                answers: list[Dataset] = []
                for status, found in assoc.send_c_find(
                    identifier, StudyRootQueryRetrieveInformationModelFind
                ):
                    code = _status(status, what)
                    _raise_for(code, what)
                    if code in _PENDING and found is not None:
                        answers.append(found)
                return answers
            finally:
                assoc.release()

        result: list[Dataset] = self._with_retry(what, once)
        return result

    def find(self, query: Query, *, check_body_part: bool) -> Iterator[Found]:
        """STUDY (ModalitiesInStudy, StudyDate) -> SERIES (Modality, BodyPartExamined) -> IMAGE levels."""
        studies = list(query.study_uids)
        if not studies:
            for modality in query.modalities:
                identifier = Dataset()
                identifier.QueryRetrieveLevel = "STUDY"
                identifier.StudyInstanceUID = ""
                identifier.ModalitiesInStudy = modality
                identifier.StudyDate = query.study_date or ""
                for found in self._find(identifier):
                    uid = found.get("StudyInstanceUID")
                    rejected = _rejected("Study Instance UID", uid)
                    if rejected is not None:
                        yield rejected
                    else:
                        studies.append(str(uid))
        for study_uid in dict.fromkeys(studies):
            identifier = Dataset()
            identifier.QueryRetrieveLevel = "SERIES"
            identifier.StudyInstanceUID = study_uid
            identifier.SeriesInstanceUID = ""
            identifier.Modality = ""
            identifier.BodyPartExamined = ""
            for series in self._find(identifier):
                modality = str(series.get("Modality", "")).upper()
                if modality not in query.modalities:
                    continue
                body_part = str(series.get("BodyPartExamined", "") or "").strip().upper()
                series_uid = series.get("SeriesInstanceUID")
                rejected = _rejected("Series Instance UID", series_uid)
                if rejected is not None:
                    yield rejected
                    continue
                yield from self._instances(study_uid, str(series_uid), modality, body_part, check_body_part)

    def _instances(
        self, study_uid: str, series_uid: str, modality: str, body_part: str, check_body_part: bool
    ) -> Iterator[Found]:
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "IMAGE"
        identifier.StudyInstanceUID = study_uid
        identifier.SeriesInstanceUID = series_uid
        identifier.SOPInstanceUID = ""
        identifier.SOPClassUID = ""
        for found in self._find(identifier):
            sop_uid, sop_class = found.get("SOPInstanceUID"), found.get("SOPClassUID", "")
            rejected = _rejected("SOP Instance UID", sop_uid) or (
                _rejected("SOP Class UID", sop_class) if sop_class else None
            )
            if rejected is not None:
                yield rejected
                continue
            ref = InstanceRef(study_uid, series_uid, str(sop_uid), modality, str(sop_class))
            if check_body_part and body_part and body_part not in CHEST_BODY_PARTS:
                yield ref, f"BodyPartExamined is {shown(body_part, 40)}, not a chest"
            else:
                yield ref

    # --- C-GET / C-MOVE
    @staticmethod
    def _image_identifier(ref: InstanceRef) -> Dataset:
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "IMAGE"
        identifier.StudyInstanceUID = ref.study_uid
        identifier.SeriesInstanceUID = ref.series_uid
        identifier.SOPInstanceUID = ref.sop_uid
        return identifier

    def retrieve(self, ref: InstanceRef) -> bytes:
        """The image's Part 10 bytes, by C-GET or C-MOVE."""
        what = f"C-{self._retrieve_with.upper()} IMAGE"
        once = self._get_once if self._retrieve_with == "get" else self._move_once
        data: bytes = self._with_retry(what, lambda: once(ref, what))
        return data

    def _get_once(self, ref: InstanceRef, what: str) -> bytes:
        received: list[bytes] = []

        def on_store(event: Any) -> int:
            status = self._check_sub_operation(event, {ref.sop_uid}, what)
            if status == _STORED:
                received.append(event.encoded_dataset(include_meta=True))
            return status

        ae = self._ae()
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
        for sop_class in IMAGE_CLASSES:
            for syntax in TRANSFER_SYNTAXES:
                ae.add_requested_context(sop_class, syntax)
        roles = [build_role(sop_class, scp_role=True) for sop_class in IMAGE_CLASSES]
        assoc = self._associate(ae, what, ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, on_store)])
        try:
            for status, _ in assoc.send_c_get(
                self._image_identifier(ref), StudyRootQueryRetrieveInformationModelGet
            ):
                _raise_for(_status(status, what), what)
        finally:
            assoc.release()
        if not received:
            raise Permanent(f"{what}: the PACS sent no image for this SOP Instance UID")
        return received[0]

    def _check_sub_operation(self, event: Any, awaited: set[str], what: str) -> int:
        """The C-STORE status for a sub-operation: stored only for an image asked for, of conformant UID,
        within the size limit (PS3.4 B.2.3 statuses)."""
        size = dataset_size(event)
        if size > self._max_dataset_bytes:
            logger.warning(
                "%s: a sub-operation of %d bytes refused (limit %d)", what, size, self._max_dataset_bytes
            )
            return _OUT_OF_RESOURCES
        try:
            uid = check_uid(event.dataset.get("SOPInstanceUID"), "SOP Instance UID")
        except InvalidUid as error:
            logger.warning("%s: a sub-operation refused: %s", what, error)
            return _CANNOT_UNDERSTAND
        except Exception as error:  # a hostile dataset may break the decoder in any way: refuse it
            logger.warning("%s: an undecodable sub-operation refused (%s)", what, type(error).__name__)
            return _CANNOT_UNDERSTAND
        if uid not in awaited:
            logger.warning("%s: a sub-operation for an image not asked for refused", what)
            return _CANNOT_UNDERSTAND
        return _STORED

    def _ensure_move_server(self) -> None:
        with self._server_lock:
            if self._move_server is None:
                self._move_server = self._start_move_server()

    def _start_move_server(self) -> Any:

        def on_store(event: Any) -> int:
            with self._moved_lock:
                awaited = set(self._awaited)
            status = self._check_sub_operation(event, awaited, "C-MOVE destination")
            if status == _STORED:
                data = event.encoded_dataset(include_meta=True)
                with self._moved_lock:
                    self._moved[str(event.dataset.SOPInstanceUID)] = data
            return status

        ae = self._move_admission.application_entity()
        for sop_class in IMAGE_CLASSES:
            ae.add_supported_context(sop_class, list(TRANSFER_SYNTAXES))
        return serve(
            ae,
            self._move_admission,
            self._move_address,
            [(evt.EVT_C_STORE, on_store)],
            name="cxr-move-destination",
        )

    def _move_once(self, ref: InstanceRef, what: str) -> bytes:
        self._ensure_move_server()
        ae = self._ae()
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        with self._moved_lock:
            self._awaited.add(ref.sop_uid)
        try:
            assoc = self._associate(ae, what)
            try:
                for status, _ in assoc.send_c_move(
                    self._image_identifier(ref), self.ae_title, StudyRootQueryRetrieveInformationModelMove
                ):
                    _raise_for(_status(status, what), what)
            finally:
                assoc.release()
        finally:
            with self._moved_lock:
                self._awaited.discard(ref.sop_uid)
                data = self._moved.pop(ref.sop_uid, None)
        if data is None:
            raise Permanent(f"{what}: the PACS moved no image for this SOP Instance UID")
        return data

    # --- C-STORE
    def store(self, dicom: bytes, study_uid: str | None = None) -> None:
        """C-STORE one object (a result SR); warnings (0xBxxx, e.g. coercion) count as success."""
        dataset = dcmread(DicomBytesIO(dicom))
        what = "C-STORE"

        def once() -> None:
            ae = self._ae()
            ae.add_requested_context(dataset.SOPClassUID, [dataset.file_meta.TransferSyntaxUID])
            assoc = self._associate(ae, what)
            try:
                _raise_for(_status(assoc.send_c_store(dataset), what), what)
            finally:
                assoc.release()

        self._with_retry(what, once)
