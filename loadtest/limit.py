"""The in-process limit: decode + preprocess + ONNX Runtime in a tight loop, no HTTP, no client.

It runs with the service's thread budget (Settings defaults): `decode_workers` threads decode and
preprocess ahead of the consumer while one thread runs batches on a session with `intra_op_threads`
threads, so decoding overlaps inference exactly as in the service. What the service reaches over HTTP is
compared with this. The stage timings (one image at a time, one thread) say where the time goes, and the
variants measure the optimizations the service relies on (DCT-reduced JPEG decoding, the thread split).

`python -m loadtest.limit` runs the same loop in a process of its own, one window per request on stdin
(`serve_windows`): the benchmark runs it beside the HTTP floor (loadtest.sweeps.beside_floor).
"""

from __future__ import annotations

import collections
import json
import pickle
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import BinaryIO, NamedTuple

import cv2
import numpy as np

from loadtest.images import Sample
from service.imaging.decode import decode
from service.imaging.pixels import DecodedImage, to_training_scale
from service.inference.allocator import retain_freed_memory
from service.inference.model import OnnxModel

Decoder = Callable[[bytes], DecodedImage]


def decode_full(data: bytes) -> DecodedImage:
    """The service's decoder without DCT-domain reduction for JPEG (the 'before' of that optimization)."""
    decoded = decode(data)
    if decoded.format != "jpeg":
        return decoded
    pixels = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_GRAYSCALE)
    if pixels is None:
        raise ValueError("a JPEG the service decodes did not decode at full size")
    return DecodedImage(to_training_scale(pixels), "jpeg", decoded.original_height, decoded.original_width)


@dataclass(frozen=True)
class Pipeline:
    """One configuration of the in-process loop."""

    name: str
    decode_workers: int  # 0: decode on the inference thread, no overlap
    intra_op_threads: int
    batch_size: int
    decoder: Decoder = decode


def _timed(function: Callable[[], object], repeats: int) -> float:
    """Median milliseconds of `repeats` calls (the median resists another process's bursts)."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append((time.perf_counter() - started) * 1000.0)
    return float(np.median(times))


def stage_times(
    model: OnnxModel, samples: list[Sample], *, repeats: int, batch_sizes: list[int]
) -> dict[str, float]:
    """Median per-image milliseconds of each stage, one thread, averaged over the samples."""
    stages: dict[str, list[float]] = collections.defaultdict(list)
    for sample in samples:
        decoded = decode(sample.data)
        stages["decode (service: DCT-reduced JPEG)"].append(_timed(partial(decode, sample.data), repeats))
        stages["decode (full-size)"].append(_timed(partial(decode_full, sample.data), repeats))
        stages["preprocess (domain check, trim, lung crop, resize, CLAHE)"].append(
            _timed(partial(model.prepare, decoded), repeats)
        )
        # Already inside preprocess: the input-domain check's own share (view model and colour share; its
        # lung test reads the segmenter mask preprocessing computes anyway).
        stages["of which: input-domain check (view model)"].append(
            _timed(partial(model.domain.inspect, decoded.pixels, decoded.colour_fraction), repeats)
        )
    size = model.input_size
    result = {name: float(np.mean(values)) for name, values in stages.items()}
    for batch in batch_sizes:
        zeros = np.zeros((batch, size, size, 1), dtype=np.float32)
        model.run(zeros)  # first run of a shape is slow; the service warms every shape too
        result[f"inference, batch {batch} (per image)"] = _timed(partial(model.run, zeros), repeats) / batch
    return result


class Rate(NamedTuple):
    images_per_s: float
    cpu_ms_per_image: float
    """CPU time of this whole process (every thread) per image over the same window: what the pipeline
    itself costs, whether or not it kept every core busy."""


def run_pipeline(
    model: OnnxModel, samples: list[Sample], pipeline: Pipeline, *, warmup_s: float, duration_s: float
) -> Rate:
    """Images per second through decode -> prepare -> batch -> run, measured after `warmup_s`, and the
    process's CPU time per image over the same window."""

    def prepare(sample: Sample) -> np.ndarray:
        tensor, _, _ = model.prepare(pipeline.decoder(sample.data))
        return tensor

    counter = iter(range(1 << 62))
    pool = ThreadPoolExecutor(max_workers=pipeline.decode_workers) if pipeline.decode_workers else None
    ahead: collections.deque[Future[np.ndarray]] = collections.deque()

    def refill() -> None:
        # Keep the decoders one batch ahead of the consumer, as the service's queue does under load.
        while pool is not None and len(ahead) < 2 * pipeline.batch_size + pipeline.decode_workers:
            ahead.append(pool.submit(prepare, samples[next(counter) % len(samples)]))

    def next_tensor() -> np.ndarray:
        if pool is None:
            return prepare(samples[next(counter) % len(samples)])
        refill()
        return ahead.popleft().result()

    started = time.monotonic()
    measure_from, end = started + warmup_s, started + warmup_s + duration_s
    # Images per second between the first and the last batch completed in the window: exact for any batch
    # size (counting whole batches against the window's length would be off by up to one batch).
    first = last = 0.0
    cpu_first = cpu_last = 0.0
    images = 0
    try:
        while time.monotonic() < end or not last:
            batch = np.stack([next_tensor() for _ in range(pipeline.batch_size)])
            model.run(batch)
            done = time.monotonic()
            if done < measure_from:
                continue
            if not first:
                first, cpu_first = done, time.process_time()
            else:
                images += pipeline.batch_size
                last, cpu_last = done, time.process_time()
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    return Rate(images / (last - first), 1000.0 * (cpu_last - cpu_first) / images)


@dataclass(frozen=True)
class Job:
    """What `python -m loadtest.limit` runs: one pipeline on one model, over the given images."""

    model_dir: Path
    samples: list[Sample]
    pipeline: Pipeline
    malloc_retain_mib: int


def serve_windows(requests: BinaryIO, answers: BinaryIO) -> None:
    """The limit in a process of its own, for loadtest.sweeps.beside_floor: a pickled Job first, then
    one line `[warmup_s, duration_s]` per window; each answered with one JSON line of its Rate. A
    process of its own so that the HTTP floor beside it shares the cores, not a GIL, with it."""
    job: Job = pickle.load(requests)
    retain_freed_memory(job.malloc_retain_mib)  # as `cxr serve` and the in-process limit do
    model = OnnxModel(
        job.model_dir, providers=["CPUExecutionProvider"], intra_op_threads=job.pipeline.intra_op_threads
    )
    answers.write(b"ready\n")
    answers.flush()
    for line in requests:
        warmup_s, duration_s = json.loads(line)
        rate = run_pipeline(model, job.samples, job.pipeline, warmup_s=warmup_s, duration_s=duration_s)
        answers.write(json.dumps(rate._asdict()).encode() + b"\n")
        answers.flush()


if __name__ == "__main__":
    serve_windows(sys.stdin.buffer, sys.stdout.buffer)
