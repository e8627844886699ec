"""The dynamic batcher alone, with a model whose run() is held on an event to control timing."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest

from service.errors import DeadlineExceeded, ModelNotReady, Overloaded, TooManyRequests
from service.inference.batch_policy import choose_max_batch_size
from service.inference.batcher import Batcher, batch_sizes

pytestmark = pytest.mark.anyio


class HeldModel:
    """probabilities = per-image mean (so results identify their input); held while `release` is clear."""

    def __init__(self, output_rows: int | None = None) -> None:
        self.release = threading.Event()
        self.release.set()
        self.batches: list[int] = []
        self.started = threading.Event()
        self.output_rows = output_rows
        self.fail: Exception | None = None

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.batches.append(len(batch))
        self.started.set()
        self.release.wait(10)
        if self.fail is not None:
            raise self.fail
        means = batch.reshape(len(batch), -1).mean(axis=1)
        probabilities = np.stack([1 - means, means], axis=1)[: self.output_rows or len(batch)]
        return probabilities, batch[..., 0]


def tensor(value: float) -> np.ndarray:
    return np.full((4, 4, 1), value, dtype=np.float32)


def far() -> float:
    return time.monotonic() + 30


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.002)


def test_batch_sizes_are_powers_of_two_and_the_maximum() -> None:
    assert batch_sizes(1) == [1]
    assert batch_sizes(8) == [1, 2, 4, 8]
    assert batch_sizes(12) == [1, 2, 4, 8, 12]
    with pytest.raises(ValueError):
        batch_sizes(0)


async def test_warm_runs_every_padded_size() -> None:
    model = HeldModel()
    batcher = Batcher(model, name="m", max_batch_size=6, max_delay_s=0.0, capacity=4)
    policy = await batcher.warm((4, 4, 1))
    assert list(dict.fromkeys(model.batches)) == [1, 2, 4, 6]  # every size, each first run untimed
    assert (
        policy.mode == "fixed" and policy.max_batch_size == 6 and sorted(policy.images_per_s) == [1, 2, 4, 6]
    )
    assert batcher.sizes == [1, 2, 4, 6] and batcher.max_batch_size == 6
    await batcher.aclose(1)


async def test_auto_policy_batches_only_as_far_as_the_measurement_says() -> None:
    model = HeldModel()
    batcher = Batcher(model, name="m", max_batch_size=8, max_delay_s=0.0, capacity=16)
    policy = await batcher.warm((4, 4, 1), mode="auto")
    # Whatever this machine measured, the batcher follows the rule on it and never exceeds the maximum.
    assert policy.mode == "auto" and policy.configured_max == 8
    assert policy.max_batch_size == choose_max_batch_size(policy.images_per_s) <= 8
    assert batcher.max_batch_size == policy.max_batch_size
    assert batcher.sizes == batch_sizes(policy.max_batch_size)
    assert max(model.batches) == max(policy.images_per_s)  # sizes above the first that did not pay never ran
    batcher.start()
    model.batches.clear()
    results = await asyncio.gather(*(batcher.submit(tensor(0.1 * v), deadline=far()) for v in range(10)))
    assert max(model.batches) <= policy.max_batch_size and len(results) == 10
    await batcher.aclose(1)


async def test_a_single_size_is_warmed_once_and_not_timed() -> None:
    model = HeldModel()
    batcher = Batcher(model, name="m", max_batch_size=1, max_delay_s=0.0, capacity=4)
    policy = await batcher.warm((4, 4, 1), mode="auto")
    assert model.batches == [1] and policy.max_batch_size == 1 and policy.images_per_s == {}
    await batcher.aclose(1)


async def test_concurrent_requests_form_one_padded_batch_with_unbatched_results() -> None:
    model = HeldModel()
    batcher = Batcher(model, name="m", max_batch_size=8, max_delay_s=0.05, capacity=16)
    batcher.start()
    values = [0.1, 0.2, 0.3]
    results = await asyncio.gather(*(batcher.submit(tensor(v), deadline=far()) for v in values))
    assert model.batches == [4]  # three images padded to the warmed size 4
    assert [r.batch_size for r in results] == [3, 3, 3]
    single = [(await batcher.submit(tensor(v), deadline=far())).probabilities for v in values]
    for result, alone in zip(results, single, strict=True):
        np.testing.assert_array_equal(result.probabilities, alone)
    await batcher.aclose(1)


async def test_a_request_at_an_idle_worker_runs_at_once() -> None:
    model = HeldModel()
    # A delay no test could sit out: had the batcher waited for company, this would hang.
    batcher = Batcher(model, name="m", max_batch_size=8, max_delay_s=3600.0, capacity=16)
    batcher.start()
    result = await asyncio.wait_for(batcher.submit(tensor(0.1), deadline=far()), 30)
    assert result.batch_size == 1 and model.batches == [1]
    await batcher.aclose(1)


async def test_no_wait_for_a_batch_when_the_maximum_is_1() -> None:
    model = HeldModel()
    batcher = Batcher(model, name="m", max_batch_size=1, max_delay_s=3600.0, capacity=16)
    batcher.start()
    model.release.clear()
    first = asyncio.ensure_future(batcher.submit(tensor(0.1), deadline=far()))
    await until(model.started.is_set)
    queued = asyncio.ensure_future(batcher.submit(tensor(0.2), deadline=far()))  # arrives under load
    await until(lambda: batcher.depth == 1)
    model.release.set()
    await asyncio.wait_for(asyncio.gather(first, queued), 30)
    assert model.batches == [1, 1]
    await batcher.aclose(1)


async def test_under_load_a_batch_waits_to_fill_counting_from_its_oldest_request() -> None:
    model = HeldModel()
    batcher = Batcher(model, name="m", max_batch_size=4, max_delay_s=3600.0, capacity=16)
    batcher.start()
    model.release.clear()
    running = asyncio.ensure_future(batcher.submit(tensor(0.1), deadline=far()))  # idle worker: at once
    await until(model.started.is_set)
    early = [asyncio.ensure_future(batcher.submit(tensor(0.2), deadline=far())) for _ in range(2)]
    await until(lambda: batcher.depth == 2)
    model.release.set()
    await running
    # The two that arrived under load are taken and held for more (the delay has not run out)...
    await until(lambda: batcher.depth == 0)
    assert model.batches == [1]
    # ...until two more fill the batch to its maximum.
    late = [asyncio.ensure_future(batcher.submit(tensor(0.3), deadline=far())) for _ in range(2)]
    results = await asyncio.wait_for(asyncio.gather(*early, *late), 30)
    assert model.batches == [1, 4] and {r.batch_size for r in results} == {4}
    await batcher.aclose(1)


async def test_max_delay_counts_from_the_oldest_request() -> None:
    model = HeldModel()
    batcher = Batcher(model, name="m", max_batch_size=8, max_delay_s=0.2, capacity=16)
    batcher.start()
    model.release.clear()
    running = asyncio.ensure_future(batcher.submit(tensor(0.0), deadline=far()))
    await until(model.started.is_set)
    queued_at = time.monotonic()
    first = asyncio.ensure_future(batcher.submit(tensor(0.1), deadline=far()))  # arrives under load
    model.release.set()
    await running
    await until(lambda: batcher.depth == 0)  # taken, waiting for company
    second = asyncio.ensure_future(batcher.submit(tensor(0.2), deadline=far()))
    await asyncio.gather(first, second)
    # One batch, run once 0.2 s had passed since the *first* request was queued, not the second.
    assert model.batches == [1, 2]
    assert time.monotonic() - queued_at >= 0.2
    await batcher.aclose(1)


async def test_full_queue_refuses_at_once_and_accepted_requests_finish() -> None:
    model = HeldModel()
    batcher = Batcher(model, name="m", max_batch_size=1, max_delay_s=0.0, capacity=2)
    batcher.start()
    model.release.clear()
    running = asyncio.ensure_future(batcher.submit(tensor(0.1), deadline=far()))
    await until(model.started.is_set)
    queued = [asyncio.ensure_future(batcher.submit(tensor(0.2), deadline=far())) for _ in range(2)]
    await asyncio.sleep(0)
    refused_at = time.monotonic()
    with pytest.raises(Overloaded):
        await batcher.submit(tensor(0.3), deadline=far())
    assert time.monotonic() - refused_at < 0.05
    model.release.set()
    assert len(await asyncio.gather(running, *queued)) == 3
    await batcher.aclose(1)


async def test_overload_class_is_configurable() -> None:
    model = HeldModel()
    batcher = Batcher(
        model, name="m", max_batch_size=1, max_delay_s=0, capacity=1, overloaded=lambda d: TooManyRequests(d)
    )
    first = asyncio.ensure_future(batcher.submit(tensor(0.1), deadline=far()))  # not started: stays queued
    await asyncio.sleep(0)
    with pytest.raises(TooManyRequests):
        await batcher.submit(tensor(0.1), deadline=far())
    batcher.start()
    await first
    await batcher.aclose(1)


async def test_expired_request_is_not_computed() -> None:
    model = HeldModel()
    batcher = Batcher(model, name="m", max_batch_size=1, max_delay_s=0.0, capacity=4)
    batcher.start()
    model.release.clear()
    running = asyncio.ensure_future(batcher.submit(tensor(0.1), deadline=far()))
    await until(model.started.is_set)
    expiring = asyncio.ensure_future(batcher.submit(tensor(0.2), deadline=time.monotonic() + 0.05))
    await asyncio.sleep(0.1)
    model.release.set()
    await running
    with pytest.raises(DeadlineExceeded):
        await expiring
    assert model.batches == [1]  # only the first request reached the model
    await batcher.aclose(1)


async def test_cancelled_request_is_skipped_before_inference() -> None:
    model = HeldModel()
    batcher = Batcher(model, name="m", max_batch_size=4, max_delay_s=0.0, capacity=8)
    batcher.start()
    model.release.clear()
    running = asyncio.ensure_future(batcher.submit(tensor(0.1), deadline=far()))
    await until(model.started.is_set)
    gone = asyncio.ensure_future(batcher.submit(tensor(0.2), deadline=far()))
    kept = asyncio.ensure_future(batcher.submit(tensor(0.3), deadline=far()))
    await asyncio.sleep(0)
    gone.cancel()  # the client disconnected
    model.release.set()
    await running
    assert (await kept).batch_size == 1
    assert model.batches == [1, 1]  # the second batch held only the request still wanted
    await batcher.aclose(1)


async def test_output_length_mismatch_fails_every_waiter() -> None:
    model = HeldModel(output_rows=1)
    batcher = Batcher(model, name="m", max_batch_size=2, max_delay_s=0.05, capacity=8)
    batcher.start()
    results = await asyncio.gather(
        *(batcher.submit(tensor(v), deadline=far()) for v in (0.1, 0.2)), return_exceptions=True
    )
    assert all(isinstance(r, RuntimeError) and "do not match" in str(r) for r in results)
    # The worker survives a failed batch.
    model.output_rows = None
    assert (await batcher.submit(tensor(0.5), deadline=far())).batch_size == 1
    await batcher.aclose(1)


async def test_model_failure_reaches_every_future() -> None:
    model = HeldModel()
    model.fail = ValueError("onnxruntime exploded")
    batcher = Batcher(model, name="m", max_batch_size=4, max_delay_s=0.05, capacity=8)
    batcher.start()
    results = await asyncio.gather(
        *(batcher.submit(tensor(v), deadline=far()) for v in (0.1, 0.2, 0.3)), return_exceptions=True
    )
    assert [type(r) for r in results] == [ValueError] * 3


async def test_aclose_drains_queued_work_then_refuses() -> None:
    model = HeldModel()
    batcher = Batcher(model, name="m", max_batch_size=1, max_delay_s=0.0, capacity=8)
    batcher.start()
    model.release.clear()
    pending = [asyncio.ensure_future(batcher.submit(tensor(0.1), deadline=far())) for _ in range(3)]
    await until(model.started.is_set)
    closing = asyncio.ensure_future(batcher.aclose(5))
    await asyncio.sleep(0.01)
    with pytest.raises(ModelNotReady):
        await batcher.submit(tensor(0.1), deadline=far())
    model.release.set()
    await closing
    assert all(r.batch_size == 1 for r in await asyncio.gather(*pending))


async def test_aclose_fails_what_the_drain_timeout_leaves() -> None:
    model = HeldModel()
    batcher = Batcher(model, name="m", max_batch_size=1, max_delay_s=0.0, capacity=8)
    batcher.start()
    model.release.clear()
    pending = [asyncio.ensure_future(batcher.submit(tensor(0.1), deadline=far())) for _ in range(3)]
    await until(model.started.is_set)
    started = time.monotonic()
    await batcher.aclose(0.1)
    assert time.monotonic() - started < 1.0
    results = await asyncio.gather(*pending, return_exceptions=True)
    assert [type(r) for r in results] == [ModelNotReady] * 3  # nothing hangs, in flight or queued
    model.release.set()
