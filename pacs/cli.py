"""`cxr pacs`: flags -> PacsSettings -> one pass (pacs.run) or the listener (pacs.listener).

The plain case is one line and exits when the pass is done, with a status a cron job can test
(0 ok, 1 some image failed, 2 bad settings, 3 incomplete: PACS or service unavailable):

    cxr pacs --dicomweb-url http://pacs:8042/dicom-web --service-url http://cxr:8000
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
import warnings
from types import FrameType
from typing import Any

from pydantic import ValidationError

from service.flags import report_invalid

logger = logging.getLogger(__name__)

EXIT_SETTINGS = 2
DESCRIPTION = (
    "Classify chest radiographs from a PACS (DICOMweb or DIMSE, or as a C-STORE listener) through a cxr "
    "service and write the results back as a DICOM SR and a heatmap Secondary Capture. RESEARCH USE ONLY: "
    "not for diagnosis. The listener and the C-MOVE destination accept associations only when called with "
    "--ae-title and only from the calling AE titles of --allow-calling-ae; with no list given, from --pacs-ae "
    "alone (the PACS this command writes to). Everyone else gets A-ASSOCIATE-RJ."
)


def add_flags(parser: argparse.ArgumentParser) -> None:
    """`cxr pacs`'s flags: one per PacsSettings field."""
    from pacs.settings import add_cli_flags

    parser.description = DESCRIPTION
    add_cli_flags(parser)


def _on_signals(stop: threading.Event) -> None:
    def handler(signum: int, frame: FrameType | None) -> None:
        logger.info("signal %d: finishing the images in progress, starting no new ones", signum)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, handler)


def main(args: argparse.Namespace) -> int:
    """Entry point of `cxr pacs` (cxr.cli parses the flags)."""
    from pacs.settings import from_cli

    try:
        settings = from_cli(args)
    except ValidationError as error:
        report_invalid(error, logger)
        return EXIT_SETTINGS
    return run(settings)


_CHATTY = ("pynetdicom", "highdicom", "httpx", "httpcore")
"""Libraries that log datasets (patient names among them: pynetdicom) or URLs at INFO."""
_QUOTES_VALUES = "pydicom"
"""pydicom's validation warnings quote the offending value: a peer's UID of any length, a patient's name."""


def run(settings: Any, stop: threading.Event | None = None) -> int:
    """Programmatic entry: a pass, or the listener until SIGTERM; returns the exit status."""
    stop = stop or threading.Event()
    for name in _CHATTY:
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger(_QUOTES_VALUES).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning, module=rf"{_QUOTES_VALUES}(\.|$)")
    if threading.current_thread() is threading.main_thread():
        _on_signals(stop)
    if settings.listen:
        from pacs.listener import listen

        return listen(settings, stop=stop)
    from pacs.run import run_pass

    summary = run_pass(settings, stop=stop)
    return summary.exit_code
