"""The acceptance checks computed from results: ratios, 'not measured' for a target that did not run, and
the overload rules (statuses, deadline, memory, recovery)."""

from __future__ import annotations

from typing import Any

from loadtest.bench_report import acceptance, beside_floor_paragraph


def _run(
    target: str, mode: str, level: float, rate: float, p50: float = 50.0, p99: float = 90.0
) -> dict[str, Any]:
    return {
        "target": target,
        "mode": mode,
        "level": level,
        "images_per_s": rate,
        "p50_ms": p50,
        "p99_ms": p99,
    }


def _results(**overrides: Any) -> dict[str, Any]:
    results: dict[str, Any] = {
        "limit": {"images_per_s": 50.0},
        "settings": {"open_fractions_of_service_peak": [0.5, 0.7]},
        "runs": [
            _run("service", "closed", 1, 20.0, p50=40.0),
            _run("service", "closed", 16, 47.0),
            _run("service", "open", 23.5, 23.5, p99=100.0),
            _run("service", "open", 32.9, 32.9, p99=110.0),
            _run("naive", "closed", 16, 30.0),
        ],
        "overload": {
            "statuses_all": ["200", "503"],
            "only_2xx_503_429": True,
            "max_request_s": 2.5,
            "deadline_s": 10.0,
            "rss_mib": {"before": 300.0, "max_first_half": 500.0, "max_second_half": 505.0},
            "recovery": {"images_per_s": 46.0},
        },
    }
    results.update(overrides)
    return results


def test_acceptance_from_one_run() -> None:
    checks = {check["check"].split(" (")[0]: check for check in acceptance(_results())}
    assert checks["service peak / in-process limit"] == {
        "check": "service peak / in-process limit", "value": 0.94, "required": ">= 0.85", "pass": True
    }  # fmt: skip
    assert checks["service peak / best peer"]["pass"] is None  # no peer ran: not measured, not passed
    assert checks["service peak / naive baseline"]["pass"] is True  # 47 / 30 = 1.57
    latency = checks["p99 at 70 % of peak / single-request latency"]
    assert latency["pass"] is True and latency["value"].startswith("2.75 ")  # 110 ms / 40 ms
    assert [check["check"] for check in checks.values() if check["pass"] is False] == []


def test_the_limit_check_is_the_median_of_back_to_back_pairs_when_the_run_has_them() -> None:
    results = _results()
    results["limit"]["images_per_s"] = 58.0  # a fast early round: best against best would be 47 / 58 = 0.81
    for service, limit in ((45.6, 48.0), (44.0, 54.0), (40.0, 50.0)):  # ratios 0.95, 0.81, 0.80
        results["runs"].append(
            {**_run("service", "closed", 16, service), "repeat": True, "paired_limit": limit}
        )
    checks = acceptance(results)
    paired = next(check for check in checks if check["check"].startswith("service peak / in-process limit"))
    assert "median of 3 back-to-back pairs" in paired["check"]
    assert paired["value"] == 0.815 and paired["pass"] is False  # the middle ratio, 44 / 54, below 0.85
    best = next(check for check in checks if "best service level / best limit round" in check["check"])
    assert best["value"] == round(47.0 / 58.0, 3) and best["pass"] == "info"


def test_a_repeat_without_a_paired_limit_leaves_the_best_against_best_check() -> None:
    results = _results()
    results["runs"].append({**_run("service", "closed", 16, 45.6), "repeat": True, "paired_limit": None})
    checks = [check for check in acceptance(results) if "in-process limit" in check["check"]]
    assert [check["check"] for check in checks] == ["service peak / in-process limit"]


def test_a_slow_tail_growing_memory_and_no_recovery_fail() -> None:
    results = _results()
    results["runs"][3]["p99_ms"] = 130.0  # 3.25x the single-request latency
    results["overload"]["rss_mib"]["max_second_half"] = 900.0
    results["overload"]["recovery"]["images_per_s"] = 10.0
    results["overload"]["max_request_s"] = 12.0
    failed = {check["check"].split(" (")[0] for check in acceptance(results) if check["pass"] is False}
    assert failed == {
        "p99 at 70 % of peak / single-request latency",
        "2x peak: longest request",
        "2x peak: memory bounded",
        "after overload: throughput / peak",
    }


def test_a_service_that_served_nothing_fails_rather_than_going_unmeasured() -> None:
    results = _results()
    results["runs"][1]["images_per_s"] = results["runs"][0]["images_per_s"] = 0.0
    checks = {check["check"]: check for check in acceptance(results)}
    assert checks["service peak / in-process limit"]["pass"] is False


def test_recovery_compares_with_the_level_measured_just_before_the_overload() -> None:
    results = _results()  # the peak (best window) is 47 images/s
    results["overload"]["before"] = {"level": 16, "images_per_s": 41.0}
    results["overload"]["recovery"]["images_per_s"] = 38.0  # 0.81 of the peak, 0.93 of the level before
    check = next(c for c in acceptance(results) if c["check"].startswith("after overload"))
    assert check["check"] == "after overload: throughput / the same level just before it"
    assert check["value"] == round(38.0 / 41.0, 3) and check["pass"] is True
    results["overload"]["recovery"]["images_per_s"] = 33.0  # 0.80 of the level before: not recovered
    check = next(c for c in acceptance(results) if c["check"].startswith("after overload"))
    assert check["pass"] is False


def test_the_limit_beside_the_floor_is_the_median_of_its_pairs() -> None:
    pairs: list[dict[str, Any]] = [
        {"alone": 48.0, "beside": 44.0, "floor_cpu_ms": {"event loop thread": 2.6, "load generator": 0.7}},
        {"alone": 47.0, "beside": 45.5, "floor_cpu_ms": {"event loop thread": 2.7, "load generator": 0.8}},
        {"alone": 47.5, "beside": 44.5, "floor_cpu_ms": {"event loop thread": 2.5, "load generator": 0.6}},
    ]
    ratio = sorted(b["beside"] / b["alone"] for b in pairs)[1]
    measured = {
        "configuration": "service budget, batch 1",
        "fraction": 0.95,
        "offered_requests_per_s": 45.0,
        "pairs": pairs,
        "ratio": ratio,
    }
    check = next(
        c for c in acceptance(_results(beside_floor=measured)) if "beside the HTTP floor" in c["check"]
    )
    assert check["value"] == round(ratio, 3) and check["pass"] == "info"
    assert "44.0/48.0, 45.5/47.0, 44.5/47.5" in check["check"]
    paragraph = " ".join(beside_floor_paragraph(measured))
    assert "2.6 ms of event loop CPU and the load generator 0.7 ms" in paragraph
    assert f"it kept {ratio:.3f} of its rate alone" in paragraph and "Not a bound" in paragraph
    # Results from before this was measured: no row, no paragraph.
    assert not [c for c in acceptance(_results()) if "beside the HTTP floor" in c["check"]]
    assert beside_floor_paragraph(None) == []
