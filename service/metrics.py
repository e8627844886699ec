"""Prometheus metrics, one registry per app (so tests can build many apps in one process).

What operators of Triton, Ray Serve and BentoML asked for: requests by route and status, latency split
into queue and inference time, the batch sizes actually formed, the queue depth and why work was dropped.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """The service's metric families; `render()` is the body of GET /metrics."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "cxr_http_requests",
            "HTTP requests by route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.in_progress = Gauge(
            "cxr_http_requests_in_progress",
            "HTTP requests received and not yet answered (probes included).",
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "cxr_http_request_duration_seconds",
            "Time from request start to the end of the response.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_seconds = Histogram(
            "cxr_queue_seconds",
            "Time an image waited in the batch queue.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.inference_seconds = Histogram(
            "cxr_inference_seconds",
            "ONNX Runtime time per batch.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "cxr_batch_size",
            "Images per batch sent to ONNX Runtime (before padding).",
            ["model"],
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "cxr_queue_depth", "Images waiting in the batch queue.", ["model"], registry=self.registry
        )
        self.images = Counter(
            "cxr_images_classified",
            "Images classified, by model and predicted label.",
            ["model", "label"],
            registry=self.registry,
        )
        self.domain = Counter(
            "cxr_domain_verdicts",
            "Input-domain verdicts (in, corrected, out), by model: how often the service is sent what it was "
            "not made for.",
            ["model", "verdict"],
            registry=self.registry,
        )
        self.dropped = Counter(
            "cxr_images_dropped",
            "Images not computed: overloaded (queue full), expired (deadline), cancelled (client gone).",
            ["model", "reason"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def observer(self, model: str) -> BatchMetrics:
        """The batcher's observer for one model."""
        return BatchMetrics(self, model)

    def track_depth(self, model: str, depth: Callable[[], int]) -> None:
        """The queue depth gauge reads `depth()` at scrape time."""
        self.queue_depth.labels(model=model).set_function(lambda: float(depth()))


class BatchMetrics:
    """Implements `service.inference.batcher.BatchObserver` for one model."""

    def __init__(self, metrics: Metrics, model: str) -> None:
        self._batch_size = metrics.batch_size.labels(model=model)
        self._inference = metrics.inference_seconds.labels(model=model)
        self._dropped = {
            reason: metrics.dropped.labels(model=model, reason=reason)
            for reason in ("overloaded", "expired", "cancelled")
        }

    def batch(self, size: int, padded_to: int, seconds: float) -> None:
        self._batch_size.observe(size)
        self._inference.observe(seconds)

    def dropped(self, reason: str, count: int) -> None:
        counter = self._dropped.get(reason)
        if counter is not None:
            counter.inc(count)
