"""Locust load test of POST /v1/classify with real chest X-rays (research use only).

    locust -f loadtest/locustfile.py --headless --host http://127.0.0.1:8000 \\
        -u 16 -r 4 -t 60s --csv results/locust --only-summary

Images: `CXR_LOADTEST_IMAGES` (folders separated by `:`), default `../shared/data/{fullres,cxr,dicom}`,
else synthetic images (loadtest/images.py). Every answer is checked (loadtest/checks.py): a 200 with
missing fields, probabilities that do not sum to 1 or a label that contradicts the threshold is a failure,
and so is an overload answer (503/429), named as such in the failure table.

Other environment variables: `CXR_LOADTEST_API_KEY` (sent as X-API-Key), `CXR_LOADTEST_MODEL`
(`?model=`), `CXR_LOADTEST_MIX` (format weights, default `png=1,jpeg=1,dicom=1`), `CXR_LOADTEST_MAX_FILES`
(images per multi-image request, default 4).
"""

from __future__ import annotations

import functools
import logging
import os
import random
from typing import Any

from locust import FastHttpUser, between, events, task

from loadtest.checks import check_answer
from loadtest.images import Sample, load_samples, multipart

logger = logging.getLogger(__name__)

_NETWORK_TIMEOUT_S = 60.0
"""Longer than any service deadline: the service's own 504 must be what a slow request sees."""


@functools.cache
def _by_format() -> dict[str, list[Sample]]:
    grouped: dict[str, list[Sample]] = {}
    for sample in load_samples():
        grouped.setdefault(sample.fmt, []).append(sample)
    return grouped


def _mix(available: dict[str, list[Sample]]) -> tuple[list[str], list[float]]:
    """Formats and their weights; a format with no image is dropped rather than failing the run."""
    weights = {"png": 1.0, "jpeg": 1.0, "dicom": 1.0}
    for part in os.environ.get("CXR_LOADTEST_MIX", "").split(","):
        name, _, value = part.partition("=")
        if name.strip() in weights and value.strip():
            weights[name.strip()] = float(value)
    formats = [fmt for fmt in weights if available.get(fmt) and weights[fmt] > 0]
    if not formats:
        raise ValueError(f"no image for the formats in CXR_LOADTEST_MIX (have {sorted(available)})")
    return formats, [weights[fmt] for fmt in formats]


def _load_images(**_: Any) -> None:
    # Load (and validate) the images before the first user spawns, not in the middle of the ramp-up.
    samples = _by_format()
    counts = ", ".join(f"{len(group)} {fmt}" for fmt, group in sorted(samples.items()))
    logger.info("cxr loadtest images: %s", counts)


events.init.add_listener(_load_images)  # type: ignore[no-untyped-call]


class ClassifyUser(FastHttpUser):
    """One client posting X-rays back to back (closed loop): mostly single images, some multipart batches."""

    wait_time = between(0.0, 0.05)
    network_timeout = _NETWORK_TIMEOUT_S
    connection_timeout = 10.0

    def on_start(self) -> None:
        self.samples = _by_format()
        self.formats, self.weights = _mix(self.samples)
        self.headers: dict[str, str] = {}
        if key := os.environ.get("CXR_LOADTEST_API_KEY"):
            self.headers["X-API-Key"] = key
        model = os.environ.get("CXR_LOADTEST_MODEL")
        self.path = f"/v1/classify?model={model}" if model else "/v1/classify"
        self.max_files = max(2, int(os.environ.get("CXR_LOADTEST_MAX_FILES", "4")))
        self.positive_label = self._positive_label(model)

    def _positive_label(self, model: str | None) -> str:
        """The label the threshold applies to, from /v1/models (the response itself does not say)."""
        with self.client.get(
            "/v1/models", headers=self.headers, name="/v1/models", catch_response=True
        ) as response:
            if response.status_code != 200 or response.text is None:
                response.failure(f"HTTP {response.status_code}")
                return "covid"
            listing = response.json()
            wanted = model or listing["default"]
            for entry in listing["models"]:
                if entry["name"] == wanted:
                    return str(entry["positive_label"])
            response.failure(f"model {wanted} not listed")
            return "covid"

    def _pick(self) -> Sample:
        fmt = random.choices(self.formats, weights=self.weights)[0]
        return random.choice(self.samples[fmt])

    def _post(self, body: bytes, content_type: str, images: int, name: str) -> None:
        headers = {**self.headers, "Content-Type": content_type}
        with self.client.post(
            # bytes go out as they are; locust's annotation of `data` is narrower than its code
            self.path,
            data=body,  # type: ignore[arg-type]
            headers=headers,
            name=name,
            catch_response=True,
        ) as response:
            status = response.status_code
            if status in (429, 503):
                response.failure(f"overloaded: HTTP {status}")
                return
            problem = check_answer(
                status, response.content or b"", images, positive_label=self.positive_label
            )
            if problem is not None:
                response.failure(problem)

    @task(4)
    def single_image(self) -> None:
        sample = self._pick()
        self._post(sample.data, sample.content_type, 1, f"/v1/classify [{sample.fmt}]")

    @task(1)
    def multi_image(self) -> None:
        chosen = [self._pick() for _ in range(random.randint(2, self.max_files))]
        body, content_type = multipart(chosen)
        self._post(body, content_type, len(chosen), "/v1/classify [multipart]")
