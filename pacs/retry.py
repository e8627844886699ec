"""Transient versus permanent failures, and retrying the transient ones with capped exponential backoff.

Every network call of `cxr pacs` (QIDO/WADO/STOW, C-FIND/C-GET/C-MOVE/C-STORE, POST /v1/classify) raises
`Transient` for what may succeed later (connection refused, timeout, 429, 5xx, an association that
was rejected or aborted) and `Permanent` for what never will (a 4xx answer, a refused image). `retry()`
repeats a call while it raises `Transient`, sleeping with "full jitter" (AWS Architecture Blog,
"Exponential Backoff And Jitter", 2015) but never less than a server's Retry-After, until an attempt or
time budget runs out; then the last `Transient` propagates for the caller to record.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

logger = logging.getLogger(__name__)
T = TypeVar("T")


class PacsError(Exception):
    """Base class of the integration's errors; `str(error)` is one line, without patient data."""


class Transient(PacsError):
    """May succeed if tried again later; `retry_after_s` is the server's hint, when it gave one."""

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Permanent(PacsError):
    """Will fail again however often it is tried: recorded and reported, never retried in this pass.

    `kind` says which: "unsupported" (an image the model must not see: a policy skip, not a fault),
    "invalid" (the image or the request is wrong), "config" (credentials, AE titles, URLs).
    """

    def __init__(self, message: str, *, kind: str = "invalid") -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Backoff:
    """How long to keep trying: at most `attempts` calls within `budget_s` seconds per operation."""

    attempts: int = 8
    initial_s: float = 0.5
    maximum_s: float = 30.0
    budget_s: float = 300.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")
        if self.initial_s < 0 or self.maximum_s < self.initial_s or self.budget_s < 0:
            raise ValueError("need 0 <= initial_s <= maximum_s and budget_s >= 0")

    def delay(self, attempt: int) -> float:
        """Sleep before attempt `attempt + 1` (attempt counts from 1): uniform in [0, min(max, initial*2^n)]."""
        ceiling = min(self.maximum_s, self.initial_s * (2 ** (attempt - 1)))
        return random.uniform(0.0, ceiling)


def retry(
    call: Callable[[], T],
    backoff: Backoff,
    *,
    what: str,
    stop: threading.Event | None = None,
) -> T:
    """`call()` until it returns or raises anything but `Transient`; the budget is on the monotonic clock.

    `stop` (set on shutdown) ends the waiting early: the last `Transient` is raised at once.
    """
    started = time.monotonic()
    attempt = 0
    while True:
        attempt += 1
        try:
            return call()
        except Transient as error:
            elapsed = time.monotonic() - started
            delay = max(backoff.delay(attempt), error.retry_after_s or 0.0)
            if attempt >= backoff.attempts or elapsed + delay > backoff.budget_s:
                logger.warning("%s: giving up after %d attempts in %.1f s: %s", what, attempt, elapsed, error)
                raise
            logger.info("%s: %s; retry %d in %.2f s", what, error, attempt, delay)
            if stop is None:
                time.sleep(delay)
            elif stop.wait(delay):
                raise
