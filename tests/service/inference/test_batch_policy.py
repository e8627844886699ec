"""The batch policy rule on timing tables, and the warm-up measurement on a model whose cost per batch is
set by the test (its clock advances by that cost, so no figure depends on this machine's speed)."""

from __future__ import annotations

import numpy as np
import pytest

from service.inference.batch_policy import MARGIN, BatchPolicy, choose_max_batch_size, measure

# images/s by batch size
GPU_LIKE = {1: 900.0, 2: 1700.0, 4: 3100.0, 8: 5200.0}
GPU_SATURATING = {1: 900.0, 2: 1700.0, 4: 3100.0, 8: 5200.0, 16: 8000.0, 32: 9000.0, 64: 9300.0}
CPU_LIKE = {1: 45.7, 2: 45.1, 4: 43.9, 8: 42.2}  # issue 20: the bundled model on the 2-core CPU
CPU_FLAT = {1: 290.0, 2: 295.0, 4: 297.0, 8: 298.0}  # inference alone, same CPU: +2 % per step at most


def test_gpu_like_table_batches_up_to_the_maximum() -> None:
    assert choose_max_batch_size(GPU_LIKE) == 8


def test_gpu_that_saturates_stops_below_the_step_that_gains_too_little() -> None:
    assert choose_max_batch_size(GPU_SATURATING) == 32  # 32 -> 64 gains 3 %


def test_cpu_like_tables_do_not_batch() -> None:
    assert choose_max_batch_size(CPU_LIKE) == 1
    assert choose_max_batch_size(CPU_FLAT) == 1


def test_a_step_must_gain_more_than_the_margin() -> None:
    assert choose_max_batch_size({1: 100.0, 2: 100.0 * (1 + MARGIN)}) == 1
    assert choose_max_batch_size({1: 100.0, 2: 100.0 * (1 + MARGIN) + 0.1}) == 2
    assert choose_max_batch_size({1: 100.0, 2: 105.0}, margin=0.0) == 2


def test_sizes_after_a_failed_step_are_never_chosen() -> None:
    assert choose_max_batch_size({1: 100.0, 2: 90.0, 4: 400.0}) == 1


def test_bad_tables_are_refused() -> None:
    with pytest.raises(ValueError):
        choose_max_batch_size({2: 10.0, 4: 20.0})
    with pytest.raises(ValueError):
        choose_max_batch_size({1: 10.0}, margin=-0.1)


class CostedModel:
    """run() costs `fixed + per_image * N` seconds of the test's clock (no real time passes)."""

    def __init__(self, fixed: float, per_image: float) -> None:
        self.fixed, self.per_image = fixed, per_image
        self.now = 0.0
        self.runs: list[int] = []

    def clock(self) -> float:
        return self.now

    def run(self, batch: np.ndarray) -> None:
        self.runs.append(len(batch))
        self.now += self.fixed + self.per_image * len(batch)


def test_measure_gpu_like_times_every_size_alternating_with_the_one_below() -> None:
    model = CostedModel(fixed=0.010, per_image=0.0001)  # a launch cost that batching spreads
    table = measure(model.run, (4, 4, 1), [1, 2, 4], stop_early=True, repeats=2, clock=model.clock)
    # Each size: one untimed run, then timed runs alternating with the size below it.
    assert model.runs == [1, 1, 1, 2, 1, 2, 1, 2, 4, 2, 4, 2, 4]
    assert table == pytest.approx({1: 1 / 0.0101, 2: 2 / 0.0102, 4: 4 / 0.0104})
    assert choose_max_batch_size(table) == 4


def test_measure_cpu_like_stops_at_the_first_size_that_does_not_pay() -> None:
    model = CostedModel(fixed=0.0, per_image=0.003)  # cost grows with the batch: no gain
    table = measure(model.run, (4, 4, 1), [1, 2, 4, 8], stop_early=True, repeats=2, clock=model.clock)
    assert sorted(table) == [1, 2] and 4 not in model.runs and 8 not in model.runs
    assert choose_max_batch_size(table) == 1


def test_measure_without_stopping_early_times_every_size() -> None:
    model = CostedModel(fixed=0.0, per_image=0.003)
    table = measure(model.run, (4, 4, 1), [1, 2, 4, 8], stop_early=False, repeats=1, clock=model.clock)
    assert sorted(table) == [1, 2, 4, 8]


def test_policy_says_why() -> None:
    auto = BatchPolicy("auto", 8, 1, CPU_LIKE)
    assert "batch 2" in auto.reason and "-1.3%" in auto.reason
    assert BatchPolicy("auto", 8, 8, GPU_LIKE).reason.startswith("images/s rose")
    assert BatchPolicy("fixed", 8, 8, CPU_LIKE).reason.endswith("(auto would choose 1)")
    assert BatchPolicy("fixed", 1, 1).reason.endswith("nothing to choose")
    described = auto.describe()
    assert described["policy"] == "auto" and described["max_batch_size"] == 1
    assert described["configured_max_batch_size"] == 8 and described["warmup_images_per_s"]["8"] == 42.2
