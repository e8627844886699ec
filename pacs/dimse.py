"""DIMSE client with pynetdicom: C-FIND (Study Root), C-GET or C-MOVE to retrieve, C-STORE to write back.

Every operation opens its own association, so an outage costs one failed operation, not a stale
connection. Association rejects/aborts, timeouts and "out of resources" statuses are `Transient`; other
failure statuses are `Permanent`. Statuses are those of PS3.4 Annex C.4 (Q/R) and B.2.3 (Storage).

C-GET (PS3.4 C.4.3) needs no extra network setup: the images come back on the same association, for
which this client proposes one presentation context per (storage class, transfer syntax) with the SCP
role (PS3.7 D.3.3.4), so the PACS can send each image as stored, without transcoding.
C-MOVE (PS3.4 C.4.2) is what older PACSs offer: the PACS opens a second association to `ae_title` at the
host and port it has configured for it, so this client runs a C-STORE SCP on `move_port` meanwhile.
"""

from __future__ import annotations

import logging
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

from pacs.retry import Backoff, Permanent, Transient, retry
from pacs.source import InstanceRef, Query
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
        timeout_s: float = 30.0,
        backoff: Backoff | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        if retrieve_with not in ("get", "move"):
            raise ValueError("retrieve_with must be 'get' or 'move'")
        self.host, self.port, self.pacs_ae, self.ae_title = host, port, pacs_ae, ae_title
        self._retrieve_with = retrieve_with
        self._move_address = (move_host, move_port)
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

    def find(self, query: Query, *, check_body_part: bool) -> Iterator[InstanceRef | tuple[InstanceRef, str]]:
        """STUDY (ModalitiesInStudy, StudyDate) -> SERIES (Modality, BodyPartExamined) -> IMAGE levels."""
        studies = list(query.study_uids)
        if not studies:
            for modality in query.modalities:
                identifier = Dataset()
                identifier.QueryRetrieveLevel = "STUDY"
                identifier.StudyInstanceUID = ""
                identifier.ModalitiesInStudy = modality
                identifier.StudyDate = query.study_date or ""
                studies += [str(found.StudyInstanceUID) for found in self._find(identifier)]
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
                yield from self._instances(
                    study_uid, str(series.SeriesInstanceUID), modality, body_part, check_body_part
                )

    def _instances(
        self, study_uid: str, series_uid: str, modality: str, body_part: str, check_body_part: bool
    ) -> Iterator[InstanceRef | tuple[InstanceRef, str]]:
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "IMAGE"
        identifier.StudyInstanceUID = study_uid
        identifier.SeriesInstanceUID = series_uid
        identifier.SOPInstanceUID = ""
        identifier.SOPClassUID = ""
        for found in self._find(identifier):
            ref = InstanceRef(
                study_uid, series_uid, str(found.SOPInstanceUID), modality, str(found.get("SOPClassUID", ""))
            )
            if check_body_part and body_part and body_part not in CHEST_BODY_PARTS:
                yield ref, f"BodyPartExamined is {body_part}, not a chest"
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
            received.append(event.encoded_dataset(include_meta=True))
            return 0x0000

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

    def _ensure_move_server(self) -> None:
        with self._server_lock:
            if self._move_server is None:
                self._move_server = self._start_move_server()

    def _start_move_server(self) -> Any:

        def on_store(event: Any) -> int:
            data = event.encoded_dataset(include_meta=True)
            with self._moved_lock:
                self._moved[str(event.dataset.SOPInstanceUID)] = data
            return 0x0000

        ae = self._ae()
        for sop_class in IMAGE_CLASSES:
            ae.add_supported_context(sop_class, list(TRANSFER_SYNTAXES))
        return ae.start_server(self._move_address, block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])

    def _move_once(self, ref: InstanceRef, what: str) -> bytes:
        self._ensure_move_server()
        ae = self._ae()
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        assoc = self._associate(ae, what)
        try:
            for status, _ in assoc.send_c_move(
                self._image_identifier(ref), self.ae_title, StudyRootQueryRetrieveInformationModelMove
            ):
                _raise_for(_status(status, what), what)
        finally:
            assoc.release()
        with self._moved_lock:
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
