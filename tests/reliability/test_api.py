"""API fuzzing (bounded) with schemathesis against the service's own OpenAPI schema on a real server.

The long run is `python -m scripts.reliability_report` (docs/reliability.md)."""

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


V2_EXAMPLES = 25
"""~20 s for the 11 /v2 operations: more examples per operation than the whole-API run gives them."""


def test_v2_schema_fuzzing_finds_no_5xx_and_only_the_protocols_error_bodies(tmp_path: Path) -> None:
    """JSON and binary-extension bodies, header lengths and paths generated from the /v2 schema: the body
    parser must answer each with 4xx `{"error": ...}` or 200, never a 500."""
    with running(
        tiny_model_dir(tmp_path), tmp_path / "server.log", "--log-level", "warning", env=api_fuzz.SERVER_ENV
    ) as service:
        figures = api_fuzz.run(
            service.url,
            tmp_path / "schemathesis",
            max_examples=V2_EXAMPLES,
            seed=19,
            path_regex="^/v2",
            model="tiny",
        )
        log = service.output()
    assert figures.problems() == [], figures.output_tail
    assert figures.operations >= 10 and figures.requests >= 200
    assert figures.server_errors == 0
    assert figures.statuses.get("400", 0) > 0 and figures.statuses.get("200", 0) > 0
    assert "Traceback" not in log and api_fuzz.API_KEY not in log
