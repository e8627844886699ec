"""One image, exactly once: ledger check -> retrieve -> classify -> SR -> ledger -> write back -> ledger.

Shared by the pass (pacs.run) and the listener (pacs.listener). The ledger (pacs.state) is consulted
first and updated after each step that must not be repeated, so a process killed anywhere and started
again neither classifies a recorded image again nor writes a second SR (see pacs.state for the cases).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pacs.client import Classification, ServiceClient
from pacs.report import Report
from pacs.retry import Permanent, Transient
from pacs.source import InstanceRef, Sink
from pacs.sr import build_sr, encode, header
from pacs.state import StateStore

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
    ) -> None:
        if sink is None and not dry_run:
            raise ValueError("a sink is needed unless dry_run")
        self._state = state
        self._service = service
        self._sink = sink
        self._report = report
        self._dry_run = dry_run
        self._retry_failed = retry_failed

    def needs_work(self, ref: InstanceRef) -> bool:
        return self._state.needs_work(ref.sop_uid, retry_failed=self._retry_failed)

    def skip(self, ref: InstanceRef, reason: str) -> Outcome:
        """Record an image the policy refuses (found at search time, e.g. a hand radiograph)."""
        if not self.needs_work(ref):
            return Outcome("already-done")
        if not self._dry_run:
            self._state.mark_skipped(ref.sop_uid, ref.study_uid, ref.series_uid, reason=reason)
        self._row(ref, "skipped", time.monotonic(), error_kind="unsupported", error=reason)
        return Outcome("skipped", "unsupported", reason)

    def process(self, ref: InstanceRef, fetch: Callable[[], bytes]) -> Outcome:
        """Classify `ref` (bytes from `fetch`) and write its SR, unless the ledger says it is done."""
        started = time.monotonic()
        record = self._state.get(ref.sop_uid)
        if record is not None and not self._state.needs_work(ref.sop_uid, retry_failed=self._retry_failed):
            return Outcome("already-done")
        result: Classification | None = None
        try:
            if record is not None and record.status == "classified" and record.sr and record.result:
                # Classified by an earlier, interrupted pass: send the very same SR (same UID) again.
                result = Classification.from_dict(record.result)
                sr_uid, sr_bytes = str(record.sr_sop_instance_uid), record.sr
            else:
                data = fetch()
                source = header(data)
                if str(source.get("SOPInstanceUID", "")) != ref.sop_uid:
                    raise Permanent("the retrieved object's SOP Instance UID differs from the one asked for")
                result = self._service.classify(data)
                sr = build_sr(source, result)
                sr_uid, sr_bytes = str(sr.SOPInstanceUID), encode(sr)
                if self._dry_run:
                    self._row(ref, "classified", started, result=result, sr_uid=sr_uid)
                    return Outcome("classified")
                self._state.mark_classified(
                    ref.sop_uid,
                    ref.study_uid,
                    ref.series_uid,
                    result=result.to_dict(),
                    sr_uid=sr_uid,
                    sr=sr_bytes,
                )
            if self._dry_run or self._sink is None:
                self._row(ref, "classified", started, result=result, sr_uid=sr_uid)
                return Outcome("classified")
            self._sink.store(sr_bytes, ref.study_uid)
            self._state.mark_written(ref.sop_uid)
        except Permanent as error:
            return self._failed(
                ref,
                started,
                result,
                error.kind if error.kind in _SKIPPED_KINDS or error.kind == "config" else "permanent",
                error,
            )
        except Transient as error:
            return self._failed(ref, started, result, "transient", error)
        self._row(ref, "written", started, result=result, sr_uid=sr_uid)
        return Outcome("written")

    def _failed(
        self, ref: InstanceRef, started: float, result: Classification | None, kind: str, error: Exception
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
        self._row(ref, status, started, result=result, error_kind=kind, error=message)
        return Outcome(status, kind, message)

    def _row(
        self,
        ref: InstanceRef,
        status: str,
        started: float,
        *,
        result: Classification | None = None,
        sr_uid: str | None = None,
        error_kind: str | None = None,
        error: str | None = None,
    ) -> None:
        row: dict[str, Any] = {
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
            "study_instance_uid": ref.study_uid,
            "series_instance_uid": ref.series_uid,
            "sop_instance_uid": ref.sop_uid,
            "status": status,
            "sr_sop_instance_uid": sr_uid,
            "error_kind": error_kind,
            "error": error,
            "duration_ms": round((time.monotonic() - started) * 1000.0, 1),
        }
        if result is not None:
            row |= {
                "label": result.label,
                "probability": result.probability,
                "threshold": result.threshold,
                "model": f"{result.model_name}:{result.model_version}",
                "flags": result.flags or None,
            }
        self._report.write(row)
