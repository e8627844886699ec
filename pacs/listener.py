"""Listener mode: a C-STORE SCP (PS3.4 Annex B) a PACS auto-routes new chest radiographs to.

Each received image is written to a spool directory (temporary name, fsync, rename) before the C-STORE
is acknowledged, so an acknowledged image is never lost: a listener killed with images in the spool
finds them there when it starts again. A worker thread classifies spooled images and writes their SRs
back through DICOMweb (STOW-RS) or DIMSE (C-STORE), with the same exactly-once ledger as a pass; the
spool file is removed once the ledger has a final answer for it. Images that fail transiently (service
or PACS down beyond the retry budget) stay spooled and are tried again later.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from pacs.dimse import IMAGE_CLASSES, TRANSFER_SYNTAXES
from pacs.pipeline import Processor
from pacs.source import InstanceRef

logger = logging.getLogger(__name__)

_SUCCESS = 0x0000
_OUT_OF_RESOURCES = 0xA700  # PS3.4 B.2.3


def _ref(dataset: Dataset) -> InstanceRef:
    return InstanceRef(
        str(dataset.StudyInstanceUID),
        str(dataset.SeriesInstanceUID),
        str(dataset.SOPInstanceUID),
        str(dataset.get("Modality", "")).upper(),
        str(dataset.SOPClassUID),
    )


class StorageListener:
    """Accepts C-STORE on `address` as `ae_title`; `run()` serves until `stop` is set."""

    def __init__(
        self,
        processor: Processor,
        *,
        address: tuple[str, int],
        ae_title: str,
        spool: Path,
        modalities: tuple[str, ...] = ("CR", "DX"),
        retry_delay_s: float = 30.0,
        stop: threading.Event | None = None,
    ) -> None:
        self._processor = processor
        self._address = address
        self._ae_title = ae_title
        self._spool = spool
        self._modalities = modalities
        self._retry_delay_s = retry_delay_s
        self._stop = stop or threading.Event()
        self._queue: queue.Queue[Path] = queue.Queue()
        self._server: Any = None
        self.port: int | None = None
        self.processed = 0

    def _on_store(self, event: Any) -> int:
        """Spool first, acknowledge after: the C-STORE response is our promise not to lose the image."""
        try:
            ref = _ref(event.dataset)
        except (AttributeError, KeyError):
            logger.warning("C-STORE without Study/Series/SOP Instance UIDs refused")
            return 0xC000
        if ref.modality and ref.modality not in self._modalities:
            self._processor.skip(ref, f"Modality {ref.modality} is not one of {', '.join(self._modalities)}")
            return _SUCCESS
        target = self._spool / f"{ref.sop_uid}.dcm"
        partial = self._spool / f".{ref.sop_uid}.{threading.get_ident()}.part"
        try:
            with partial.open("wb") as handle:
                handle.write(event.encoded_dataset(include_meta=True))
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(partial, target)
        except OSError as error:
            logger.error("cannot spool an image (%s); answering out of resources", error.strerror)
            partial.unlink(missing_ok=True)
            return _OUT_OF_RESOURCES
        self._queue.put(target)
        return _SUCCESS

    def start(self) -> None:
        """Bind and serve in the background; images left in the spool by an earlier run are queued."""
        self._spool.mkdir(parents=True, exist_ok=True)
        for leftover in sorted(self._spool.glob("*.dcm")):
            self._queue.put(leftover)
        for partial in self._spool.glob(".*.part"):
            partial.unlink(missing_ok=True)  # never acknowledged: the sender will send it again
        ae = AE(ae_title=self._ae_title)
        ae.add_supported_context(Verification)
        for sop_class in IMAGE_CLASSES:
            ae.add_supported_context(sop_class, list(TRANSFER_SYNTAXES))
        self._server = ae.start_server(
            self._address, block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)]
        )
        self.port = int(self._server.server_address[1])
        logger.info("listening as %s on %s:%d (C-STORE, C-ECHO)", self._ae_title, self._address[0], self.port)

    def _process(self, path: Path) -> None:
        from pydicom import dcmread

        try:
            data = path.read_bytes()
            ref = _ref(dcmread(path, stop_before_pixels=True))
        except (OSError, AttributeError) as error:
            logger.error("unreadable spool file %s (%s); left in place", path.name, type(error).__name__)
            return
        outcome = self._processor.process(ref, lambda: data)
        if outcome.error_kind == "transient":
            # Still down after the retry budget: keep the image and try again later.
            timer = threading.Timer(self._retry_delay_s, self._queue.put, args=(path,))
            timer.daemon = True
            timer.start()
            return
        path.unlink(missing_ok=True)
        self.processed += 1

    def run(self) -> None:
        """Start (if not yet), then process the spool until `stop` is set; then shut the server down."""
        if self._server is None:
            self.start()
        try:
            while not self._stop.is_set():
                try:
                    path = self._queue.get(timeout=0.2)
                except queue.Empty:
                    continue
                if path.exists():
                    self._process(path)
        finally:
            self._server.shutdown()
            logger.info("listener stopped")


def listen(settings: Any, *, stop: threading.Event, ready: threading.Event | None = None) -> int:
    """`cxr pacs --listen`: serve until `stop` (SIGTERM/SIGINT); results go to the configured PACS."""
    from pacs.report import Report
    from pacs.run import connect, service_client
    from pacs.state import StateStore

    with StateStore(settings.state) as state:
        report = Report(settings.report)
        sink = connect(settings, stop) if (settings.dicomweb_url or settings.dimse_host) else None
        service = service_client(settings, stop)
        processor = Processor(
            state=state,
            service=service,
            sink=sink,
            report=report,
            dry_run=settings.dry_run,
            retry_failed=settings.retry_failed,
            outputs=settings.outputs,
        )
        listener = StorageListener(
            processor,
            address=(settings.listen_host, settings.listen_port),
            ae_title=settings.ae_title,
            spool=settings.spool,
            modalities=tuple(settings.modalities),
            retry_delay_s=settings.backoff_max_s,
            stop=stop,
        )
        try:
            listener.start()
            if ready is not None:
                ready.set()
            listener.run()
        finally:
            service.close()
            if sink is not None:
                sink.close()
            report.close()
    return 0
