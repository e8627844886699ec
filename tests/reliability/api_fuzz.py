"""API fuzzing: schemathesis against the service's own OpenAPI schema, on a real server on loopback.

Checks: all of schemathesis' (no 5xx, status codes, content types, headers and bodies as the schema
documents them, invalid input rejected, authentication enforced) except `positive_data_acceptance`, which
expects a 2xx for any schema-valid body: a schema can say "binary PNG" but not "a PNG that decodes", so
random bytes are rightly answered 400/415. Our own check (tests.reliability.api_checks) adds: every 4xx/5xx
is an RFC 9457 problem, or under /v2 the Open Inference Protocol's `{"error": "..."}`. The server runs with an API key, which the fuzzer sends, so the auth checks have
something to test. Every request and answer is recorded (HAR) and recounted here, independently of
schemathesis' verdict.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from service.api.problems import is_v2
from tests.reliability.harness import ROOT

API_KEY = "reliability-fuzz-key"
SERVER_ENV = {"CXR_API_KEYS": API_KEY}
PROBLEM_JSON = "application/problem+json"


@dataclass
class ApiFigures:
    max_examples: int = 0
    seed: int = 0
    exit_code: int = -1
    seconds: float = 0.0
    operations: int = 0
    test_cases: int = 0
    requests: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    server_errors: int = 0  # 5xx
    errors_not_problem_json: int = 0  # or, under /v2, not the protocol's JSON error body
    failures: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    output_tail: str = ""

    def problems(self) -> list[str]:
        found = list(self.failures)
        if self.exit_code != 0:
            found.append(f"schemathesis exited {self.exit_code}:\n{self.output_tail}")
        if self.server_errors:
            found.append(f"{self.server_errors} 5xx answers")
        if self.errors_not_problem_json:
            found.append(f"{self.errors_not_problem_json} errors not answered as {PROBLEM_JSON} (/v2: JSON)")
        if not self.requests:
            found.append("no request was made")
        return found

    def as_dict(self) -> dict[str, Any]:
        return {key: value for key, value in self.__dict__.items() if key != "output_tail"}


def _content_type(entry: dict[str, Any]) -> str:
    for header in entry["response"]["headers"]:
        if header["name"].lower() == "content-type":
            return str(header["value"])
    return ""


def _error_format_ok(entry: dict[str, Any]) -> bool:
    expected = "application/json" if is_v2(urlsplit(entry["request"]["url"]).path) else PROBLEM_JSON
    return _content_type(entry).startswith(expected)


def run(
    url: str,
    report_dir: Path,
    *,
    max_examples: int,
    seed: int,
    timeout_s: float = 900,
    path_regex: str | None = None,
    model: str | None = None,
) -> ApiFigures:
    """`schemathesis run` against `url` (a server started with SERVER_ENV), on the operations whose path
    matches `path_regex` (default: all), with every model path parameter set to `model` when given
    (default: generated); figures from its reports."""
    figures = ApiFigures(max_examples=max_examples, seed=seed)
    report_dir.mkdir(parents=True, exist_ok=True)
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "run",
        f"{url}/openapi.json",
        "--checks",
        "all",
        "--exclude-checks",
        "positive_data_acceptance",
        "--max-examples",
        str(max_examples),
        "--seed",
        str(seed),
        "--workers",
        "1",  # the 2 cores are shared with the server under test
        "--no-color",
        "--header",
        f"X-API-Key: {API_KEY}",
        "--request-timeout",
        "30",
        "--report",
        "json,har",
        "--report-json-path",
        str(report_dir / "run.json"),
        "--report-har-path",
        str(report_dir / "requests.har"),
        *(["--include-path-regex", path_regex] if path_regex else []),
    ]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.reliability.api_checks", "PYTHONPATH": str(ROOT)}
    env.pop("CXR_FUZZ_MODEL", None)
    env.update({"CXR_FUZZ_MODEL": model} if model else {})
    started = time.monotonic()
    done = subprocess.run(
        command, cwd=report_dir, env=env, capture_output=True, text=True, timeout=timeout_s, check=False
    )
    figures.seconds = time.monotonic() - started
    figures.exit_code = done.returncode
    figures.output_tail = (done.stdout + done.stderr)[-6000:]
    report_path = report_dir / "run.json"
    if report_path.exists():
        report = json.loads(report_path.read_text())
        figures.operations = int(report["operations"].get("tested", report["operations"].get("total", 0)))
        figures.test_cases = int(report["test_cases"].get("generated", 0))
        figures.failures = [json.dumps(failure)[:2000] for failure in report["failures"]]
        figures.failures += [json.dumps(error)[:2000] for error in report["errors"]]
        figures.warnings = [
            f"{kind}: {', '.join(map(str, operations))}"
            for kind, operations in sorted(report["warnings"].items())
            if operations
        ]
    har_path = report_dir / "requests.har"
    if har_path.exists():
        entries = json.loads(har_path.read_text())["log"]["entries"]
        statuses: Counter[str] = Counter()
        for entry in entries:
            status = int(entry["response"]["status"])
            statuses[str(status)] += 1
            figures.server_errors += status >= 500
            figures.errors_not_problem_json += status >= 400 and not _error_format_ok(entry)
        figures.requests = len(entries)
        figures.statuses = dict(sorted(statuses.items()))
    return figures
