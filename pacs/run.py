"""One pass of `cxr pacs`: search the PACS, then classify and write back every image not yet done.

Exit status (for cron): 0 every image found was written, skipped by policy, or done before;
1 some image failed permanently (see the report and the ledger), or the PACS answered the search with a
non-conformant UID (refused, in the report: pacs.uids); 2 bad settings, including what only the
servers can tell (401/403: credentials or API key; an unknown model); 3 the pass is incomplete because the
PACS or the service stayed unavailable beyond the retry budget (run again later: nothing is lost).
After the first image whose retries run out on a transient error, or that meets a configuration error,
no new image is started: the outage or the misconfiguration concerns them all.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from pacs.client import ServiceClient
from pacs.dicomweb import DicomWebClient
from pacs.dimse import DimseClient
from pacs.pipeline import Outcome, Processor
from pacs.report import Report
from pacs.retry import Permanent, Transient
from pacs.settings import PacsSettings
from pacs.source import InstanceRef, Query, Rejected
from pacs.state import StateStore

logger = logging.getLogger(__name__)

LAST_RUN_KEY = "last_pass_date"

EXIT_OK, EXIT_FAILED, EXIT_SETTINGS, EXIT_INCOMPLETE = 0, 1, 2, 3


@dataclass
class Summary:
    """Counts of one pass (images), and whether it got through everything it found."""

    found: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    search_failed: str | None = None
    config_error: str | None = None
    stopped_early: bool = False

    def add(self, outcome: Outcome) -> None:
        key = outcome.status if outcome.status != "failed" else f"failed-{outcome.error_kind}"
        self.counts[key] = self.counts.get(key, 0) + 1

    @property
    def exit_code(self) -> int:
        if self.config_error or self.counts.get("failed-config", 0):
            return EXIT_SETTINGS
        if self.counts.get("failed-permanent", 0) or self.counts.get("refused", 0):
            return EXIT_FAILED
        if self.search_failed or self.stopped_early or self.counts.get("failed-transient", 0):
            return EXIT_INCOMPLETE
        return EXIT_OK

    def describe(self) -> str:
        parts = [f"{self.found} found"] + [f"{count} {name}" for name, count in sorted(self.counts.items())]
        if self.search_failed:
            parts.append(f"search failed: {self.search_failed}")
        if self.stopped_early:
            parts.append("stopped early (outage or signal): the rest waits for the next pass")
        return ", ".join(parts)


def connect(settings: PacsSettings, stop: threading.Event | None = None) -> DicomWebClient | DimseClient:
    """The PACS connection the settings name: DICOMweb when a URL is given, else DIMSE."""
    if settings.dicomweb_url:
        return DicomWebClient(
            settings.dicomweb_url,
            username=settings.username,
            password=settings.password.get_secret_value() if settings.password else None,
            token=settings.token.get_secret_value() if settings.token else None,
            verify=settings.verify,
            timeout_s=settings.timeout_s,
            backoff=settings.backoff,
            stop=stop,
        )
    if not settings.dimse_host:
        raise ValueError("no PACS configured (dicomweb_url or dimse_host)")
    return DimseClient(
        settings.dimse_host,
        settings.dimse_port,
        pacs_ae=settings.pacs_ae,
        ae_title=settings.ae_title,
        retrieve_with=settings.retrieve,
        move_port=settings.move_port,
        move_host=settings.listen_host,
        move_admission=settings.admission() if settings.retrieve == "move" else None,
        tls=settings.client_tls(),
        max_dataset_bytes=settings.max_dataset_bytes,
        timeout_s=settings.timeout_s,
        backoff=settings.backoff,
        stop=stop,
    )


def service_client(settings: PacsSettings, stop: threading.Event | None = None) -> ServiceClient:
    return ServiceClient(
        settings.service_url,
        api_key=settings.service_api_key.get_secret_value() if settings.service_api_key else None,
        model=settings.model,
        verify=settings.verify,
        timeout_s=settings.timeout_s,
        backoff=settings.backoff,
        stop=stop,
    )


def _last_run_key(settings: PacsSettings) -> str:
    """The last pass's date is per destination, as the ledger is."""
    return f"{LAST_RUN_KEY}@{settings.destination}"


def _query(settings: PacsSettings, state: StateStore) -> Query:
    study_date = settings.study_date
    if settings.since_last_run and not settings.study_uids:
        last = state.get_meta(_last_run_key(settings))
        if last:
            study_date = f"{last}-"  # studies dated on or after the last pass's day (PS3.4 C.2.2.2.5)
    return Query(tuple(settings.modalities), study_date, tuple(settings.study_uids))


class _Progress:
    """A rich bar on a terminal, else a log line every 10 s; `off` says nothing."""

    def __init__(self, mode: str, total: int) -> None:
        self._bar: Any = None
        self._task: Any = None
        self._total = total
        self._done = 0
        self._last_log = time.monotonic()
        self._mode = "bar" if mode == "auto" and sys.stderr.isatty() else ("log" if mode == "auto" else mode)
        if self._mode == "bar":
            from rich.progress import Progress

            self._bar = Progress(transient=False)
            self._bar.start()
            self._task = self._bar.add_task("classifying", total=total)

    def advance(self, outcome: Outcome) -> None:
        self._done += 1
        if self._bar is not None:
            self._bar.update(self._task, advance=1, description=f"classifying ({outcome.status})")
        elif self._mode == "log" and (time.monotonic() - self._last_log > 10 or self._done == self._total):
            self._last_log = time.monotonic()
            logger.info("progress: %d/%d images", self._done, self._total)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def run_pass(settings: PacsSettings, *, stop: threading.Event | None = None) -> Summary:
    """Search, then process each new image once (see pacs.pipeline); never raises for network trouble."""
    stop = stop or threading.Event()
    summary = Summary()
    pass_date = date.today().strftime("%Y%m%d")
    with ExitStack() as stack:
        state = stack.enter_context(StateStore(settings.state, destination=settings.destination))
        report = Report(settings.report)
        stack.callback(report.close)
        connection = connect(settings, stop)
        stack.callback(connection.close)
        service = service_client(settings, stop)
        stack.callback(service.close)
        processor = Processor(
            state=state,
            service=service,
            sink=connection,
            report=report,
            dry_run=settings.dry_run,
            retry_failed=settings.retry_failed,
            outputs=settings.outputs,
        )
        query = _query(settings, state)
        logger.info(
            "searching %s for %s studies%s",
            settings.mode,
            "/".join(query.modalities),
            f" dated {query.study_date}" if query.study_date else "",
        )
        todo: list[InstanceRef] = []
        try:
            for found in connection.find(query, check_body_part=settings.check_body_part):
                summary.found += 1
                if isinstance(found, Rejected):
                    summary.add(processor.refuse(found))
                elif isinstance(found, tuple):
                    summary.add(processor.skip(*found))
                elif processor.needs_work(found):
                    todo.append(found)
                else:
                    summary.add(Outcome("already-done"))
        except Permanent as error:
            summary.config_error = str(error) if error.kind == "config" else None
            summary.search_failed = str(error)
            logger.error("search failed: %s", error)
        except Transient as error:
            summary.search_failed = str(error)
            logger.error("search failed: %s", error)
        if settings.limit is not None:
            todo = todo[: settings.limit]
        logger.info("%d images to process (%d found)", len(todo), summary.found)
        _process_all(settings, processor, connection, todo, summary, stop)
        if not settings.dry_run and summary.exit_code == EXIT_OK:
            state.set_meta(_last_run_key(settings), pass_date)
    logger.info("pass done: %s", summary.describe())
    return summary


def _process_all(
    settings: PacsSettings,
    processor: Processor,
    connection: DicomWebClient | DimseClient,
    todo: list[InstanceRef],
    summary: Summary,
    stop: threading.Event,
) -> None:
    halt = threading.Event()  # set after a transient failure outlived its retries
    progress = _Progress(settings.progress, len(todo))
    lock = threading.Lock()

    def one(ref: InstanceRef) -> None:
        if stop.is_set() or halt.is_set():
            return
        outcome = processor.process(ref, lambda: connection.retrieve(ref))
        if outcome.error_kind in ("transient", "config"):
            halt.set()
        with lock:
            summary.add(outcome)
            progress.advance(outcome)

    try:
        with ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="cxr-pacs") as pool:
            for future in [pool.submit(one, ref) for ref in todo]:
                future.result()
    finally:
        progress.close()
    if halt.is_set() or stop.is_set():
        summary.stopped_early = sum(summary.counts.values()) < summary.found
