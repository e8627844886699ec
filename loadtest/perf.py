"""Triton's own load client, perf_analyzer, against `cxr serve`'s /v2 and against Triton itself (PyTriton,
loadtest/peer_pytriton.py), on the tensor path: the same real preprocessed tensors (decoded films through
OnnxModel.prepare) sent to both, a closed-loop concurrency sweep with bounded time windows.

perf_analyzer comes from scripts/perf_analyzer.sh (prepared once, cached; on Debian 12 it runs under a
newer glibc unpacked beside it). Whatever cannot run is reported skipped with the reason, never dropped.
perf_analyzer counts only what it saw answered; the server's own counters (GET /metrics before and after:
`cxr_http_requests_total` for the /v2 infer route by status; Triton's `nv_inference_request_failure`) say
whether every request it sent was answered 200.

    python -m loadtest.perf --out build/perf
"""

from __future__ import annotations

import argparse
import base64
import csv
import json
import logging
import os
import re
import secrets
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from loadtest import peers, targets
from loadtest.images import Sample, load_samples
from service.imaging.decode import decode
from service.inference.model import OnnxModel, load_default
from service.settings import Settings

logger = logging.getLogger(__name__)
SCRIPT = targets.ROOT / "scripts" / "perf_analyzer.sh"
_UNAVAILABLE = "perf_analyzer unavailable: "


@dataclass(frozen=True)
class Sweep:
    """perf_analyzer's load: concurrency `start:end:step` and each measurement window."""

    start: int = 1
    end: int = 16
    step: int = 3
    window_ms: int = 2000
    max_trials: int = 8
    stability_percent: float = 50.0
    """perf_analyzer's default (10 %, 3 windows in a row) was not met within 5 windows at concurrency 1 on
    this shared 2-core host (load 5-7), nor 25 %; results.json records which was used."""

    def arguments(self) -> list[str]:
        return [
            "--concurrency-range", f"{self.start}:{self.end}:{self.step}",
            "--measurement-mode", "time_windows", "--measurement-interval", str(self.window_ms), "-v",
            "--max-trials", str(self.max_trials), "--stability-percentage", f"{self.stability_percent:g}",
        ]  # fmt: skip


QUICK = Sweep(1, 1, 1, window_ms=1000, max_trials=3, stability_percent=100.0)
"""The quick bench's smoke run: concurrency 1, short windows, any two consecutive windows accepted."""


def prepare(script: Path = SCRIPT, timeout_s: float = 300.0, python: str = sys.executable) -> str | None:
    """None when perf_analyzer runs here (prepared and cached by `script`, with `python`'s pip), else the
    one-line reason."""
    try:
        done = subprocess.run(
            ["bash", str(script), "--prepare-only"],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
            env={**os.environ, "CXR_PERF_ANALYZER_PYTHON": python},
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"{script.name} failed: {error}"
    if done.returncode == 0:
        return None
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    reasons = [line.removeprefix(_UNAVAILABLE) for line in lines if line.startswith(_UNAVAILABLE)]
    return reasons[-1] if reasons else f"{script.name} exited with {done.returncode}: {(lines or [''])[-1]}"


def input_data(model: OnnxModel, samples: list[Sample], path: Path, count: int = 4) -> Path:
    """perf_analyzer's --input-data JSON: `count` films decoded and prepared as the service does, each one
    request of one image (`{"data": [{"image": {"b64": ..., "shape": [224, 224, 1]}}, ...]}`)."""
    if not samples:
        raise ValueError("no images to prepare")
    entries = []
    for sample in samples[:count]:
        tensor, _, _ = model.prepare(decode(sample.data))
        entries.append(
            {
                "image": {
                    "b64": base64.b64encode(tensor.astype("<f4").tobytes()).decode(),
                    "shape": list(tensor.shape),
                }
            }
        )
    path.write_text(json.dumps({"data": entries}))
    return path


def read_csv(path: Path) -> list[dict[str, float]]:
    """perf_analyzer's `-f` CSV as rows: concurrency, throughput (inferences/s) and p50/p90/p95/p99 (ms)."""
    rows = []
    with path.open(newline="") as stream:
        for row in csv.DictReader(stream):
            rows.append(
                {
                    "concurrency": int(row["Concurrency"]),
                    "throughput_per_s": float(row["Inferences/Second"]),
                    **{f"p{p}_ms": float(row[f"p{p} latency"]) / 1000.0 for p in (50, 90, 95, 99)},
                }
            )
    return sorted(rows, key=lambda row: row["concurrency"])


def _samples(metrics_text: str, counter: str) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of every sample of the counter `counter` in a Prometheus text exposition (the parser
    names a counter's samples `<counter>_total` whether or not the exposition did)."""
    return [
        (sample.labels, float(sample.value))
        for family in text_string_to_metric_families(metrics_text)
        if family.name == counter
        for sample in family.samples
        if sample.name == f"{counter}_total"
    ]


def v2_counts(metrics_text: str) -> dict[str, float]:
    """The service's /v2 infer requests by status (summed over the model and version routes)."""
    counts: dict[str, float] = {}
    for labels, value in _samples(metrics_text, "cxr_http_requests"):
        route = labels.get("route", "")
        if labels.get("method") == "POST" and route.startswith("/v2/models/") and route.endswith("infer"):
            counts[labels["status"]] = counts.get(labels["status"], 0.0) + value
    return counts


def triton_counts(metrics_text: str, model: str) -> dict[str, float]:
    """Triton's success and failure counters for `model`."""
    return {
        outcome: sum(
            value
            for labels, value in _samples(metrics_text, f"nv_inference_request_{outcome}")
            if labels.get("model") == model
        )
        for outcome in ("success", "failure")
    }


def answered(before: dict[str, float], after: dict[str, float], ok: str, sent: int) -> dict[str, Any]:
    """What the server counted between two scrapes, against the `sent` requests perf_analyzer measured:
    passes when nothing but `ok` was counted and at least `sent` were (perf_analyzer also sends requests
    outside its measured windows, so more is expected)."""
    delta = {key: after.get(key, 0.0) - before.get(key, 0.0) for key in {*before, *after}}
    other = {key: value for key, value in delta.items() if key != ok and value}
    counted = delta.get(ok, 0.0)
    return {
        "ok": counted,
        "other": other,
        "sent_measured": sent,
        "pass": not other and counted >= max(sent, 1),
    }


def measure(
    url: str,
    model: str,
    data: Path,
    sweep: Sweep,
    out: Path,
    script: Path = SCRIPT,
    headers: tuple[str, ...] = (),
) -> dict[str, Any]:
    """One perf_analyzer sweep against `url`; {"rows": [...], "sent": n} or {"skipped": reason} when it
    fails. `sent` counts the requests of the measured windows only (perf_analyzer's "Request count")."""
    host = url.removeprefix("http://")
    csv_path = out.with_suffix(".csv")
    command = [
        "bash",
        str(script),
        "-m",
        model,
        "-u",
        host,
        "-i",
        "http",
        "--input-data",
        str(data),
        "-f",
        str(csv_path),
        *sweep.arguments(),
        *(argument for header in headers for argument in ("-H", header)),
    ]
    shown = "perf_analyzer " + " ".join(command[2 : len(command) - 2 * len(headers)])  # no access token
    shown += " -H <header>" * len(headers)
    logger.info("%s", shown)
    timeout_s = 60.0 + len(range(sweep.start, sweep.end + 1, sweep.step)) * sweep.max_trials * (
        sweep.window_ms / 1000.0 + 5.0
    )
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return {"skipped": f"perf_analyzer did not finish in {timeout_s:.0f} s"}
    output = re.sub(r" {3,}", " ", done.stdout + done.stderr)  # its progress line pads with spaces
    out.with_suffix(".log").write_text(output)
    if done.returncode != 0 or not csv_path.is_file():
        tail = " | ".join(line.strip() for line in output.strip().splitlines()[-2:])
        return {"skipped": f"perf_analyzer exited with {done.returncode}: {tail}"}
    rows = read_csv(csv_path)
    sent = sum(int(count) for count in re.findall(r"Request count: (\d+)", output))
    result: dict[str, Any] = {"command": shown, "rows": rows, "sent": sent}
    missing = [
        c for c in range(sweep.start, sweep.end + 1, sweep.step) if c not in {r["concurrency"] for r in rows}
    ]
    if missing:  # perf_analyzer stops the sweep at the first level it cannot measure stably
        result["not_measured"] = {"concurrency": missing, "why": _unstable(output)}
    return result


def _unstable(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if "Failed" in line or "error" in line.lower()]
    return lines[-1] if lines else "perf_analyzer gave no row"


def service(model: OnnxModel, data: Path, sweep: Sweep, out_dir: Path) -> dict[str, Any]:
    """perf_analyzer against `cxr serve`'s /v2 (the service's default batching), with the counters check."""
    defaults = Settings.model_construct()
    flags = ["--default-model", model.name, "--providers", "CPUExecutionProvider"]
    command = targets.service_command(
        model.directory.parent.parent,
        max_batch_size=defaults.max_batch_size,
        max_queue_delay_ms=defaults.max_queue_delay_ms,
        extra=flags,
    )
    with targets.launch("service-v2", command, out_dir / "service-v2.log", ready_path="/readyz") as target:
        before = v2_counts(httpx.get(target.url + "/metrics", timeout=10).text)
        result = measure(target.url, model.name, data, sweep, out_dir / "service-v2")
        after = v2_counts(httpx.get(target.url + "/metrics", timeout=10).text)
    if "rows" in result:
        result["server_counted"] = answered(before, after, "200", result["sent"])
    return result


def pytriton(
    model: OnnxModel, data: Path, sweep: Sweep, out_dir: Path, *, create: bool = True
) -> dict[str, Any]:
    """perf_analyzer against Triton (PyTriton) on the same model, with Triton's own failure counter."""
    try:
        python, setup_s = peers.ensure_venv(peers.PYTRITON, create=create)
    except peers.PeerUnavailable as error:
        return {"skipped": f"PyTriton: {error}"}
    http, grpc, metrics = targets.free_port(), targets.free_port(), targets.free_port()
    command = [
        str(python), "-m", "loadtest.peer_pytriton", "--model", str(model.directory / "model.onnx"),
        "--name", model.name, "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics),
    ]  # fmt: skip
    token = secrets.token_urlsafe(24)
    env = {"LD_LIBRARY_PATH": peers.libpython_dir(python), "PYTRITON_BENCH_ACCESS_TOKEN": token}
    try:
        with targets.launch(
            "pytriton",
            command,
            out_dir / "pytriton.log",
            ready_path=f"/v2/models/{model.name}/ready",
            port=http,
            env=env,
            timeout_s=180,
        ) as target:
            scrape = f"http://127.0.0.1:{metrics}/metrics"
            before = triton_counts(httpx.get(scrape, timeout=10).text, model.name)
            header = (f"triton-access-token:{token}",)
            result = measure(target.url, model.name, data, sweep, out_dir / "pytriton", headers=header)
            after = triton_counts(httpx.get(scrape, timeout=10).text, model.name)
    except (RuntimeError, TimeoutError) as error:
        return {"skipped": f"PyTriton did not start: {str(error).splitlines()[0]}"}
    if "rows" in result:
        result["server_counted"] = answered(before, after, "success", result["sent"])
    result["environment_setup_s"] = setup_s
    return result


def run(
    model_dir: Path, samples: list[Sample], out_dir: Path, sweep: Sweep = Sweep(), *, create: bool = True
) -> dict[str, Any]:
    """The perf_analyzer section of results.json: both servers, or skipped with the reason."""
    out_dir.mkdir(parents=True, exist_ok=True)
    reason = prepare()
    if reason:
        return {"skipped": reason}
    model = OnnxModel(model_dir, providers=["CPUExecutionProvider"], intra_op_threads=1)
    data = input_data(model, samples, out_dir / "input-data.json")
    return {
        "sweep": {
            "concurrency": f"{sweep.start}:{sweep.end}:{sweep.step}",
            "window_ms": sweep.window_ms,
            "max_trials": sweep.max_trials,
            "stability_percent": sweep.stability_percent,
        },
        "input": f"{min(4, len(samples))} films, decoded and prepared as the service does (OnnxModel.prepare)",
        "service_v2": service(model, data, sweep, out_dir),
        "pytriton": pytriton(model, data, sweep, out_dir, create=create),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("build") / "perf")
    parser.add_argument("--images", type=Path, default=targets.ROOT.parent / "shared" / "data" / "fullres")
    parser.add_argument("--concurrency-range", default="1:16:3", help="start:end:step")
    parser.add_argument("--window-ms", type=int, default=Sweep.window_ms)
    parser.add_argument("--max-trials", type=int, default=Sweep.max_trials)
    parser.add_argument("--stability-percent", type=float, default=Sweep.stability_percent)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    start, end, step = (int(part) for part in args.concurrency_range.split(":"))
    samples = load_samples([args.images] if args.images.is_dir() else [])
    results = run(
        load_default().directory,
        samples,
        args.out,
        Sweep(start, end, step, args.window_ms, args.max_trials, args.stability_percent),
    )
    (args.out / "perf.json").write_text(json.dumps(results, indent=2) + "\n")
    logger.info("wrote %s", args.out / "perf.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
