"""Listener mode: a C-STORE SCP (PS3.4 Annex B) a PACS auto-routes new chest radiographs to.

Only peers the admission terms allow get an association (pacs.acceptor). Each received image has its
UIDs checked (pacs.uids: a non-conformant one is refused with 0xC000 and never stored) and its size bounded,
then is written to the spool (pacs.spool: a digest for a name, a size limit answered with Out of
Resources 0xA700) before the C-STORE is acknowledged, so an acknowledged image is never lost: a listener killed with images in the spool
finds them there when it starts again. A worker thread classifies spooled images and writes their SRs
back through DICOMweb (STOW-RS) or DIMSE (C-STORE), with the same exactly-once ledger as a pass; the
spool file is removed once the ledger has a final answer for it. Images that fail transiently (service
or PACS down beyond the retry budget) stay spooled and are tried again later.
"""

from __future__ import annotations

import logging
import queue
import threading
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from pacs.acceptor import Admission, serve
from pacs.dimse import IMAGE_CLASSES, TRANSFER_SYNTAXES, dataset_size
from pacs.pipeline import Processor
from pacs.source import InstanceRef
from pacs.spool import Spool, SpoolFull
from pacs.uids import InvalidUid, check_uid, shown

logger = logging.getLogger(__name__)

# PS3.4 B.2.3 C-STORE statuses
_SUCCESS = 0x0000
_OUT_OF_RESOURCES = 0xA700
_CANNOT_UNDERSTAND = 0xC000


def checked_ref(dataset: Dataset) -> InstanceRef:
    """The image's UIDs, each checked (pacs.uids); InvalidUid for the first that is not conformant, and
    AttributeError when one is missing."""
    return InstanceRef(
        check_uid(dataset.StudyInstanceUID, "Study Instance UID"),
        check_uid(dataset.SeriesInstanceUID, "Series Instance UID"),
        check_uid(dataset.SOPInstanceUID, "SOP Instance UID"),
        str(dataset.get("Modality", "")).strip().upper(),
        check_uid(dataset.SOPClassUID, "SOP Class UID"),
    )


class StorageListener:
    """Accepts C-STORE on `address` on the terms of `admission` (pacs.acceptor); `run()` serves until
    `stop` is set."""

    def __init__(
        self,
        processor: Processor,
        *,
        address: tuple[str, int],
        admission: Admission,
        spool: Path,
        spool_max_bytes: int = 2 * 1024**3,
        max_dataset_bytes: int = 256 * 1024**2,
        modalities: tuple[str, ...] = ("CR", "DX"),
        retry_delay_s: float = 30.0,
        stop: threading.Event | None = None,
    ) -> None:
        self._processor = processor
        self._address = address
        self._admission = admission
        self._spool = Spool(spool, max_bytes=spool_max_bytes)
        self._max_dataset_bytes = max_dataset_bytes
        self._modalities = modalities
        self._retry_delay_s = retry_delay_s
        self._stop = stop or threading.Event()
        self._queue: queue.Queue[Path] = queue.Queue()
        self._server: Any = None
        self.port: int | None = None
        self.processed = 0
        self.refused = 0

    def _refuse(self, status: int, peer: str, why: str) -> int:
        self.refused += 1
        logger.warning("C-STORE from %s refused (0x%04X): %s", peer, status, why)
        return status

    def _on_store(self, event: Any) -> int:
        """Check, spool, then acknowledge: the C-STORE response is our promise not to lose the image.
        Nothing the peer sent is used before it is checked; log lines carry no value from the dataset
        except a refused UID's reason (not the UID itself)."""
        peer = shown(str(event.assoc.requestor.ae_title).strip(), 20)
        size = dataset_size(event)
        if size > self._max_dataset_bytes:
            return self._refuse(
                _OUT_OF_RESOURCES, peer, f"dataset of {size} bytes (limit {self._max_dataset_bytes})"
            )
        try:
            dataset = event.dataset
            ref = checked_ref(dataset)
            if check_uid(event.request.AffectedSOPInstanceUID, "Affected SOP Instance UID") != ref.sop_uid:
                raise InvalidUid("Affected SOP Instance UID", "differs from the dataset's SOP Instance UID")
        except InvalidUid as error:
            return self._refuse(_CANNOT_UNDERSTAND, peer, str(error))
        except AttributeError:
            return self._refuse(_CANNOT_UNDERSTAND, peer, "no Study/Series/SOP Instance or SOP Class UID")
        except Exception as error:  # a hostile dataset may break the decoder in any way: refuse it
            return self._refuse(_CANNOT_UNDERSTAND, peer, f"undecodable dataset ({type(error).__name__})")
        if ref.modality and ref.modality not in self._modalities:
            reason = f"Modality {shown(ref.modality, 20)} is not one of {', '.join(self._modalities)}"
            self._processor.skip(ref, reason)
            return _SUCCESS
        try:
            target = self._spool.put(ref.sop_uid, event.encoded_dataset(include_meta=True))
        except SpoolFull:
            return self._refuse(_OUT_OF_RESOURCES, peer, f"the spool is full ({self._spool.max_bytes} bytes)")
        except OSError as error:
            logger.error("cannot spool an image (%s); answering out of resources", error.strerror)
            return _OUT_OF_RESOURCES
        self._queue.put(target)
        return _SUCCESS

    def start(self) -> None:
        """Bind and serve in the background; images left in the spool by an earlier run are queued."""
        for leftover in self._spool.held():
            self._queue.put(leftover)
        ae = self._admission.application_entity()
        ae.add_supported_context(Verification)
        for sop_class in IMAGE_CLASSES:
            ae.add_supported_context(sop_class, list(TRANSFER_SYNTAXES))
        self._server = serve(
            ae, self._admission, self._address, [(evt.EVT_C_STORE, self._on_store)], name="cxr-listener"
        )
        self.port = int(self._server.server_address[1])
        logger.info(
            "listening as %s on %s:%d (C-STORE, C-ECHO%s) for %s",
            self._admission.ae_title,
            self._address[0],
            self.port,
            ", TLS" if self._admission.ssl_context is not None else "",
            ", ".join(self._admission.calling_aes),
        )

    def _process(self, path: Path) -> None:
        from pydicom import dcmread

        try:
            data = path.read_bytes()
            ref = checked_ref(dcmread(path, stop_before_pixels=True))
        except (OSError, AttributeError, InvalidUid) as error:
            logger.error("unusable spool file %s (%s); left in place", path.name, type(error).__name__)
            return
        outcome = self._processor.process(ref, lambda: data)
        if outcome.error_kind == "transient":
            # Still down after the retry budget: keep the image and try again later.
            timer = threading.Timer(self._retry_delay_s, self._queue.put, args=(path,))
            timer.daemon = True
            timer.start()
            return
        self._spool.remove(path)
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

    with StateStore(settings.state, destination=settings.destination) as state:
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
            admission=settings.admission(),
            spool=settings.spool,
            spool_max_bytes=settings.spool_max_bytes,
            max_dataset_bytes=settings.max_dataset_bytes,
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
