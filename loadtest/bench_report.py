"""results.json -> the acceptance checks, docs/benchmarks.md and the throughput-vs-p99 plot.

Everything in the document comes from the results of one run; it says so at the top, and is rewritten
whole by every `cxr bench` (never edited by hand).
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

PLOT = "benchmarks-throughput-p99.png"
_NAMES = {
    "service": "cxr service (defaults)",
    "service-b1": "cxr service (max batch 1)",
    "naive": "naive FastAPI baseline",
    "naive-service-decoder": "naive FastAPI + the service's decoder",
    "peer": "Ray Serve @serve.batch",
    "litserve": "LitServe (the service's decoder)",
    "litserve-pillow": "LitServe (Pillow decoder)",
    "bentoml": "BentoML (the service's decoder)",
    "bentoml-pillow": "BentoML (Pillow decoder)",
    "pytriton": "Triton/PyTriton (the service's decoder)",
    "pytriton-pillow": "Triton/PyTriton (Pillow decoder)",
}
_PEERS = ("peer", "litserve", "litserve-pillow", "bentoml", "bentoml-pillow", "pytriton", "pytriton-pillow")
"""The peer frameworks; the acceptance check compares the service with the best of those measured."""
_DEADLINE_SLACK_S = 0.5
"""The client sees the deadline plus upload and response time; past this much more, a request outlived it."""


def peak_run(runs: list[dict[str, Any]], target: str) -> dict[str, Any] | None:
    closed = [r for r in runs if r["target"] == target and r["mode"] == "closed"]
    return max(closed, key=lambda r: r["images_per_s"]) if closed else None


def _ratio(check: str, numerator: float | None, denominator: float | None, minimum: float) -> dict[str, Any]:
    if numerator is None or not denominator:  # a target that was not run (a 0 from one that ran fails)
        return {"check": check, "value": None, "required": f">= {minimum}", "pass": None}
    value = numerator / denominator
    return {"check": check, "value": round(value, 3), "required": f">= {minimum}", "pass": value >= minimum}


def _pairs(results: dict[str, Any]) -> list[tuple[float, float]]:
    """(service, limit) images/s of each service repeat that had the limit measured right before it."""
    return [
        (r["images_per_s"], r["paired_limit"])
        for r in results["runs"]
        if r["target"] == "service" and r.get("repeat") and r.get("paired_limit")
    ]


LIMIT_RATIO = 0.85


def _limit_check(results: dict[str, Any], service_peak: float | None) -> list[dict[str, Any]]:
    """The service/limit check: the median of the back-to-back pairs' ratios when the run has pairs (a
    drift in the shared machine's speed between the limit's best round and the service's best level then
    stays out of the ratio), else the best against the best. The other form is shown for information.

    The bar is 0.85: on 2 shared cores, receiving a 2.5 MB body over HTTP and the load generator itself take
    about a tenth of the per-image CPU, and this project does not chase the rest through its dependencies'
    private code."""
    best = _ratio(
        "service peak / in-process limit", service_peak, results["limit"]["images_per_s"], LIMIT_RATIO
    )
    pairs = _pairs(results)
    if not pairs:
        return [best]
    median = statistics.median(service / limit for service, limit in pairs)
    shown = ", ".join(f"{service:.1f}/{limit:.1f}" for service, limit in pairs)
    return [
        {
            "check": f"service peak / in-process limit (median of {len(pairs)} back-to-back pairs; service/limit "
            f"images/s: {shown})",
            "value": round(median, 3),
            "required": f">= {LIMIT_RATIO}",
            "pass": median >= LIMIT_RATIO,
        },
        {
            **best,
            "check": "(for information) best service level / best limit round over the whole run",
            "required": "none",
            "pass": "info",
        },
    ]


def _p99_against_peers(runs: list[dict[str, Any]], at70: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The service's p99 at 70 % of its peak against each peer's at the same arrival rate (every target's
    open loop runs at the same rates): the best (lowest) peer's is the bar. A peer that answered less than
    99 % of that level correctly is not the bar (its p99 is over the few it answered)."""
    if not at70 or at70["p99_ms"] is None:
        return []
    rate = at70["level"]
    candidates = [
        (r["p99_ms"], r["target"])
        for r in runs
        if r["target"] in _PEERS
        and r["mode"] == "open"
        and abs(r["level"] - rate) <= 1e-6 * max(rate, 1.0)
        and r["p99_ms"] is not None
        and r["error_rate"] <= 0.01
    ]
    if not candidates:
        return []
    best_p99, best = min(candidates)
    return [
        {
            "check": f"p99 at 70 % of the service's peak ({rate:.1f} requests/s): service / best peer "
            f"({_NAMES.get(best, best)})",
            "value": f"{at70['p99_ms'] / best_p99:.2f} ({at70['p99_ms']:.0f} ms / {best_p99:.0f} ms)",
            "required": "<= 1",
            "pass": at70["p99_ms"] <= best_p99,
        }
    ]


def _best_peer(peak: dict[str, float | None]) -> float | None:
    measured = [rate for name in _PEERS if (rate := peak.get(name)) is not None]
    return max(measured) if measured else None


def acceptance(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's acceptance checks from one run's results; `pass` is None when not measured."""
    runs = results["runs"]
    peak = {name: (peak_run(runs, name) or {}).get("images_per_s") for name in _NAMES}
    checks = [
        *_limit_check(results, peak["service"]),
        *_beside_floor_check(results.get("beside_floor")),
        _ratio("service peak / best peer", peak["service"], _best_peer(peak), 1.0),
        _ratio("service peak / naive baseline", peak["service"], peak["naive"], 1.5),
    ]
    if peak["naive-service-decoder"]:
        # Not an acceptance check: it separates the serving design's share of the gain from the decoder's.
        share = peak["service"] / peak["naive-service-decoder"] if peak["service"] else None
        checks.append(
            {
                "check": "(for information) service peak / naive app with the service's decoder",
                "value": round(share, 3) if share is not None else None,
                "required": "none",
                "pass": "info",
            }
        )
    single = next(
        (r for r in runs if r["target"] == "service" and r["mode"] == "closed" and r["level"] == 1), None
    )
    fractions = results["settings"]["open_fractions_of_service_peak"]
    open_runs = [r for r in runs if r["target"] == "service" and r["mode"] == "open"]
    at70 = open_runs[fractions.index(0.7)] if 0.7 in fractions and len(open_runs) == len(fractions) else None
    if single and at70 and single["p50_ms"] and at70["p99_ms"]:
        value = at70["p99_ms"] / single["p50_ms"]
        checks.append(
            {
                "check": "p99 at 70 % of peak / single-request latency (p50 at 1 client)",
                "value": f"{value:.2f} ({at70['p99_ms']:.0f} ms / {single['p50_ms']:.0f} ms)",
                "required": "<= 3",
                "pass": value <= 3.0,
            }
        )
    checks += _p99_against_peers(runs, at70)
    checks += _perf_analyzer_check(results.get("perf_analyzer"))
    overload = results.get("overload") or {}
    if overload:
        rss = overload["rss_mib"]
        bounded = rss["max_second_half"] <= rss["max_first_half"] * 1.05 + 16
        # Older results.json files have no level measured right before the overload: those use the peak.
        before = overload.get("before")
        reference = before["images_per_s"] if before else peak["service"]
        recovered = overload["recovery"]["images_per_s"] / reference if reference else 0.0
        checks += [
            {
                "check": "2x peak: only 2xx, 503 and 429",
                "value": ", ".join(overload["statuses_all"]),
                "required": "200, 503, 429",
                "pass": overload["only_2xx_503_429"],
            },
            {
                "check": "2x peak: longest request (s)",
                "value": round(overload["max_request_s"], 2),
                "required": f"<= deadline {overload['deadline_s']:g} s",
                "pass": overload["max_request_s"] <= overload["deadline_s"] + _DEADLINE_SLACK_S,
            },
            {
                "check": "2x peak: memory bounded (MiB, 1st -> 2nd half)",
                "value": f"{rss['max_first_half']:.0f} -> {rss['max_second_half']:.0f}",
                "required": "no growth",
                "pass": bounded,
            },
            {
                "check": "after overload: throughput / the same level just before it"
                if before
                else "after overload: throughput / peak",
                "value": round(recovered, 3),
                "required": ">= 0.9",
                "pass": recovered >= 0.9,
            },
        ]
    return checks


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}" if value >= 10 else f"{value:.1f}"


def _table(runs: list[dict[str, Any]], mode: str) -> list[str]:
    level = "clients" if mode == "closed" else "offered req/s"
    lines = [
        f"| target | {level} | images/s | p50 ms | p95 ms | p99 ms | errors | statuses | load (1 min) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run in (r for r in runs if r["mode"] == mode):
        statuses = ", ".join(f"{code}: {count}" for code, count in run["statuses"].items())
        lines.append(
            f"| {_NAMES.get(run['target'], run['target'])} | {run['level']:g}{' (again)' if run.get('repeat') else ''}"
            f" | {run['images_per_s']:.1f} | "
            f"{_ms(run['p50_ms'])} | {_ms(run['p95_ms'])} | {_ms(run['p99_ms'])} | "
            f"{100 * run['error_rate']:.1f} % | {statuses} | {run.get('load_1min', 0.0):.1f} |"
        )
    return lines


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display: the benchmark runs headless
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5), dpi=110)
    for index, target in enumerate(_NAMES):
        colour = f"C{index}"
        for mode, style in (("closed", "-o"), ("open", "--s")):
            points = [
                r
                for r in results["runs"]
                if r["target"] == target and r["mode"] == mode and r["p99_ms"] and not r.get("repeat")
            ]
            if points:
                label = f"{_NAMES[target]} ({'closed loop' if mode == 'closed' else 'open loop'})"
                axes.plot(
                    [p["images_per_s"] for p in points],
                    [p["p99_ms"] for p in points],
                    style,
                    color=colour,
                    label=label,
                    markersize=4,
                )
    axes.axvline(results["limit"]["images_per_s"], color="grey", linestyle=":", label="in-process limit")
    axes.set_xlabel("throughput (images/s)")
    axes.set_ylabel("p99 latency (ms, log)")
    axes.set_yscale("log")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=7)
    axes.set_title(
        f"{results['model']['name']} v{results['model']['version']}, {results['host']['cores']} cores"
    )
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def _pass(value: bool | None) -> str:
    return {True: "pass", False: "**FAIL**", None: "not measured", "info": "information"}[value]


def write(results: dict[str, Any], out_dir: Path) -> Path:
    """Write benchmarks.md and the plot into `out_dir`; returns the document's path."""
    plot(results, out_dir / PLOT)
    lines = [
        *_header(results),
        *_machine_section(results),
        *_acceptance_section(results),
        *_limit_section(results),
        "## Closed loop (concurrency sweep)",
        "",
        *_table(results["runs"], "closed"),
        "",
        "## Open loop (fixed arrival rates)",
        "",
        *_table(results["runs"], "open"),
        "",
        *_variants_section(results["runs"]),
        *peers_section(results.get("peers") or {}),
        *_overload_section(results.get("overload") or {}),
        *perf_analyzer_section(results.get("perf_analyzer")),
        "## GPU",
        "",
        *_gpu_section(results["gpu"]),
        "",
        *_TARGETS_SECTION,
    ]
    path = out_dir / "benchmarks.md"
    path.write_text("\n".join(lines))
    return path


def _header(results: dict[str, Any]) -> list[str]:
    """Title, provenance and the research-use line."""
    return [
        "# Benchmarks",
        "",
        "<!-- Generated by `cxr bench` (loadtest/benchmark.py) from results.json. Do not edit by hand: rerun it. -->",
        "",
        f"Generated {results['generated']} by `{results['command']}`."
        + (
            " **Quick smoke run: durations of about a second, not a measurement.**"
            if results["quick"]
            else ""
        ),
        "Research use only: these figures are about serving speed, not diagnostic performance. Earlier runs, and "
        "what was tried and dropped: [benchmark-history.md](benchmark-history.md).",
        "",
    ]


def _machine_section(results: dict[str, Any]) -> list[str]:
    """The machine, model, images, the service's settings and how load was offered."""
    host, model = results["host"], results["model"]
    settings = results["settings"]["service"]
    return [
        "## Machine and model",
        "",
        f"- CPU: {host['cpu']}, {host['cores']} cores, {host['memory_gib']} GiB; {host['os']}; Python {host['python']}",
        f"- Load average (1, 5, 15 min) at the start: {', '.join(f'{v:.2f}' for v in host['load_average_at_start'])}; "
        f"at the end: {', '.join(f'{v:.2f}' for v in host.get('load_average_at_end', []))}; highest 1-minute "
        f"figure after a load level: {max((r.get('load_1min', 0.0) for r in results['runs']), default=0.0):.2f} "
        "(the run itself adds about 2.5; more means other processes took CPU from the figures below)",
        f"- ONNX Runtime {host['onnxruntime']}; providers used: {', '.join(model['providers'])}; precision FP32",
        f"- Model: {model['name']} v{model['version']} (sha256 {model['sha256'][:16]}...), input {model['input']['shape']}",
        f"- Images: {results['images']['count']} files ({', '.join(results['images']['formats'])}), sizes "
        f"{', '.join(results['images']['sizes'])}, mean {results['images']['bytes_mean'] / 1e6:.2f} MB; sent round-robin",
        f"- Service settings (the defaults): max batch {settings['max_batch_size']}"
        + (f", batch policy {settings['batch_policy']}" if "batch_policy" in settings else "")
        + f", max queue delay "
        f"{settings['max_queue_delay_ms']:g} ms, queue capacity {settings['queue_capacity']}, deadline "
        f"{settings['request_timeout_s']:g} s, {settings['intra_op_threads']} intra-op thread, "
        f"{settings['decode_workers']} decode worker(s); log level info"
        + "".join(
            f"; {name.replace('_', ' ')} {settings[name]}"
            for name in ("malloc_retain_mib",)
            if name in settings  # results.json files from before these settings lack them
        ),
        *_batching_line(results.get("batching") or {}),
        f"- Load: closed loop at {results['settings']['concurrency']} clients, open loop at "
        f"{results['settings']['open_fractions_of_service_peak']} x the service's closed-loop peak (fixed arrival "
        f"times; latency from the scheduled time); {results['settings']['warmup_s']:g} s warm-up, "
        f"{results['settings']['duration_s']:g} s measured per level. Latency percentiles are over correct answers; "
        "a wrong or malformed answer counts as an error. Every target's best closed-loop level is measured "
        f"{results['settings'].get('pairs', 1)} more time(s) (`again` in the tables; each of the service's next to a "
        "round of the in-process limit, alternately before and after) and its peak is the best of those, as the "
        "in-process limit is the best of its rounds.",
        "",
    ]


def _acceptance_section(results: dict[str, Any]) -> list[str]:
    """The acceptance checks as a table, then the throughput-vs-p99 plot."""
    return [
        "## Acceptance",
        "",
        "| check | value | required | result |",
        "|---|---|---|---|",
        *[
            f"| {c['check']} | {c['value'] if c['value'] is not None else '-'} | {c['required']} | {_pass(c['pass'])} |"
            for c in results["acceptance"]
        ],
        "",
        f"![throughput vs p99]({PLOT})",
        "",
    ]


def _limit_section(results: dict[str, Any]) -> list[str]:
    """Where the time goes, the CPU figures and the in-process limit with its optimizations."""
    limit = results["limit"]
    return [
        "## Where the time goes (one image, one thread, median)",
        "",
        "| stage | ms per image |",
        "|---|---|",
        *[f"| {stage} | {ms:.2f} |" for stage, ms in limit["stages_ms"].items()],
        "",
        *_cpu_section(results, results["host"]["cores"]),
        "## In-process limit and optimizations",
        "",
        "Decode + preprocess + ONNX Runtime in a tight loop, no HTTP. The first rows use the service's thread "
        "budget (the limit is the best of them); the others undo one optimization each. Each figure is the best "
        "of interleaved rounds, each as long as one load level, run before the HTTP targets.",
        "",
        "| configuration | decode threads | intra-op threads | batch | images/s |",
        "|---|---|---|---|---|",
        *[
            f"| {v['name']} | {v['decode_workers'] or 'same thread'} | {v['intra_op_threads']} | {v['batch_size']} | {v['images_per_s']:.1f} |"
            for v in limit["variants"]
        ],
        "",
        *(
            [
                "Rounds paired with the service's repeats (the acceptance pairs): "
                + ", ".join(f"{p['images_per_s']:.1f}" for p in limit["paired"])
                + f" images/s ({limit['paired'][0]['configuration']}).",
                "",
            ]
            if limit.get("paired")
            else []
        ),
    ]


_TARGETS_SECTION = [
    "## Targets",
    "",
    "- cxr service: `cxr serve` (uvicorn, one process) with the settings above (and max batch 1 for the "
    "`service-b1` target, when a run names it).",
    "- naive baseline: loadtest/naive_app.py, a synchronous FastAPI route that decodes the whole image with "
    "Pillow, applies the model's preprocessing (OnnxModel.prepare) and calls `session.run` per request on a "
    "default ONNX Runtime session (no batching, no queue bound).",
    "- naive + the service's decoder: the same app with CXR_NAIVE_DECODE=service (service.imaging.decode, DCT-reduced "
    "JPEG decoding): the service's gain over it is the serving design's share alone.",
    "- Ray Serve: loadtest/peer_ray.py, one replica with `@serve.batch` (same max batch and wait), decoding "
    "and inference on their own threads, the same intra-op thread count.",
    "- LitServe and BentoML: loadtest/peer_litserve.py and loadtest/peer_bentoml.py, each in a virtual "
    "environment of its own (loadtest/peers.py), with the service's decoder and (the `-pillow` targets) Pillow's; "
    "each set up as its documentation recommends on a CPU and given the best of the settings in the Peers section.",
    "- Triton (PyTriton 0.7, Triton server 2.51): loadtest/peer_pytriton_image.py, the film posted as a BYTES "
    "tensor (Triton's binary tensor extension) to `/v2/models/cxr-image/infer`, Triton's dynamic batcher "
    "(preferred batches up to the maximum, 2 ms queue delay, requests past the deadline rejected) in front of "
    "one bound inference callable per model instance doing the same decode, preparation and ONNX Runtime call; "
    "its environment has numpy<2 (PyTriton's requirement), so OpenCV 4 rather than the benchmark's OpenCV 5 "
    "(OpenCV 5 needs numpy 2): its `service decoder` runs the service's code on an older OpenCV.",
    "- HTTP floor: loadtest/floor_app.py under uvicorn's defaults, an ASGI app that reads the body and "
    "answers a fixed JSON, measured once at the service's peak client count for its CPU time per request; and beside the "
    "limit's pipeline (`python -m loadtest.limit`, a process of its own), offered an open loop.",
    "- Load generator: loadtest/loadgen.py (a minimal kept-alive HTTP/1.1 client, loadtest/httpclient.py, on uvloop) in the benchmark process, on the same machine.",
    "",
]
"""What each target is, as the report states it."""


def _batching_line(batching: dict[str, Any]) -> list[str]:
    """What the service's batch policy chose at warm-up, from the figures it measured."""
    if not batching:
        return []
    figures = ", ".join(f"{size}: {rate:g}" for size, rate in batching["warmup_images_per_s"].items())
    return [
        f"- Batch policy chosen by the service at warm-up: {batching['policy']}, batches up to "
        f"{batching['max_batch_size']} of at most {batching['configured_max_batch_size']} "
        f"({batching['reason']}); warm-up images/s by batch size: {figures or 'not timed'}"
    ]


def _cpu_section(results: dict[str, Any], cores: int) -> list[str]:
    """CPU time per request at each service's peak: what the HTTP path adds to the pipeline above, and the
    HTTP floor (loadtest/floor_app.py) for scale."""
    rows = [
        (_NAMES[target], peak)
        for target in ("service", "service-b1")
        if (peak := peak_run(results["runs"], target))
    ]
    floor = results.get("http_floor")
    if floor:
        rows.append(("HTTP floor: uvicorn + an app that only reads the body", floor))
    rows = [(name, run) for name, run in rows if run.get("cpu_ms")]
    if not rows:
        return []
    parts_names = list(rows[0][1]["cpu_ms"])
    lines = [
        "CPU time per request at the peak (all threads of the server, and the load generator on the same "
        "cores); the throughput those costs allow is cores x 1000 / total.",
        "",
        "| target | clients | "
        + " | ".join(f"{part} ms" for part in parts_names)
        + " | total ms | allows images/s |",
        "|---|---|" + "---|" * (len(parts_names) + 2),
    ]
    for name, run in rows:
        total = sum(run["cpu_ms"].values())
        parts = " | ".join(f"{run['cpu_ms'][part]:.1f}" for part in parts_names)
        allows = f"{cores * 1000 / total:.1f}" if total > 0 else "-"
        lines.append(f"| {name} | {run['level']:g} | {parts} | {total:.1f} | {allows} |")
    lines += beside_floor_paragraph(results.get("beside_floor"))
    return [*lines, ""]


def _beside_floor_check(measured: dict[str, Any] | None) -> list[dict[str, Any]]:
    """loadtest.sweeps.beside_floor as an information row; none for older results."""
    if not measured:
        return []
    shown = ", ".join(f"{pair['beside']:.1f}/{pair['alone']:.1f}" for pair in measured["pairs"])
    return [
        {
            "check": "(for information) the limit's pipeline in its own process beside the HTTP floor receiving "
            f"the films at {measured['fraction']:g} x the limit's images/s, over the same alone (median of "
            f"{len(measured['pairs'])} alternating pairs; beside/alone images/s: {shown})",
            "value": round(measured["ratio"], 3),
            "required": "none",
            "pass": "info",
        }
    ]


def beside_floor_paragraph(measured: dict[str, Any] | None) -> list[str]:
    """What receiving the films cost the limit's work (loadtest.sweeps.beside_floor), in words."""
    if not measured:
        return []
    pairs = measured["pairs"]
    loop = statistics.median(pair["floor_cpu_ms"]["event loop thread"] for pair in pairs)
    generator = statistics.median(pair["floor_cpu_ms"]["load generator"] for pair in pairs)
    return [
        "",
        "What receiving the films costs, measured: the limit's pipeline "
        f"({measured['configuration']}) in a process of its own, alone and beside the HTTP floor receiving the "
        f"same films at {measured['offered_requests_per_s']:.1f} requests/s ({measured['fraction']:g} x the "
        "limit's images/s, open loop), in alternating pairs: beside the floor it kept "
        f"{measured['ratio']:.3f} of its rate alone (median). At that rate the floor cost {loop:.1f} ms of event "
        f"loop CPU and the load generator {generator:.1f} ms per request. Not a bound on the service, which "
        "receives its films through the same uvicorn in one process with its work, at its own load pattern "
        "(what a request costs uvicorn depends on it: compare the floor's figure in the table above); a "
        "service/limit figure near this one says the service's own code adds little beyond receiving "
        "the films on these cores.",
    ]


def _variants_section(runs: list[dict[str, Any]]) -> list[str]:
    variants = [r for r in runs if r["mode"] == "variant"]
    if not variants:
        return []
    clients = variants[0]["level"]
    # Older results.json files have no paired defaults: those compare with the sweep's run at that load.
    sweep = next(
        (r for r in runs if r["target"] == "service" and r["mode"] == "closed" and r["level"] == clients),
        None,
    )
    lines = [
        "## Service settings, measured end to end",
        "",
        f"The service with one setting changed, closed loop at {clients:g} clients (the peak's). Each row is "
        "measured next to the defaults (a second service process with the default settings, alternately "
        "just before and just after it), and the ratio is against that measurement.",
        "",
        "| service | images/s | defaults next to it, images/s | vs defaults | p50 ms | p99 ms | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in variants:
        reference = run.get("paired_defaults") or (sweep["images_per_s"] if sweep else None)
        ratio = f"{run['images_per_s'] / reference:.2f}x" if reference else "-"
        lines.append(
            f"| {run['target'].removeprefix('service ')} | {run['images_per_s']:.1f} | "
            f"{f'{reference:.1f}' if reference else '-'} | {ratio} | {_ms(run['p50_ms'])} | "
            f"{_ms(run['p99_ms'])} | {100 * run['error_rate']:.1f} % |"
        )
    return [*lines, ""]


def _overload_section(overload: dict[str, Any]) -> list[str]:
    if not overload:
        return []
    summary, recovery, rss = overload["summary"], overload["recovery"], overload["rss_mib"]
    before = overload.get("before")
    ahead = (
        f"{before['level']:g} clients (the peak's) just before: {before['images_per_s']:.1f} images/s. "
        if before
        else ""
    )
    return [
        "## Overload",
        "",
        f"{ahead}Open loop at {overload['rate']:.1f} requests/s (2x the service's peak) for {summary['duration_s']:.0f} s: "
        f"{summary['images_per_s']:.1f} images/s classified, statuses {summary['statuses']}, "
        f"longest request {overload['max_request_s']:.2f} s (deadline {overload['deadline_s']:g} s), "
        f"p99 of answered requests {_ms(summary['p99_ms'])} ms. Server memory: {rss['before']:.0f} MiB before, "
        f"at most {rss['max_first_half']:.0f} MiB in the first half and {rss['max_second_half']:.0f} MiB in the second. "
        f"Then {recovery['level']:g} clients again: {recovery['images_per_s']:.1f} images/s.",
        "",
    ]


def _gpu_section(gpu: dict[str, Any]) -> list[str]:
    if "skipped" in gpu:
        return [f"Skipped: {gpu['skipped']}."]
    lines = [
        f"Providers: {', '.join(gpu['providers'])}.",
        "",
        "| batch | inference ms per image |",
        "|---|---|",
    ]
    lines += [
        f"| {name.split('batch ')[1].split(' ')[0]} | {ms:.3f} |"
        for name, ms in gpu["inference_ms_per_image"].items()
    ]
    lines += ["", "| pipeline | images/s |", "|---|---|"]
    lines += [f"| {name} | {rate:.1f} |" for name, rate in gpu["pipeline_images_per_s"].items()]
    return lines


def peers_section(peers: dict[str, Any]) -> list[str]:
    """Each peer of loadtest.peers: the settings tried and the one kept, or why it was skipped."""
    if not peers:
        return []
    lines = [
        "## Peers: settings tried, or why skipped",
        "",
        "Each setting closed loop at the highest client count, one window; the sweeps above use the best.",
        "",
        "| peer | setting | clients | images/s | p99 ms | errors | environment |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, info in peers.items():
        shown = _NAMES.get(name, name)
        if "skipped" in info:
            lines.append(f"| {shown} | **skipped**: {info['skipped']} | - | - | - | - | - |")
            continue
        created = info["environment_created_s"]
        environment = f"created in {created:.0f} s" if created else "cached"
        for tried in info["settings"]:
            if "skipped" in tried:
                lines.append(
                    f"| {shown} | {tried['setting']}: **did not start**: {tried['skipped']} | - | - | - | - | - |"
                )
                continue
            kept = " (kept)" if tried["setting"] == info["chosen"] else ""
            lines.append(
                f"| {shown} | {tried['setting']}{kept} | {tried['clients']} | {tried['images_per_s']:.1f} | "
                f"{_ms(tried['p99_ms'])} | {_errors(tried)} | {environment} |"
            )
    return [*lines, ""]


def _errors(measured: dict[str, Any]) -> str:
    """The error rate, and what the errors were (a setting that answers nothing right says why)."""
    kinds = ", ".join(f"{kind}: {count}" for kind, count in (measured.get("errors") or {}).items())
    return f"{100 * measured['error_rate']:.1f} %" + (f" ({kinds})" if kinds else "")


def _perf_analyzer_check(perf: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Every request perf_analyzer sent to /v2 answered 200, by the service's own counters."""
    if not perf:
        return []
    service = perf.get("service_v2") or {}
    counted = service.get("server_counted")
    if "skipped" in perf or "skipped" in service or not counted:
        why = perf.get("skipped") or service.get("skipped") or "no counts"
        return [{"check": "perf_analyzer on /v2: every request answered 200", "value": f"skipped: {why}",
                 "required": "only 200", "pass": None}]  # fmt: skip
    other = counted["other"]
    return [
        {
            "check": "perf_analyzer on /v2: every request answered 200",
            "value": f"{counted['ok']:.0f} x 200" + (f", others {other}" if other else ""),
            "required": f"only 200, >= {counted['sent_measured']} measured",
            "pass": bool(counted["pass"]),
        }
    ]


def perf_analyzer_section(perf: dict[str, Any] | None) -> list[str]:
    """perf_analyzer (Triton's load client, loadtest/perf.py) against /v2 and PyTriton, side by side per
    concurrency, with the servers' own count of what was answered; or why it was skipped."""
    if not perf:
        return []
    lines = ["## perf_analyzer: /v2 tensors, cxr serve vs Triton (PyTriton)", ""]
    if "skipped" in perf:
        return [*lines, f"Skipped: {perf['skipped']}.", ""]
    sweep = perf["sweep"]
    lines += [
        f"Concurrency {sweep['concurrency']}, {sweep['window_ms']} ms windows, up to {sweep['max_trials']} "
        f"per level, stable within {sweep['stability_percent']:g} %; input: {perf['input']}.",
        "",
    ]
    servers = {"service_v2": "cxr serve /v2", "pytriton": "PyTriton (Triton 2.51)"}
    for key, shown in servers.items():
        info = perf.get(key) or {}
        if "skipped" in info:
            lines.append(f"- {shown}: **skipped**: {info['skipped']}")
            continue
        counted = info.get("server_counted") or {}
        verdict = _pass(counted.get("pass"))
        lines.append(
            f"- {shown}: server counted {counted.get('ok', 0):.0f} answered ok "
            f"(perf_analyzer measured {counted.get('sent_measured', 0)}), other statuses "
            f"{counted.get('other') or 'none'}: {verdict}"
        )
        if info.get("not_measured"):
            missing = info["not_measured"]
            lines.append(f"  - not measured at concurrency {missing['concurrency']}: {missing['why']}")
    by_level: dict[int, dict[str, dict[str, float]]] = {}
    for key in servers:
        for row in (perf.get(key) or {}).get("rows", []):
            by_level.setdefault(int(row["concurrency"]), {})[key] = row
    if by_level:
        lines += [
            "",
            "| concurrency | /v2 infer/s | /v2 p50 / p95 / p99 ms | PyTriton infer/s | PyTriton p50 / p95 / p99 ms |",
            "|---|---|---|---|---|",
        ]
        for level in sorted(by_level):
            cells = []
            for key in servers:
                row = by_level[level].get(key)
                if row is None:
                    cells += ["-", "-"]
                else:
                    cells += [
                        f"{row['throughput_per_s']:.1f}",
                        f"{row['p50_ms']:.1f} / {row['p95_ms']:.1f} / {row['p99_ms']:.1f}",
                    ]
            lines.append(f"| {level} | " + " | ".join(cells) + " |")
    return [*lines, ""]
