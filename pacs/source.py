"""Where images come from and where results go: the two interfaces a PACS connection implements.

`DicomWebClient` (pacs.dicomweb) and `DimseClient` (pacs.dimse) are both a `Source` and a `Sink`; a
listener (pacs.listener) receives instead of searching, and writes through either.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class InstanceRef:
    """One image in the PACS, by its UIDs (PS3.3 C.12.1, C.7.2.1, C.7.3.1)."""

    study_uid: str
    series_uid: str
    sop_uid: str
    modality: str = ""
    sop_class_uid: str = ""


@dataclass(frozen=True)
class Rejected:
    """An answer of the PACS's search that cannot be used (a non-conformant UID): never retrieved nor
    recorded in the ledger; `reason` says what was wrong without repeating the peer's value raw."""

    reason: str


Found = InstanceRef | tuple[InstanceRef, str] | Rejected
"""What a search yields: an image, an image to skip with the reason, or an unusable answer."""


@dataclass(frozen=True)
class Query:
    """What a pass searches for: studies holding any of `modalities`, optionally by date or by UID."""

    modalities: tuple[str, ...] = ("CR", "DX")
    study_date: str | None = None
    study_uids: tuple[str, ...] = ()


class Source(Protocol):
    def find(self, query: Query, *, check_body_part: bool) -> Iterator[Found]:
        """Images matching `query`; a `(ref, reason)` pair is an image to skip, with the reason; every UID
        of a ref is conformant (pacs.uids), an answer with one that is not is a `Rejected`."""
        ...

    def retrieve(self, ref: InstanceRef) -> bytes:
        """The image's DICOM Part 10 bytes."""
        ...


class Sink(Protocol):
    def store(self, dicom: bytes, study_uid: str | None = None) -> None:
        """Store one DICOM Part 10 object (a result) in the PACS."""
        ...
