"""API fuzzing (bounded) with schemathesis against the service's own OpenAPI schema on a real server.

The long run is `python -m tests.reliability.report` (docs/reliability.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability import api_fuzz
from tests.reliability.harness import running, tiny_model_dir

pytestmark = pytest.mark.slow

CI_EXAMPLES = 15
"""~10 s for the 13 operations here (coverage, fuzzing and stateful phases)."""


def test_schema_fuzzing_finds_no_5xx_no_schema_violation_and_only_problem_json_errors(tmp_path: Path) -> None:
    with running(
        tiny_model_dir(tmp_path), tmp_path / "server.log", "--log-level", "warning", env=api_fuzz.SERVER_ENV
    ) as service:
        figures = api_fuzz.run(service.url, tmp_path / "schemathesis", max_examples=CI_EXAMPLES, seed=8)
        log = service.output()
    assert figures.problems() == [], figures.output_tail
    assert figures.operations >= 13 and figures.requests >= 200
    assert figures.statuses.get("200", 0) > 0 and figures.statuses.get("401", 0) > 0  # auth was exercised
    assert "Traceback" not in log and api_fuzz.API_KEY not in log
