"""DICOMweb client (PS3.18): QIDO-RS search, WADO-RS retrieve, STOW-RS store, over httpx.

Works with any conformant origin server (Orthanc's DICOMweb plugin, dcm4chee-arc, Google Cloud Healthcare,
...): basic or bearer authentication, TLS verification on by default. Retrieval asks for the stored
transfer syntax (`transfer-syntax=*`, PS3.18 8.7.3.5.2) so the server does not transcode, and the
decoder in service.imaging.dicom handles the compressed ones.

Every UID a QIDO answer carries is checked (pacs.uids) before it is used; an answer with one that is not
conformant is yielded as `Rejected` and never retrieved. URL path segments are percent-quoted all the same.
"""

from __future__ import annotations

import logging
import re
import threading
import uuid
from collections.abc import Generator, Iterator
from typing import Any
from urllib.parse import quote

import httpx

from pacs.client import raise_for_status, transport_error
from pacs.retry import Backoff, Permanent, retry
from pacs.source import Found, InstanceRef, Query, Rejected
from pacs.uids import shown, uid_problem
from service.imaging.dicom import CHEST_BODY_PARTS

logger = logging.getLogger(__name__)

_PAGE = 100
_DICOM_PART = 'multipart/related; type="application/dicom"'


def _segment(uid: str) -> str:
    """A UID as one URL path segment: checked UIDs are digits and dots, quoted all the same."""
    return quote(uid, safe="")


def _rejected(what: str, value: object) -> Rejected | None:
    problem = uid_problem(value)
    return None if problem is None else Rejected(f"{what} in a QIDO answer is not a UID: {problem}")


class BearerAuth(httpx.Auth):
    def __init__(self, token: str) -> None:
        self._token = token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self._token}"
        yield request


def value(attributes: dict[str, Any], tag: str) -> str | None:
    """First value of a DICOM JSON attribute (PS3.18 F.2), as a string; None when absent or empty."""
    values = attributes.get(tag, {}).get("Value")
    if not values:
        return None
    first = values[0]
    if isinstance(first, dict):  # PN
        return str(first.get("Alphabetic", "")) or None
    return str(first)


def split_multipart(body: bytes, content_type: str) -> list[bytes]:
    """The parts' bodies of a multipart/related payload (RFC 2387), headers dropped."""
    found = re.search(r'boundary="?([^";,]+)"?', content_type, re.IGNORECASE)
    if not found:
        raise Permanent(f"multipart answer without a boundary ({content_type[:80]})")
    # RFC 2046 5.1.1: a delimiter is CRLF "--" boundary; the CRLF belongs to it, not to the part before.
    delimiter = b"\r\n--" + found.group(1).encode("ascii")
    parts = []
    for chunk in (b"\r\n" + body).split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break  # the close delimiter
        header_end = chunk.find(b"\r\n\r\n")
        if header_end < 0:
            continue
        parts.append(chunk[header_end + 4 :])
    return parts


class DicomWebClient:
    """One DICOMweb service root; methods retry transient failures and raise Transient/Permanent after."""

    def __init__(
        self,
        base_url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        token: str | None = None,
        verify: bool | str = True,
        timeout_s: float = 30.0,
        backoff: Backoff | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        auth: httpx.Auth | None = None
        if token:
            auth = BearerAuth(token)
        elif username is not None:
            auth = httpx.BasicAuth(username, password or "")
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"), auth=auth, verify=verify, timeout=timeout_s, trust_env=False
        )
        self._backoff = backoff or Backoff()
        self._stop = stop

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        def once() -> httpx.Response:
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError as error:
                raise transport_error(error, f"DICOMweb {method} {path}") from None
            raise_for_status(response, f"DICOMweb {method} {path}")
            return response

        return retry(once, self._backoff, what=f"DICOMweb {method} {path}", stop=self._stop)

    def _search(self, path: str, params: dict[str, str]) -> list[dict[str, Any]]:
        """QIDO-RS with paging (limit/offset, PS3.18 8.3.4.4); 204 is an empty result."""
        found: list[dict[str, Any]] = []
        while True:
            page = {**params, "limit": str(_PAGE), "offset": str(len(found))}
            response = self._call("GET", path, params=page, headers={"Accept": "application/dicom+json"})
            batch = response.json() if response.status_code != 204 and response.content else []
            found.extend(batch)
            if len(batch) < _PAGE:
                return found

    def search_studies(self, *, modality: str, study_date: str | None = None) -> Iterator[str | Rejected]:
        """Study Instance UIDs of studies holding `modality` (ModalitiesInStudy), optionally by StudyDate;
        an answer whose UID is not conformant is a `Rejected`."""
        params = {"ModalitiesInStudy": modality}
        if study_date:
            params["StudyDate"] = study_date
        for study in self._search("/studies", params):
            uid = value(study, "0020000D")
            yield _rejected("Study Instance UID", uid) or str(uid)

    def search_series(self, study_uid: str) -> list[dict[str, Any]]:
        """The series of a study (`study_uid` checked by the caller), as DICOM JSON."""
        return self._search(f"/studies/{_segment(study_uid)}/series", {"includefield": "00180015,0008103E"})

    def search_instances(self, study_uid: str, series: dict[str, Any]) -> Iterator[InstanceRef | Rejected]:
        """The instances of a series answer; `Rejected` for one (or a series) whose UIDs are not conformant."""
        series_uid = value(series, "0020000E")
        rejected = _rejected("Series Instance UID", series_uid)
        if rejected is not None:
            yield rejected
            return
        modality = value(series, "00080060") or ""
        path = f"/studies/{_segment(study_uid)}/series/{_segment(str(series_uid))}/instances"
        for item in self._search(path, {}):
            uid, sop_class = value(item, "00080018"), value(item, "00080016")
            rejected = _rejected("SOP Instance UID", uid) or (
                _rejected("SOP Class UID", sop_class) if sop_class else None
            )
            if rejected is not None:
                yield rejected
            else:
                yield InstanceRef(study_uid, str(series_uid), str(uid), modality, sop_class or "")

    def find(self, query: Query, *, check_body_part: bool) -> Iterator[Found]:
        """Studies (one QIDO per modality, or the given UIDs) -> series of a wanted modality -> instances."""
        studies: list[str] = list(query.study_uids)
        if not studies:
            for modality in query.modalities:
                for study in self.search_studies(modality=modality, study_date=query.study_date):
                    if isinstance(study, Rejected):
                        yield study
                    else:
                        studies.append(study)
        for study_uid in dict.fromkeys(studies):
            for series in self.search_series(study_uid):
                modality = (value(series, "00080060") or "").upper()
                if modality not in query.modalities:
                    continue  # other series of the study, our own SRs among them
                body_part = (value(series, "00180015") or "").strip().upper()
                for ref in self.search_instances(study_uid, series):
                    if (
                        isinstance(ref, InstanceRef)
                        and check_body_part
                        and body_part
                        and body_part not in CHEST_BODY_PARTS
                    ):
                        yield ref, f"BodyPartExamined is {shown(body_part, 40)}, not a chest"
                    else:
                        yield ref

    def retrieve(self, ref: InstanceRef) -> bytes:
        """WADO-RS one instance, in its stored transfer syntax (the ref's UIDs are checked ones)."""
        path = (
            f"/studies/{_segment(ref.study_uid)}/series/{_segment(ref.series_uid)}"
            f"/instances/{_segment(ref.sop_uid)}"
        )
        response = self._call("GET", path, headers={"Accept": f"{_DICOM_PART}; transfer-syntax=*"})
        content_type = response.headers.get("Content-Type", "")
        if content_type.lower().startswith("multipart/"):
            parts = split_multipart(response.content, content_type)
            if len(parts) != 1:
                raise Permanent(f"WADO-RS returned {len(parts)} parts for one instance")
            return parts[0]
        return response.content

    def store(self, dicom: bytes, study_uid: str | None = None) -> None:
        """STOW-RS one instance (PS3.18 10.5); an answer listing it under FailedSOPSequence is Permanent."""
        boundary = uuid.uuid4().hex
        body = (
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode("ascii")
            + dicom
            + f"\r\n--{boundary}--\r\n".encode("ascii")
        )
        path = f"/studies/{_segment(study_uid)}" if study_uid else "/studies"
        response = self._call(
            "POST",
            path,
            content=body,
            headers={
                "Content-Type": f'{_DICOM_PART}; boundary="{boundary}"',
                "Accept": "application/dicom+json",
            },
        )
        if response.content and "json" in response.headers.get("Content-Type", ""):
            answer = response.json()
            failed = answer.get("00081198", {}).get("Value") if isinstance(answer, dict) else None
            if failed:
                reason = value(failed[0], "00081197")
                raise Permanent(f"STOW-RS refused the instance (FailureReason {reason})")
