"""One image, exactly once: ledger check -> retrieve -> classify -> SC and SR -> ledger -> write back ->
ledger.

Shared by the pass (pacs.run) and the listener (pacs.listener). The ledger (pacs.state) is consulted
first and updated after each step that must not be repeated, so a process killed anywhere and started
again neither classifies a recorded image again nor writes a second SR or SC (see pacs.state for the
cases). `Outputs` says which of the two are written (`--write`).

An image the service refuses as out of its input domain (pacs.client.OutOfDomain) has no score and no
heatmap: with the SC on it gets a "not analysed" SC saying why (pacs.sc) and no SR (the SR is a COVID-19
result); with the SR alone nothing is written and it is recorded as skipped. Either way the report says
`out-of-domain` and the reason.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np

from pacs.client import Classification, OutOfDomain, ServiceClient
from pacs.report import Report
from pacs.retry import Permanent, Transient
from pacs.sc import Look, build_not_analysed_sc, build_sc, reference_header
from pacs.source import InstanceRef, Rejected, Sink
from pacs.sr import build_sr, encode, header
from pacs.state import Record, StateStore
from service.errors import CxrError
from service.imaging.decode import display_dicom

logger = logging.getLogger(__name__)

_SKIPPED_KINDS = frozenset({"unsupported", "out-of-domain"})
"""Refusals, not faults: a policy skip, or the service's input-domain check saying the image is not a
frontal chest radiograph (422 `.../not-a-chest-radiograph`). Recorded as skipped with the reason; no
classification and no SR is written for them."""


@dataclass(frozen=True)
class Outcome:
    """status: written | classified (dry run) | skipped | failed | already-done."""

    status: str
    error_kind: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class Outputs:
    """What is written back per image (`--write both|sr|sc`) and how the SC is drawn."""

    sr: bool = True
    sc: bool = True
    look: Look = field(default_factory=Look)

    def __post_init__(self) -> None:
        if not (self.sr or self.sc):
            raise ValueError("write at least one of the SR and the SC")


@dataclass(frozen=True)
class _Work:
    """One image's answer and the encoded objects to write: `result` None with `not_analysed` the reason
    for an out-of-domain image."""

    result: Classification | None
    not_analysed: str | None
    sr_uid: str | None = None
    sr: bytes | None = None
    sc_uid: str | None = None
    sc: bytes | None = None

    def ledger_result(self) -> dict[str, Any]:
        if self.result is None:
            return {"not_analysed": self.not_analysed}
        return self.result.to_dict()

    @classmethod
    def from_record(cls, record: Record) -> _Work:
        raw = record.result or {}
        result = None if "not_analysed" in raw else Classification.from_dict(raw)
        not_analysed = str(raw["not_analysed"]) if "not_analysed" in raw else None
        return cls(
            result, not_analysed, record.sr_sop_instance_uid, record.sr, record.sc_sop_instance_uid, record.sc
        )


class Processor:
    """Processes one image at a time per thread; the ledger and report serialise their own writes."""

    def __init__(
        self,
        *,
        state: StateStore,
        service: ServiceClient,
        sink: Sink | None,
        report: Report,
        dry_run: bool = False,
        retry_failed: bool = False,
        outputs: Outputs | None = None,
    ) -> None:
        if sink is None and not dry_run:
            raise ValueError("a sink is needed unless dry_run")
        self._state = state
        self._service = service
        self._sink = sink
        self._report = report
        self._dry_run = dry_run
        self._retry_failed = retry_failed
        self._outputs = outputs or Outputs()

    def needs_work(self, ref: InstanceRef) -> bool:
        return self._state.needs_work(ref.sop_uid, retry_failed=self._retry_failed)

    def refuse(self, rejected: Rejected) -> Outcome:
        """A search answer that cannot be used (a non-conformant UID): reported with the reason, not
        recorded in the ledger (it has no usable key) and never retrieved."""
        logger.warning("search answer refused: %s", rejected.reason)
        self._report.write(
            {
                "time": datetime.now(UTC).isoformat(timespec="seconds"),
                "status": "refused",
                "error_kind": "invalid-uid",
                "error": rejected.reason,
            }
        )
        return Outcome("refused", "invalid-uid", rejected.reason)

    def skip(self, ref: InstanceRef, reason: str) -> Outcome:
        """Record an image the policy refuses (found at search time, e.g. a hand radiograph)."""
        if not self.needs_work(ref):
            return Outcome("already-done")
        if not self._dry_run:
            self._state.mark_skipped(ref.sop_uid, ref.study_uid, ref.series_uid, reason=reason)
        self._row(ref, "skipped", time.monotonic(), None, error_kind="unsupported", error=reason)
        return Outcome("skipped", "unsupported", reason)

    def process(self, ref: InstanceRef, fetch: Callable[[], bytes]) -> Outcome:
        """Classify `ref` (bytes from `fetch`) and write its SC and SR, unless the ledger says it is done."""
        started = time.monotonic()
        record = self._state.get(ref.sop_uid)
        if record is not None and not self._state.needs_work(ref.sop_uid, retry_failed=self._retry_failed):
            return Outcome("already-done")
        work: _Work | None = None
        try:
            if (
                record is not None
                and record.status == "classified"
                and record.result
                and (record.sr or record.sc)
            ):
                # Classified by an earlier, interrupted pass: send the very same objects (same UIDs) again.
                work = _Work.from_record(record)
            else:
                work = self._classify(ref, fetch())
                if work.not_analysed is not None and not self._outputs.sc:
                    return self._not_analysed_skip(ref, started, work.not_analysed)
                if self._dry_run:
                    self._row(ref, "classified", started, work)
                    return Outcome("classified")
                self._state.mark_classified(
                    ref.sop_uid,
                    ref.study_uid,
                    ref.series_uid,
                    result=work.ledger_result(),
                    sr_uid=work.sr_uid,
                    sr=work.sr,
                    sc_uid=work.sc_uid,
                    sc=work.sc,
                )
            if self._dry_run or self._sink is None:
                self._row(ref, "classified", started, work)
                return Outcome("classified")
            # The SC first: the SR lists it as evidence, so it should exist when the SR arrives.
            for encoded in (work.sc, work.sr):
                if encoded is not None:
                    self._sink.store(encoded, ref.study_uid)
            self._state.mark_written(ref.sop_uid)
        except Permanent as error:
            return self._failed(
                ref,
                started,
                work,
                error.kind if error.kind in _SKIPPED_KINDS or error.kind == "config" else "permanent",
                error,
            )
        except Transient as error:
            return self._failed(ref, started, work, "transient", error)
        if work.not_analysed is not None:
            message = f"not analysed: {work.not_analysed}"
            self._row(ref, "written", started, work, error_kind="out-of-domain", error=message)
            return Outcome("written", "out-of-domain", message)
        self._row(ref, "written", started, work)
        return Outcome("written")

    def _classify(self, ref: InstanceRef, data: bytes) -> _Work:
        """The service's answer for `data` and the encoded objects this mode writes."""
        source = header(data)
        if str(source.get("SOPInstanceUID", "")) != ref.sop_uid:
            raise Permanent("the retrieved object's SOP Instance UID differs from the one asked for")
        outputs = self._outputs
        try:
            result = self._service.classify(data, heatmap=outputs.sc)
        except OutOfDomain as refusal:
            if not outputs.sc:
                return _Work(None, refusal.reason)
            sc, _ = build_not_analysed_sc(source, self._radiograph(data), refusal.reason, refusal.failed)
            return _Work(None, refusal.reason, sc_uid=str(sc.SOPInstanceUID), sc=encode(sc))
        sc_dataset = None
        if outputs.sc:
            sc_dataset, _ = build_sc(source, self._radiograph(data), result, outputs.look)
        work = _Work(result, None)
        if sc_dataset is not None:
            work = replace(work, sc_uid=str(sc_dataset.SOPInstanceUID), sc=encode(sc_dataset))
        if outputs.sr:
            sr = build_sr(source, result, reference_header(sc_dataset) if sc_dataset is not None else None)
            work = replace(work, sr_uid=str(sr.SOPInstanceUID), sr=encode(sr))
        return work

    def _radiograph(self, data: bytes) -> np.ndarray:
        """The radiograph's grey levels at the SC's size, decoded as the service decodes it."""
        try:
            return display_dicom(data, max_side=self._outputs.look.max_size)
        except CxrError as error:
            raise Permanent(f"the radiograph could not be drawn for the SC: {error.detail}") from None

    def _not_analysed_skip(self, ref: InstanceRef, started: float, reason: str) -> Outcome:
        """Out of domain with no SC to write: nothing goes to the PACS (the SR is a COVID-19 result)."""
        message = f"not analysed: {reason}"
        if not self._dry_run:
            self._state.mark_skipped(
                ref.sop_uid, ref.study_uid, ref.series_uid, reason=message, kind="out-of-domain"
            )
        logger.info("skipped %s: out of domain", ref.sop_uid)
        self._row(ref, "skipped", started, None, error_kind="out-of-domain", error=message)
        return Outcome("skipped", "out-of-domain", message)

    def _failed(
        self, ref: InstanceRef, started: float, work: _Work | None, kind: str, error: Exception
    ) -> Outcome:
        message = str(error)
        status = "skipped" if kind in _SKIPPED_KINDS else "failed"
        if not self._dry_run:
            if status == "skipped":
                self._state.mark_skipped(
                    ref.sop_uid, ref.study_uid, ref.series_uid, reason=message, kind=kind
                )
            else:
                self._state.mark_failed(ref.sop_uid, ref.study_uid, ref.series_uid, kind=kind, error=message)
        log = logger.info if status == "skipped" else logger.warning
        log("%s %s: %s", status, ref.sop_uid, message)
        self._row(ref, status, started, work, error_kind=kind, error=message)
        return Outcome(status, kind, message)

    def _row(
        self,
        ref: InstanceRef,
        status: str,
        started: float,
        work: _Work | None,
        *,
        error_kind: str | None = None,
        error: str | None = None,
    ) -> None:
        row: dict[str, Any] = {
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
            "study_instance_uid": ref.study_uid,
            "series_instance_uid": ref.series_uid,
            "sop_instance_uid": ref.sop_uid,
            "status": status,
            "sr_sop_instance_uid": work.sr_uid if work else None,
            "sc_sop_instance_uid": work.sc_uid if work else None,
            "error_kind": error_kind,
            "error": error,
            "duration_ms": round((time.monotonic() - started) * 1000.0, 1),
        }
        result = work.result if work else None
        if result is not None:
            row |= {
                "label": result.label,
                "probability": result.probability,
                "threshold": result.threshold,
                "model": f"{result.model_name}:{result.model_version}",
                "flags": result.flags or None,
            }
        self._report.write(row)
