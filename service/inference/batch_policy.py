"""Which batch sizes pay on this hardware: the warm-up's timings -> the largest batch the batcher forms.

A batch pays when it raises images/s: on a GPU it does (the device is idle between small runs), on a
2-core CPU with a conv net it often does not (a batch of 8 of the bundled model ran at 0.92x the images/s
of single images in the in-process pipeline). So the warm-up times each padded batch size with the
provider and thread settings the service runs with, and `choose_max_batch_size` keeps batching only as far
as each step up in size still raises images/s by `MARGIN`. `--batch-policy fixed` skips the choice and
batches up to `--max-batch-size`, as configured.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

MARGIN = 0.10
"""A step up in batch size must raise images/s by more than this to be kept: above the spread of repeated
warm-up measurements on a shared CPU, well below what a GPU gains per doubling (docs/design-notes.md)."""

REPEATS = 5
"""Timed runs of each size (after one untimed run: a shape's first run is slow)."""

Mode = Literal["auto", "fixed"]


def choose_max_batch_size(images_per_s: Mapping[int, float], margin: float = MARGIN) -> int:
    """The largest batch size up to which images/s keeps rising by more than `margin` at every step.

    `images_per_s` maps batch sizes (1 among them) to measured images per second. Going up through the
    sizes in order, the first size that is not more than `1 + margin` times as fast per image as the size
    below it ends the climb; the answer is the size below it (1 when the first step already fails).

    - GPU-like table, images/s rising with batch size (say 1: 900, 2: 1700, 4: 3100, 8: 5200): every step
      pays, so the answer is the largest size measured, the configured maximum; where the device
      saturates (..., 32: 9000, 64: 9300) the climb stops below the size that gains too little to be
      worth a batch twice as long.
    - CPU-like table, flat or falling (this 2-core CPU with the bundled model: 1: 290, 2: 295, 4: 297,
      8: 298 for inference alone): the first step gains 2 %, so the answer is 1 and nothing waits for a
      batch to fill.
    A size after a failed step is never chosen, even if it measured faster: a batch size that pays only
    when a slower one below it is skipped is not something this rule relies on.
    """
    if 1 not in images_per_s or any(size < 1 for size in images_per_s):
        raise ValueError(f"a timing table needs batch size 1 and sizes >= 1, got {sorted(images_per_s)}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    sizes = sorted(images_per_s)
    chosen = sizes[0]
    for size in sizes[1:]:
        if images_per_s[size] <= images_per_s[chosen] * (1.0 + margin):
            break
        chosen = size
    return chosen


def measure(
    run: Callable[[np.ndarray], object],
    tensor_shape: tuple[int, ...],
    sizes: list[int],
    *,
    stop_early: bool,
    repeats: int = REPEATS,
    margin: float = MARGIN,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[int, float]:
    """Run `sizes` (increasing, from 1) of zero batches through `run`; return the best images/s of each.

    Each size runs once untimed (its first run is slow, and it readies ONNX Runtime's arena for the
    shape), then `repeats` timed runs alternate with runs of the size below it, so that a burst from
    another process lands on both sides of the comparison; every figure is the best of its runs (another
    process can only slow a run down). With `stop_early`, sizes above the first one that does not pay
    (see `choose_max_batch_size`) are neither timed nor warmed: they will never run. Call it on the thread
    that runs the batches, with the session's own settings.
    """
    batches = {size: np.zeros((size, *tensor_shape), dtype=np.float32) for size in sizes}

    def timed(size: int) -> float:
        started = clock()
        run(batches[size])
        return size / max(clock() - started, 1e-9)

    table: dict[int, float] = {}
    below: int | None = None
    for size in sizes:
        run(batches[size])
        best = 0.0
        for _ in range(repeats):
            if below is not None:
                table[below] = max(table[below], timed(below))
            best = max(best, timed(size))
        table[size] = best
        if stop_early and choose_max_batch_size(table, margin) < size:
            break
        below = size
    return table


@dataclass(frozen=True)
class BatchPolicy:
    """What the batcher of one model does, and why: shown in /v1/models and logged at start-up."""

    mode: Mode
    configured_max: int
    max_batch_size: int
    images_per_s: dict[int, float] = field(default_factory=dict)
    margin: float = MARGIN

    @property
    def reason(self) -> str:
        if self.configured_max == 1:
            return "the configured maximum is 1: nothing to choose"
        if self.mode == "fixed":
            auto = choose_max_batch_size(self.images_per_s, self.margin)
            return f"fixed by configuration: batches up to {self.max_batch_size} (auto would choose {auto})"
        measured = sorted(self.images_per_s)
        above = [size for size in measured if size > self.max_batch_size]
        if not above:
            return f"images/s rose by more than {self.margin:.0%} at every step up to {self.max_batch_size}"
        gain = self.images_per_s[above[0]] / self.images_per_s[self.max_batch_size] - 1.0
        return (
            f"batch {above[0]} changed images/s by {gain:+.1%} over batch {self.max_batch_size}, "
            f"not more than the {self.margin:.0%} a larger batch must gain"
        )

    def describe(self) -> dict[str, Any]:
        return {
            "policy": self.mode,
            "configured_max_batch_size": self.configured_max,
            "max_batch_size": self.max_batch_size,
            "warmup_images_per_s": {str(size): round(rate, 1) for size, rate in self.images_per_s.items()},
            "margin": self.margin,
            "reason": self.reason,
        }
