"""What the lifespan owns while the service runs: settings, the model repository (sessions + batchers),
the decode pool, metrics, and the readiness and draining flags. No module-level globals hold any of it.

Life cycle: `open()` loads and verifies every model (a checksum mismatch stops startup here), then
`start_warmup()` runs every padded batch shape in the background while /healthz already answers and
/readyz says 503; `begin_drain()` (SIGTERM or lifespan exit) refuses new work and drains the batchers
within `drain_timeout_s`; `aclose()` releases the threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from service.errors import ModelNotReady
from service.inference.repository import ModelRepository
from service.metrics import Metrics
from service.settings import Settings

logger = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    metrics: Metrics
    repository: ModelRepository
    pool: ThreadPoolExecutor
    parser: ThreadPoolExecutor
    started_at: float
    ready: bool = False
    draining: bool = False
    warmup_error: str | None = None
    _preprocessing: int = 0
    _drain: asyncio.Task[None] | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @classmethod
    def open(cls, settings: Settings, metrics: Metrics) -> Runtime:
        """Load and verify every model version; raises ModelIntegrityError on any checksum mismatch."""
        started = time.monotonic()
        repository = ModelRepository(settings, metrics)
        # Decoding and preprocessing run here, bounded, so the event loop never decodes an image and
        # the ONNX Runtime worker threads keep their cores.
        pool = ThreadPoolExecutor(max_workers=settings.decode_workers, thread_name_prefix="decode")
        # /v2 JSON bodies are parsed here, one at a time: parsing holds the GIL whichever thread runs it
        # (the decoders release it), so a second thread would add no throughput, only a third contender
        # with the event loop for the GIL (service.api.v2.wire).
        parser = ThreadPoolExecutor(max_workers=1, thread_name_prefix="v2-parse")
        return cls(settings, metrics, repository, pool, parser, started)

    def start_warmup(self) -> None:
        task = asyncio.get_running_loop().create_task(self._warm(), name="warmup")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _warm(self) -> None:
        try:
            await self.repository.warm()
        except Exception as error:
            self.warmup_error = f"{type(error).__name__}: {error}"
            logger.exception("warm-up failed; the service stays not ready")
            return
        self.repository.start()
        self.ready = True
        logger.info("ready in %.2f s", time.monotonic() - self.started_at)

    def retry_headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.settings.retry_after_s)}

    def check_accepting(self) -> None:
        """Raise ModelNotReady (503) while warming up, after a failed warm-up, or while draining."""
        if self.draining:
            raise ModelNotReady("The service is shutting down.", headers=self.retry_headers())
        if self.warmup_error is not None:
            raise ModelNotReady("Model warm-up failed; see the server log.")
        if not self.ready:
            raise ModelNotReady("The models are still warming up.", headers=self.retry_headers())

    @contextlib.contextmanager
    def admit(self, images: int) -> Iterator[None]:
        """Bound the images waiting for or in preprocessing: refuse at once beyond `queue_capacity`,
        like the batch queue, instead of letting the decode pool's queue grow."""
        if self._preprocessing + images > self.settings.queue_capacity:
            overloaded = self.repository.overloaded
            raise overloaded("Too many images are being decoded; retry later.", headers=self.retry_headers())
        self._preprocessing += images
        try:
            yield
        finally:
            self._preprocessing -= images

    def begin_drain(self) -> asyncio.Task[None]:
        """Stop accepting; queued images get up to `drain_timeout_s` to finish, the rest fail with 503."""
        if self._drain is None:
            self.draining = True
            logger.info("draining: no new requests, %.1f s for queued work", self.settings.drain_timeout_s)
            task = asyncio.get_running_loop().create_task(
                self.repository.aclose(self.settings.drain_timeout_s)
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            self._drain = task
        return self._drain

    async def aclose(self) -> None:
        await self.begin_drain()
        for task in list(self._tasks):
            task.cancel()
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.parser.shutdown(wait=False, cancel_futures=True)
