"""Overload and recovery: the service's peak (closed loop), then open-loop arrivals at `factor` x that peak,
then the closed loop again.

What must hold at `factor` x peak: every answer is a 2xx or a 503/429 problem (nothing else, no transport
error), no request takes longer than its deadline plus a small slack, the server's RSS stays under a
stated bound, and afterwards the throughput is back at the peak. The bounded queue is what makes this
possible: it holds at most `QUEUE_CAPACITY` images, which the model clears well within the deadline, and
refuses the rest at once.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from tests.reliability.harness import Service
from tests.reliability.load import (
    RssSampler,
    Shot,
    closed_loop,
    open_loop,
    percentile,
    statuses,
    throughput,
)
from tests.support.tinymodel import blob_image, encode

BATCH_DELAY_S = 0.1
"""Model time per batch (any size up to MAX_BATCH): peak ~40 images/s, set by the model, as with a CNN."""
MAX_BATCH = 4
QUEUE_CAPACITY = 16
DEADLINE_S = 2.0
DEADLINE_SLACK_S = 0.5
"""Client-side allowance: the load generator shares the 2 cores and its own event loop adds delay."""
CONCURRENCY = 16
RSS_GROWTH_BOUND_MIB = 150.0
"""Allowed growth over the ready server's RSS: connection buffers and queued tensors, not a leak."""

SERVER_FLAGS = (
    "--max-batch-size",
    str(MAX_BATCH),
    "--max-queue-delay-ms",
    "5",
    "--queue-capacity",
    str(QUEUE_CAPACITY),
    "--request-timeout-s",
    str(DEADLINE_S),
    "--decode-workers",
    "1",
    "--log-level",
    "warning",  # an INFO line per request would cost the 2 cores more than the requests
)


def request_body() -> bytes:
    return encode(blob_image(size=(128, 128)))


@dataclass
class OverloadFigures:
    peak_rps: float = 0.0
    factor: float = 0.0
    offered_rps: float = 0.0
    duration_s: float = 0.0
    requests: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    unclean: int = 0  # answers that are neither 2xx nor a 503/429 problem, and transport errors
    served_rps: float = 0.0
    p50_ok_s: float = 0.0
    p99_ok_s: float = 0.0
    max_request_s: float = 0.0
    deadline_s: float = DEADLINE_S
    rss_ready_mib: float = 0.0
    rss_max_mib: float = 0.0
    rss_bound_mib: float = 0.0
    recovery_rps: float = 0.0
    recovery_statuses: dict[str, int] = field(default_factory=dict)

    def problems(self, *, throughput: bool = True) -> list[str]:
        """Every broken promise, in words (empty when the run held). `throughput=False` leaves out the
        recovered-throughput ratio, a figure for the report: the suite may run next to other work on the
        same cores, which moves throughput between phases but not what the service answers."""
        found = []
        if self.unclean:
            found.append(f"{self.unclean} answers were not 2xx/503/429 problems: {self.statuses}")
        if self.max_request_s > self.deadline_s + DEADLINE_SLACK_S:
            found.append(f"a request took {self.max_request_s:.2f} s (deadline {self.deadline_s:g} s)")
        if self.rss_max_mib > self.rss_bound_mib:
            found.append(f"RSS reached {self.rss_max_mib:.0f} MiB (bound {self.rss_bound_mib:.0f} MiB)")
        if (throughput and self.recovery_rps < 0.8 * self.peak_rps) or set(self.recovery_statuses) != {"200"}:
            found.append(
                f"after overload: {self.recovery_rps:.1f}/s {self.recovery_statuses} (peak {self.peak_rps:.1f}/s)"
            )
        return found

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _clean(shot: Shot) -> bool:
    return 200 <= shot.status < 300 or (shot.status in (503, 429) and shot.clean_error)


def run(
    service: Service, *, factor: float = 4.0, duration_s: float = 6.0, measure_s: float = 3.0
) -> OverloadFigures:
    """Peak, `factor` x peak for `duration_s`, then the peak again (each closed-loop phase `measure_s`)."""
    body = request_body()
    figures = OverloadFigures(factor=factor, duration_s=duration_s)
    asyncio.run(closed_loop(service.url, body, CONCURRENCY, 1.0))  # settle connections and caches
    figures.rss_ready_mib = service.rss_bytes() / 2**20
    figures.rss_bound_mib = figures.rss_ready_mib + RSS_GROWTH_BOUND_MIB
    figures.peak_rps = throughput(asyncio.run(closed_loop(service.url, body, CONCURRENCY, measure_s)))
    figures.offered_rps = factor * figures.peak_rps
    sampler = RssSampler(service)
    with sampler.sampling():
        shots = asyncio.run(open_loop(service.url, body, figures.offered_rps, duration_s))
    figures.requests = len(shots)
    figures.statuses = dict(statuses(shots))
    figures.unclean = sum(not _clean(shot) for shot in shots)
    figures.served_rps = throughput(shots)
    ok = sorted(shot.seconds for shot in shots if shot.status == 200)
    figures.p50_ok_s, figures.p99_ok_s = percentile(ok, 0.5), percentile(ok, 0.99)
    figures.max_request_s = max((shot.seconds for shot in shots), default=0.0)
    figures.rss_max_mib = sampler.max_mib
    recovery = asyncio.run(closed_loop(service.url, body, CONCURRENCY, measure_s))
    figures.recovery_rps = throughput(recovery)
    figures.recovery_statuses = dict(statuses(recovery))
    return figures
