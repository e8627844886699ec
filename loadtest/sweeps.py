"""The HTTP part of `cxr bench`: each target started in turn, swept closed and open loop, and the
service's overload checks (2x peak, then back to peak) while it runs.

The service goes first: its closed-loop peak sets the open-loop arrival rates for every target, so all
targets are offered the same absolute load.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import pickle
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psutil

from loadtest import limit, peers, targets
from loadtest.loadgen import LoadGenerator, Outcome, Request, Summary, summarise
from loadtest.plan import BenchError, Plan

logger = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")
_CLIENT_SLACK_S = 20.0
_PEER_WARMUP_S = 2.0
"""Client timeout beyond the service deadline: the server's own 504 (or its absence) must be what we see."""


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop  # the generator shares the CPU with the servers: a cheaper loop leaves them more
    except ImportError:
        return asyncio.run(coroutine)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coroutine)


def _log(summary: Summary) -> None:
    logger.info(
        "%-10s %-8s %7.1f  %6.1f img/s  p50 %s  p99 %s  errors %.1f%% %s",
        summary.target,
        summary.mode,
        summary.level,
        summary.images_per_s,
        f"{summary.p50_ms:.0f} ms" if summary.p50_ms is not None else "-",
        f"{summary.p99_ms:.0f} ms" if summary.p99_ms is not None else "-",
        100 * summary.error_rate,
        summary.errors or "",
    )


def _generator(plan: Plan, url: str, full: bool) -> LoadGenerator:
    return LoadGenerator(
        Request(url, full_check=full),
        plan.samples,
        timeout_s=plan.defaults.request_timeout_s + _CLIENT_SLACK_S,
    )


def sweep(
    plan: Plan,
    name: str,
    generator: LoadGenerator,
    *,
    clients: list[int],
    rates: list[float],
    server: targets.Target | None = None,
) -> list[Summary]:
    """Closed loop at each client count, then open loop at each arrival rate. With `server`, each closed
    level also records the CPU time per request of the server's threads and of this load generator."""
    summaries = []
    for count in clients:
        before = _cpu_seconds(server)
        outcomes, window = _run(generator.closed(count, warmup_s=plan.warmup_s, duration_s=plan.duration_s))
        after = _cpu_seconds(server)
        summaries.append(summarise(name, "closed", count, outcomes, window))
        if server is not None and outcomes:
            summaries[-1].cpu_ms = _cpu_ms_per_request(before, after, len(outcomes))
        _log(summaries[-1])
    for rate in rates:
        outcomes, window = _run(generator.open(rate, warmup_s=plan.warmup_s, duration_s=plan.duration_s))
        summaries.append(summarise(name, "open", round(rate, 2), outcomes, window))
        _log(summaries[-1])
    return summaries


def _cpu_seconds(server: targets.Target | None) -> dict[str, float]:
    """CPU seconds so far: the server's event loop thread (HTTP, framework, batcher), its other threads
    (decoding, preprocessing, ONNX Runtime), and this process (the load generator)."""
    if server is None:
        return {}
    process = psutil.Process(server.process.pid)
    threads = {thread.id: thread.user_time + thread.system_time for thread in process.threads()}
    own = psutil.Process().cpu_times()
    return {
        "event loop thread": threads.get(process.pid, 0.0),
        "worker threads": sum(threads.values()) - threads.get(process.pid, 0.0),
        "load generator": own.user + own.system,
    }


def _cpu_ms_per_request(before: dict[str, float], after: dict[str, float], requests: int) -> dict[str, float]:
    """Milliseconds of CPU per request of each part of `_cpu_seconds`, between two of its readings."""
    return {part: 1000.0 * (after[part] - before[part]) / requests for part in after}


async def _with_memory(
    generator: LoadGenerator, target: targets.Target, rate: float, duration_s: float
) -> tuple[list[Outcome], tuple[float, float], list[tuple[float, int]]]:
    """Open loop at `rate` with the server's resident memory sampled every 0.2 s."""
    memory: list[tuple[float, int]] = []

    async def sample() -> None:
        while True:
            memory.append((time.monotonic(), target.rss_bytes()))
            await asyncio.sleep(0.2)

    sampler = asyncio.get_running_loop().create_task(sample())
    try:
        outcomes, window = await generator.open(rate, warmup_s=0.0, duration_s=duration_s)
    finally:
        sampler.cancel()
    return outcomes, window, memory


def overload(plan: Plan, target: targets.Target, generator: LoadGenerator, peak: Summary) -> dict[str, Any]:
    """The peak's client count, 2x the peak arrival rate, then the peak's client count again: does
    throughput come back? The level right before the overload is the reference, not the peak: the peak is
    the best of several windows, and one window after it would read ~10 % lower on this shared machine
    with nothing wrong (measured: 0.877 of the best window)."""
    before = _closed(plan, generator, "service", "before overload", int(peak.level))
    _log(before)
    rss_before = target.rss_bytes()
    rate = plan.overload_factor * peak.images_per_s
    outcomes, window, memory = _run(_with_memory(generator, target, rate, plan.overload_s))
    during = summarise("service", "overload", round(rate, 2), outcomes, window)
    _log(during)
    recovery = _closed(plan, generator, "service", "recovery", int(peak.level))
    _log(recovery)
    middle = (window[0] + window[1]) / 2
    first = [rss for at, rss in memory if at < middle] or [rss_before]
    second = [rss for at, rss in memory if at >= middle] or first
    return {
        "rate": rate,
        "summary": during.as_dict(),
        "before": before.as_dict(),
        "recovery": recovery.as_dict(),
        "statuses_all": sorted({str(o.status) for o in outcomes}),
        "only_2xx_503_429": all(o.status in (200, 429, 503) for o in outcomes),
        "max_request_s": max((o.done - o.sent for o in outcomes), default=0.0),
        "deadline_s": plan.defaults.request_timeout_s,
        "rss_mib": {
            "before": rss_before / 2**20,
            "max_first_half": max(first) / 2**20,
            "max_second_half": max(second) / 2**20,
        },
    }


def _command(
    plan: Plan, target: str, variant: list[str] | None = None
) -> tuple[list[str], str, dict[str, str], str, int | None]:
    """(command, classify path, extra environment, readiness path, port or None for 'any') of a target."""
    budget = plan.defaults
    repo, name = plan.model_dir.parent.parent, plan.model_dir.parent.name
    if target in ("service", "service-b1"):
        size = budget.max_batch_size if target == "service" else 1
        flags = ["--default-model", name, "--providers", "CPUExecutionProvider", "--log-level", "info"]
        flags += variant or []  # argparse: the last occurrence of a flag wins
        command = targets.service_command(
            repo, max_batch_size=size, max_queue_delay_ms=budget.max_queue_delay_ms, extra=flags
        )
        return command, "/v1/classify", {}, "/readyz", None
    if target in ("naive", "naive-service-decoder"):
        return (
            targets.naive_command(),
            "/classify",
            {
                "CXR_NAIVE_MODEL": str(plan.model_dir),
                "CXR_NAIVE_DECODE": "full" if target == "naive" else "service",
            },
            "/healthz",
            None,
        )
    if target == "peer":
        port = targets.free_port()
        command = targets.peer_command(
            plan.model_dir,
            port,
            max_batch_size=budget.max_batch_size,
            max_queue_delay_ms=budget.max_queue_delay_ms,
        )
        return command, "/", {}, "/healthz", port
    raise ValueError(f"unknown target {target!r}")


def _peer(plan: Plan, name: str, rates: list[float]) -> tuple[list[Summary], dict[str, Any]]:
    """A peer of loadtest.peers: its environment (created or cached), each of its settings at the
    highest client count (the quick plan: the first setting only), then the full sweep with the best.
    Raises PeerUnavailable with the reason when it cannot be installed or started."""
    peer = peers.PEERS[name]
    python, created_s = peers.ensure_venv(peer)
    info: dict[str, Any] = {
        "framework": peer.framework,
        "decoder": peer.decoder,
        "environment": str(python.parent.parent),
        "environment_created_s": round(created_s, 1),
        "settings": [],
    }
    samples = peers.upload_samples(peer, plan.samples)
    timeout_s = plan.defaults.request_timeout_s

    @contextlib.contextmanager
    def started(setting: peers.Setting, log: Path) -> Iterator[LoadGenerator]:
        port = targets.free_port()
        command, env = peers.command(peer, python, plan.model_dir, port, setting, timeout_s)
        try:
            launched = targets.launch(
                name, command, log, ready_path=peer.ready_path, port=port, env=env, timeout_s=180
            )
            running = launched.__enter__()
        except (RuntimeError, TimeoutError) as error:
            last = str(error).strip().splitlines()
            raise peers.PeerUnavailable(f"{setting.label}: did not start ({last[0]}; log {log})") from None
        try:
            yield LoadGenerator(
                Request(running.url + peer.path, full_check=False),
                samples,
                timeout_s=timeout_s + _CLIENT_SLACK_S,
            )
        finally:
            launched.__exit__(None, None, None)

    tried = peer.settings[:1] if plan.quick else peer.settings
    clients = max(plan.concurrency)
    for index, setting in enumerate(tried):
        try:
            with started(setting, plan.log_dir / f"{name}-setting-{index}.log") as generator:
                # A peer's first window is the first traffic its fresh processes see (LitServe's API server
                # and worker answered nothing within the quick plan's 0.3 s warm-up on a busy machine).
                measured = _closed(
                    plan, generator, name, "setting", clients, warmup_s=max(plan.warmup_s, _PEER_WARMUP_S)
                )
        except peers.PeerUnavailable as error:
            # One setting that does not start is reported; the peer is skipped only if none does.
            logger.warning("%s: %s", name, error)
            info["settings"].append({"setting": setting.label, "clients": clients, "skipped": str(error)})
            continue
        _log(measured)
        info["settings"].append({"setting": setting.label, "clients": clients, **measured.as_dict()})
    measured_settings = [i for i, entry in enumerate(info["settings"]) if "skipped" not in entry]
    if not measured_settings:
        raise peers.PeerUnavailable("; ".join(entry["skipped"] for entry in info["settings"]))
    best = max(measured_settings, key=lambda index: info["settings"][index]["images_per_s"])
    info["chosen"] = tried[best].label
    with started(tried[best], plan.log_dir / f"{name}.log") as generator:
        closed = sweep(plan, name, generator, clients=plan.concurrency, rates=[])
        top = max(closed, key=lambda s: s.images_per_s)
        for _ in range(plan.pairs):
            again = sweep(plan, name, generator, clients=[int(top.level)], rates=[])
            for summary in again:
                summary.repeat = True
            closed += again
        return closed + sweep(plan, name, generator, clients=[], rates=rates), info


def measure_targets(
    plan: Plan, paired: Callable[[], float] | None = None
) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Every target's sweeps (service first), the service's overload checks, the batch policy it
    chose at warm-up (its `/v1/models` entry's `batching`) and the peers of loadtest.peers (how each was
    set up, or why it was skipped). After each closed-loop sweep, the best level is
    measured `plan.pairs` more times; for the service each of those has a call of `paired` (a round of the
    in-process limit, returning its images/s) right before or after it, so that each service measurement
    has a limit measured next to it in time."""
    order = sorted(plan.targets, key=lambda name: name != "service")
    runs: list[Summary] = []
    checks: dict[str, Any] = {}
    batching: dict[str, Any] = {}
    rates: list[float] = []
    logs = plan.log_dir
    peer_info: dict[str, Any] = {}
    for name in order:
        if name in peers.PEERS:
            try:
                measured, peer_info[name] = _peer(plan, name, rates)
            except peers.PeerUnavailable as error:
                logger.warning("%s skipped: %s", name, error)
                peer_info[name] = {"framework": peers.PEERS[name].framework, "skipped": str(error)}
                continue
            runs += measured
            continue
        command, path, env, ready, port = _command(plan, name)
        log = logs / f"{name}.log"
        with targets.launch(
            name, command, log, ready_path=ready, port=port, env=env, timeout_s=180
        ) as running:
            generator = _generator(plan, running.url + path, full=name.startswith("service"))
            server = running if name.startswith("service") else None
            if name == "service":
                batching = _batching(running.url)
            closed = sweep(plan, name, generator, clients=plan.concurrency, rates=[], server=server)
            # Every target's best level runs `plan.pairs` more times and its peak is the best of them, as
            # the in-process limit is the best of its rounds: one 8 s window on a shared machine varies by
            # ~10 %. Each of the service's repeats has a limit round next to it.
            best = max(closed, key=lambda s: s.images_per_s)
            pairing = paired if name == "service" else None
            for index in range(plan.pairs):
                again, limit_rate = _beside(
                    index,
                    partial(sweep, plan, name, generator, clients=[int(best.level)], rates=[], server=server),
                    pairing or (lambda: None),
                )
                for summary in again:
                    summary.repeat, summary.paired_limit = True, limit_rate
                closed += again
            if name == "service":
                peak = max(closed, key=lambda s: s.images_per_s)
                if peak.images_per_s <= 0:
                    # Nothing to set the open-loop rates (fractions of this peak) from.
                    raise BenchError(
                        f"the service classified no image at any load level (answers {peak.statuses}, "
                        f"errors {peak.errors}; its log: {log})"
                    )
                rates = [fraction * peak.images_per_s for fraction in plan.open_fractions]
            runs += closed + sweep(plan, name, generator, clients=[], rates=rates)
            if name == "service":
                checks = overload(plan, running, generator, peak)
    if "service" in order:
        runs += variants(plan, int(peak.level))
    return [summary.as_dict() for summary in runs], checks, batching, peer_info


def http_floor(plan: Plan, clients: int) -> dict[str, Any]:
    """The HTTP floor (loadtest/floor_app.py) at the service's peak client count: its images/s and CPU
    time per request, on the server's event loop thread and in the load generator."""
    with targets.launch(
        "http floor", targets.floor_command(), plan.log_dir / "http-floor.log", ready_path="/", timeout_s=60
    ) as running:
        generator = _generator(plan, running.url + "/", full=False)
        return sweep(plan, "http floor", generator, clients=[clients], rates=[], server=running)[0].as_dict()


BESIDE_FLOOR_FRACTION = 0.95
"""The HTTP floor beside the limit is offered this share of the limit's images/s as requests/s: the
service/limit target set for this project (docs/benchmark-history.md)."""


class _LimitProcess:
    """`python -m loadtest.limit` (loadtest.limit.serve_windows): the limit's pipeline in its own process."""

    def __init__(self, job: limit.Job) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "loadtest.limit"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        if self._process.stdin is None or self._process.stdout is None:  # never: both are PIPE
            raise RuntimeError("the limit's process has no pipes")
        self._pipes = self._process.stdin, self._process.stdout
        try:
            pickle.dump(job, self._pipes[0])
            self._pipes[0].flush()
            self._expect(b"ready\n")
        except BaseException:  # no process left behind when it fails to start
            self._process.kill()
            self.close()
            raise

    def _expect(self, what: bytes) -> bytes:
        line = self._pipes[1].readline()
        if not line or not line.endswith(b"\n") or (what and line != what):
            raise RuntimeError(
                f"the limit's process answered {line[:200]!r} (exit status {self._process.poll()})"
            )
        return line

    def start(self, warmup_s: float, duration_s: float) -> None:
        self._pipes[0].write(json.dumps([warmup_s, duration_s]).encode() + b"\n")
        self._pipes[0].flush()

    def result(self) -> limit.Rate:
        return limit.Rate(**json.loads(self._expect(b"")))

    def close(self) -> None:
        with contextlib.suppress(OSError):  # a process that died leaves a broken pipe
            self._pipes[0].close()
        try:
            self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._pipes[1].close()


def beside_floor(plan: Plan, pipeline: limit.Pipeline, limit_images_per_s: float) -> dict[str, Any]:
    """What receiving the films over HTTP costs the limit's work on these cores, measured: the limit's
    pipeline in a process of its own, alone and beside the HTTP floor receiving the same films at
    BESIDE_FLOOR_FRACTION x `limit_images_per_s` requests/s (open loop), in alternating pairs.

    Not a bound on what a service can reach: the floor runs in a process of its own and is offered an open
    loop, and how much a request costs uvicorn depends on that load pattern (a service at its peak, busy,
    is measured in a closed loop)."""
    rate = BESIDE_FLOOR_FRACTION * limit_images_per_s
    window_s = plan.warmup_s + plan.duration_s
    job = limit.Job(plan.model_dir, plan.samples, pipeline, plan.defaults.malloc_retain_mib)
    pairs: list[dict[str, Any]] = []
    with targets.launch(
        "http floor",
        targets.floor_command(),
        plan.log_dir / "floor-beside-limit.log",
        ready_path="/",
        timeout_s=60,
    ) as floor:
        generator = _generator(plan, floor.url + "/", full=False)
        worker = _LimitProcess(job)
        try:
            for index in range(max(1, plan.pairs)):
                measured: dict[str, Any] = {}
                for beside in (False, True) if index % 2 == 0 else (True, False):
                    worker.start(plan.warmup_s, plan.duration_s)
                    if not beside:
                        measured["alone"] = worker.result().images_per_s
                        continue
                    before = _cpu_seconds(floor)
                    # The floor's load spans the pipeline's whole window, its warm-up included.
                    outcomes, window = _run(generator.open(rate, warmup_s=0.0, duration_s=window_s + 0.5))
                    after = _cpu_seconds(floor)
                    measured["beside"] = worker.result().images_per_s
                    answered = summarise("http floor", "open", round(rate, 2), outcomes, window)
                    if answered.error_rate:
                        raise RuntimeError(
                            f"the HTTP floor answered errors beside the limit: {answered.errors}"
                        )
                    measured["floor_cpu_ms"] = _cpu_ms_per_request(before, after, len(outcomes))
                pairs.append(measured)
                logger.info(
                    "limit alone %.1f, beside the HTTP floor at %.1f requests/s %.1f images/s",
                    measured["alone"],
                    rate,
                    measured["beside"],
                )
        finally:
            worker.close()
    return {
        "configuration": pipeline.name,
        "fraction": BESIDE_FLOOR_FRACTION,
        "offered_requests_per_s": rate,
        "pairs": pairs,
        "ratio": statistics.median(pair["beside"] / pair["alone"] for pair in pairs),
    }


def _batching(url: str) -> dict[str, Any]:
    """The default model's batch policy as the running service reports it."""
    listing = httpx.get(url + "/v1/models", timeout=30).json()
    entry = next(model for model in listing["models"] if model["default"])
    return {**entry["batching"], "batch_sizes": entry["batch_sizes"]}


def variants(plan: Plan, clients: int) -> list[Summary]:
    """The service with one setting changed, closed loop at the peak's client count: each setting's
    measured effect, end to end (the in-process variants cannot see HTTP or the event loop). Each variant
    is measured next to the defaults, alternately before and after, on a second service process with the
    defaults that stays up (idle in the meantime): the machine's speed drifts by up to a quarter between
    the sweep and this section, which would otherwise pass for an effect."""
    measured: list[Summary] = []
    if not plan.service_variants:
        return measured
    with service(plan, "defaults", [], plan.log_dir / "service-defaults-for-variants.log") as (_, defaults):
        for index, (label, flags) in enumerate(plan.service_variants.items()):
            log = plan.log_dir / f"service{'_'.join(flags)}.log"
            with service(plan, label, flags, log) as (_, generator):
                variant, reference = _beside(
                    index,
                    partial(_closed, plan, generator, f"service {label}", "variant", clients),
                    partial(_closed, plan, defaults, "service defaults", "variant", clients),
                )
            variant.paired_defaults = reference.images_per_s
            measured.append(variant)
            _log(measured[-1])
    return measured


@contextlib.contextmanager
def service(
    plan: Plan, label: str, flags: list[str], log: Path
) -> Iterator[tuple[targets.Target, LoadGenerator]]:
    """`cxr serve` with the plan's settings plus `flags`, up and ready, with a load generator for it."""
    command, path, _, ready, port = _command(plan, "service", flags)
    with targets.launch(label, command, log, ready_path=ready, port=port, timeout_s=180) as running:
        yield running, _generator(plan, running.url + path, full=True)


def _closed(
    plan: Plan,
    generator: LoadGenerator,
    target: str,
    mode: str,
    clients: int,
    *,
    warmup_s: float | None = None,
) -> Summary:
    """One closed-loop level at `clients`, summarised under `target` and `mode` (after `warmup_s`, by default
    the plan's)."""
    warmup = plan.warmup_s if warmup_s is None else warmup_s
    outcomes, window = _run(generator.closed(clients, warmup_s=warmup, duration_s=plan.duration_s))
    return summarise(target, mode, clients, outcomes, window)


def _beside(index: int, measure: Callable[[], T], reference: Callable[[], R]) -> tuple[T, R]:
    """`measure()` with `reference()` run right before it (even `index`) or right after (odd): pairs taken
    alternately so that a steady drift of the machine does not lean every pair the same way."""
    if index % 2 == 0:
        before = reference()
        return measure(), before
    measured = measure()
    return measured, reference()
