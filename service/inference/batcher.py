"""Concurrent single-image requests -> batches for one ONNX Runtime session (Triton's dynamic batcher).

A bounded queue feeds one background task per model. The task takes the oldest request and everything
queued behind it, up to `max_batch_size`; drops requests that expired or whose client went away; pads the
batch to one of a few fixed sizes (all warmed before readiness, so ONNX Runtime's arena never meets a new
shape) and runs it on the session's own single worker thread. A full queue is refused at once; nobody
waits on a queue that cannot move.

Waiting for a batch to fill happens only where it can pay: never when the maximum is 1, and never for a
request that arrived while the worker was idle (it runs at once: no other request was in sight). A
request that arrived while a batch was running is a sign of load; its batch may wait until `max_delay_s`
after that request was queued (monotonic clock) for more. `warm()` times the batch sizes and, with the
`auto` policy, lowers `max_batch_size` to the largest size that raises images/s (service.inference.batch_policy).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from service.errors import DeadlineExceeded, ModelNotReady, Overloaded
from service.inference.batch_policy import BatchPolicy, Mode, choose_max_batch_size, measure

logger = logging.getLogger(__name__)


class BatchModel(Protocol):
    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]: ...


class BatchObserver(Protocol):
    """Where the batcher reports what it did (metrics); every method must be cheap and never raise."""

    def batch(self, size: int, padded_to: int, seconds: float) -> None: ...
    def dropped(self, reason: str, count: int) -> None: ...


@dataclass(frozen=True)
class BatchResult:
    """One image's share of a batch: positive-class probabilities, its CAM and where the time went."""

    probabilities: np.ndarray  # (K,)
    cam: np.ndarray | None  # (h, w); None for models without a CAM output
    queue_ms: float
    inference_ms: float
    batch_size: int


@dataclass(eq=False)
class _Pending:
    tensor: np.ndarray
    future: asyncio.Future[BatchResult]
    queued_at: float
    deadline: float
    under_load: bool  # a batch was running when it arrived


def batch_sizes(max_batch_size: int) -> list[int]:
    """The padded sizes the batcher ever runs: powers of two below the maximum, and the maximum."""
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
    sizes = [1 << i for i in range(max_batch_size.bit_length()) if (1 << i) < max_batch_size]
    return [*sizes, max_batch_size]


class Batcher:
    """Dynamic batcher for one model session. `start()` and `aclose()` belong to the lifespan."""

    def __init__(
        self,
        model: BatchModel,
        *,
        name: str,
        max_batch_size: int,
        max_delay_s: float,
        capacity: int,
        overloaded: Callable[[str], Overloaded] = Overloaded,
        observer: BatchObserver | None = None,
    ) -> None:
        if capacity < 1 or max_delay_s < 0:
            raise ValueError("capacity must be >= 1 and max_delay_s >= 0")
        self.name = name
        self.sizes = batch_sizes(max_batch_size)
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self.configured_max = max_batch_size
        self.policy: BatchPolicy | None = None  # until warm() has measured
        self._running = False
        self._model = model
        self._overloaded = overloaded
        self._observer = observer
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue(maxsize=capacity)
        # One thread per session: ONNX Runtime's own intra-op pool is the only parallelism inside a run.
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"ort-{name}")
        self._task: asyncio.Task[None] | None = None
        self._closing: asyncio.Task[None] | None = None

    @property
    def depth(self) -> int:
        """Requests waiting in the queue (not counting the batch being formed or run)."""
        return self._queue.qsize()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"batcher-{self.name}")

    async def warm(self, tensor_shape: tuple[int, ...], *, mode: Mode = "fixed") -> BatchPolicy:
        """Run and time the padded batch sizes on the worker thread, before the model is declared ready
        (and before `start()`); with `mode="auto"`, batch only up to the largest size that pays."""
        loop = asyncio.get_running_loop()
        configured = self.configured_max
        if configured == 1:  # nothing to choose between: one untimed run warms the only shape
            zeros = np.zeros((1, *tensor_shape), dtype=np.float32)
            await loop.run_in_executor(self._worker, self._model.run, zeros)
            self.policy = BatchPolicy(mode, 1, 1)
            return self.policy
        table = await loop.run_in_executor(
            self._worker,
            functools.partial(
                measure, self._model.run, tensor_shape, batch_sizes(configured), stop_early=mode == "auto"
            ),
        )
        chosen = choose_max_batch_size(table) if mode == "auto" else configured
        self.policy = BatchPolicy(mode, configured, chosen, table)
        self.max_batch_size = chosen
        self.sizes = batch_sizes(chosen)
        return self.policy

    async def submit(self, tensor: np.ndarray, *, deadline: float) -> BatchResult:
        """Queue one preprocessed image; raises Overloaded at once when the queue is full.

        `deadline` is on the `time.monotonic()` clock. Cancelling the awaiting task (deadline or client
        disconnect) cancels the future, and the worker then skips the image.
        """
        if self._closing is not None:
            raise ModelNotReady("The service is shutting down.")
        now = time.monotonic()
        if deadline <= now:
            raise DeadlineExceeded("The request deadline passed before the image was queued.")
        future: asyncio.Future[BatchResult] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait(_Pending(tensor, future, now, deadline, self._running))
        except asyncio.QueueFull:
            if self._observer:
                self._observer.dropped("overloaded", 1)
            raise self._overloaded(f"The queue for model {self.name} is full; retry later.") from None
        return await future

    async def _collect(self, batch: list[_Pending]) -> None:
        """Fill `batch` (owned by the caller, so a cancellation never loses a dequeued request)."""
        batch.append(await self._queue.get())
        # Idle worker: the oldest request runs at once with whatever is already queued behind it.
        until = batch[0].queued_at + (self.max_delay_s if batch[0].under_load else 0.0)
        while len(batch) < self.max_batch_size:
            # No race with submit(): both run on the event loop thread, and get_nowait/wait_for(get)
            # never lose an item (a cancelled get leaves the item in the queue).
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = until - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            batch.append(item)

    def _live(self, batch: list[_Pending]) -> list[_Pending]:
        """Drop cancelled (client gone, deadline hit) and expired requests before computing anything."""
        now = time.monotonic()
        live: list[_Pending] = []
        cancelled = expired = 0
        for item in batch:
            if item.future.done():
                cancelled += 1
            elif item.deadline <= now:
                expired += 1
                item.future.set_exception(DeadlineExceeded("The request deadline passed while queued."))
            else:
                live.append(item)
        if self._observer and cancelled:
            self._observer.dropped("cancelled", cancelled)
        if self._observer and expired:
            self._observer.dropped("expired", expired)
        return live

    async def _run(self, live: list[_Pending]) -> None:
        size = next(s for s in self.sizes if s >= len(live))
        tensors = np.stack([item.tensor for item in live])
        if size > len(live):
            pad = np.zeros((size - len(live), *tensors.shape[1:]), dtype=tensors.dtype)
            tensors = np.concatenate([tensors, pad])
        started = time.monotonic()
        self._running = True  # reset by _loop once the batch's results are out
        probabilities, cams = await asyncio.get_running_loop().run_in_executor(
            self._worker, self._model.run, tensors
        )
        seconds = time.monotonic() - started
        if len(probabilities) != size or (cams is not None and len(cams) != size):
            raise RuntimeError(f"model {self.name} returned outputs that do not match its batch of {size}")
        if self._observer:
            self._observer.batch(len(live), size, seconds)
        for index, item in enumerate(live):
            if not item.future.done():
                item.future.set_result(
                    BatchResult(
                        probabilities=probabilities[index],
                        cam=None if cams is None else cams[index],
                        queue_ms=(started - item.queued_at) * 1000.0,
                        inference_ms=seconds * 1000.0,
                        batch_size=len(live),
                    )
                )

    async def _loop(self) -> None:
        while True:
            batch: list[_Pending] = []
            try:
                await self._collect(batch)
                live = self._live(batch)
                if live:
                    await self._run(live)
            except Exception as error:  # every waiter gets the error; the loop serves the next batch
                logger.exception("batch of %d failed on model %s", len(batch), self.name)
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(error)
            finally:
                self._running = False
                # Cancelled (aclose) in the middle of a batch: nobody in it may hang.
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(ModelNotReady("The service is shutting down."))
                    self._queue.task_done()

    async def aclose(self, timeout: float) -> None:
        """Refuse new work, let queued work finish for up to `timeout` s, fail the rest, stop the worker.

        Idempotent: every caller (signal handler, lifespan) awaits the same drain."""
        if self._closing is None:
            self._closing = asyncio.get_running_loop().create_task(self._drain(timeout))
        await asyncio.shield(self._closing)

    async def _drain(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), timeout)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        left = 0
        while not self._queue.empty():
            item = self._queue.get_nowait()
            self._queue.task_done()
            if not item.future.done():
                item.future.set_exception(ModelNotReady("The service shut down before this image was run."))
                left += 1
        if left:
            logger.warning(
                "model %s: %d queued images failed at shutdown (drain timeout %.1f s)",
                self.name,
                left,
                timeout,
            )
        self._worker.shutdown(wait=False, cancel_futures=True)
