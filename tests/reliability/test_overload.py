"""Overload and recovery against a real `cxr serve` (bounded: ~15 s). The report runs it longer."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability import overload
from tests.reliability.harness import running, tiny_model_dir

pytestmark = pytest.mark.slow


def test_four_times_peak_answers_only_2xx_or_503_within_deadline_and_memory_then_recovers(
    tmp_path: Path,
) -> None:
    with running(
        tiny_model_dir(tmp_path),
        tmp_path / "server.log",
        *overload.SERVER_FLAGS,
        delay_s=overload.BATCH_DELAY_S,
    ) as service:
        figures = overload.run(service, factor=4.0, duration_s=5.0, measure_s=2.5)
        log = service.output()
    assert figures.problems(throughput=False) == [], figures.as_dict()
    assert figures.statuses.get("503", 0) > 0  # the overload was real: the queue bound was reached
    assert figures.statuses.get("200", 0) > 0  # and the model kept working meanwhile
    # How close to the peak it worked, and recovered, is a figure for the report (scripts.reliability_report)
    # and the benchmark: this suite may share its cores with other work.
    assert "Traceback" not in log
