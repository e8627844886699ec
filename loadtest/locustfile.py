"""Locust load test of POST /v1/classify with real chest X-rays (research use only).

    locust -f loadtest/locustfile.py --headless --host http://127.0.0.1:8000 \\
        -u 16 -r 4 -t 60s --csv results/locust --only-summary

Images: `CXR_LOADTEST_IMAGES` (folders separated by `:`), default `../shared/data/{fullres,cxr,dicom}`,
else synthetic images (loadtest/images.py). When the test starts, each image is sent once to the target
(POST /v1/classify): those it refuses as not a frontal chest radiograph (422 `.../not-a-chest-radiograph`)
are reported, one log line each with the service's reason, and left out of the mix (loadtest/refusals.py),
so the run measures classifications; if it refuses them all, locust stops with one error line (exit 1).
Every answer is checked (loadtest/checks.py): a 200 with missing fields, probabilities that do not sum to
1 or a label that contradicts the threshold is a failure, and so is an overload answer (503/429), named as
such in the failure table.

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

import httpx
from locust import FastHttpUser, between, events, task
from locust.env import Environment
from locust.runners import MasterRunner

from loadtest.checks import check_answer
from loadtest.images import Sample, load_samples, multipart
from loadtest.refusals import leave_out, refused_by_service

logger = logging.getLogger(__name__)

_NETWORK_TIMEOUT_S = 60.0
"""Longer than any service deadline: the service's own 504 must be what a slow request sees."""


@functools.cache
def _loaded() -> list[Sample]:
    return load_samples()


_SENT: dict[str, list[Sample]] = {}
"""By target host: the samples it classifies (`_check_samples`)."""


def _by_format(host: str | None) -> dict[str, list[Sample]]:
    grouped: dict[str, list[Sample]] = {}
    for sample in _SENT.get(host or "", _loaded()):
        grouped.setdefault(sample.fmt, []).append(sample)
    return grouped


def _headers() -> dict[str, str]:
    key = os.environ.get("CXR_LOADTEST_API_KEY")
    return {"X-API-Key": key} if key else {}


def _path() -> str:
    model = os.environ.get("CXR_LOADTEST_MODEL")
    return f"/v1/classify?model={model}" if model else "/v1/classify"


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


def _counts(samples: dict[str, list[Sample]]) -> str:
    return ", ".join(f"{len(group)} {fmt}" for fmt, group in sorted(samples.items()))


def _load_images(environment: Environment, **_: Any) -> None:
    # Load (and validate) the images before the first user spawns, not in the middle of the ramp-up, and
    # check them against the target now when it is known: at test start the run-time clock already runs.
    logger.info("cxr loadtest images: %s", _counts(_by_format(None)))
    _check_samples(environment)


def _check_samples(environment: Environment, **_: Any) -> None:
    """Once per target, before the first user spawns (at init, or at test start when the host is chosen in
    the web UI): send each sample once and leave out those the target refuses as not a chest radiograph
    (its right answer to them, which a load test would count as a failure). The master of a distributed
    run sends nothing, so it checks nothing; each worker checks."""
    host = environment.host
    if isinstance(environment.runner, MasterRunner) or not host or host in _SENT:
        return
    samples = _loaded()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per probe would bury the refusals
    try:
        refused = refused_by_service(samples, host.rstrip("/") + _path(), headers=_headers())
    except httpx.TransportError as error:
        # The run itself will show what is wrong with the target; the mix stays as it is.
        logger.warning("could not check the images against %s (%s): sending all", host, error)
        refused = []
    kept = leave_out(samples, refused)
    if not kept:
        logger.error(
            "cxr loadtest: %s refuses all %d images as not chest radiographs; nothing to send "
            "(set CXR_LOADTEST_IMAGES to folders of chest radiographs)",
            host,
            len(samples),
        )
        raise SystemExit(1)  # locust exits with this code at once, before any user starts
    _SENT[host] = kept
    logger.info("cxr loadtest: sending %d of %d images to %s", len(kept), len(samples), host)


events.init.add_listener(_load_images)  # type: ignore[no-untyped-call]
events.test_start.add_listener(_check_samples)  # type: ignore[no-untyped-call]


class ClassifyUser(FastHttpUser):
    """One client posting X-rays back to back (closed loop): mostly single images, some multipart batches."""

    wait_time = between(0.0, 0.05)
    network_timeout = _NETWORK_TIMEOUT_S
    connection_timeout = 10.0

    def on_start(self) -> None:
        self.samples = _by_format(self.host)
        self.formats, self.weights = _mix(self.samples)
        self.headers = _headers()
        model = os.environ.get("CXR_LOADTEST_MODEL")
        self.path = _path()
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
