"""Child processes for the decoders that can kill their process: compressed DICOM pixel data.

GDCM (JPEG lossless, and pydicom's fallback for other compressed syntaxes) throws C++ exceptions that
nothing catches on some inputs: a JPEG lossless file declaring BitsAllocated 32, Rows that disagree with
the JPEG-LS stream, or a few flipped bits in a JPEG lossless stream (1 in 300 in tests/reliability) end
in `std::terminate`, and the whole service would abort with every request in flight. Such decodes run
here instead, in a child process per calling thread: a crash ends that child, its one request is answered
400, and the next call starts a fresh child. Children are started with `spawn` (the service has threads)
and live until the process exits; each holds a decoder's imports (~100 MB).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar

from service.errors import InvalidImage

logger = logging.getLogger(__name__)
T = TypeVar("T")

_local = threading.local()
"""One single-process executor per calling thread (the decode pool's threads), so a crash is charged to
the request that caused it: a shared pool would fail every request in flight on any child's death."""


def _exit_with_parent(parent: int) -> None:
    """In the child: exit once the service process is gone. Killed with SIGKILL, the service cannot stop
    its children, and the executor's queues keep their pipes open, so nothing else would end them."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _executor() -> ProcessPoolExecutor:
    executor: ProcessPoolExecutor | None = getattr(_local, "executor", None)
    if executor is None:
        executor = ProcessPoolExecutor(
            max_workers=1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_exit_with_parent,
            initargs=(os.getpid(),),
        )
        _local.executor = executor
    return executor


def run_isolated(function: Callable[..., T], *args: object) -> T:
    """`function(*args)` in this thread's child process; exceptions it raises come back as they are.

    Raises InvalidImage (400) when the child dies while running it (a native crash on this input)."""
    executor = _executor()
    try:
        return executor.submit(function, *args).result()
    except BrokenProcessPool:
        _local.executor = None
        executor.shutdown(wait=False, cancel_futures=True)
        logger.warning("a decoder process crashed on an input; answered 400, starting a new one")
        raise InvalidImage(
            "The DICOM pixel data crashed its decoder (corrupt or inconsistent file)."
        ) from None
