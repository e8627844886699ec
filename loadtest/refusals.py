"""Which load-test samples the service refuses as not a frontal chest radiograph, so that a load test sends
only what the service should classify.

A refusal (422, problem type ending `/not-a-chest-radiograph`) is the right answer to such a sample, but
a load test that sends it measures refusals and counts them as failures (issue 27: a photographed
monitor among the default images failed 2 of 304 locust requests). Two ways to ask, one answer:
`refused_by_service` POSTs each sample once to a running service (the locustfile, which knows only the
target's URL); `refused_by_model` runs the model's own input-domain check in process (`cxr bench`, which
starts the service itself from that model). Reasons are the service's own words: sizes, scores and
thresholds, never pixel data.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import httpx

from loadtest.images import Sample
from service.errors import CxrError
from service.imaging.decode import decode
from service.inference.model import OnnxModel

logger = logging.getLogger(__name__)

NOT_A_CHEST_RADIOGRAPH = "/not-a-chest-radiograph"
"""The end of the problem `type` the service's input-domain check answers 422 with."""


@dataclass(frozen=True)
class Refusal:
    """A sample the service will not classify, and why (the problem's `detail`, or the check's summary)."""

    sample: Sample
    reason: str


def refused_by_service(
    samples: list[Sample], url: str, *, headers: dict[str, str] | None = None, timeout_s: float = 60.0
) -> list[Refusal]:
    """POST each sample once, alone, to `url` (a `/v1/classify` URL): those answered 422 with a problem
    type ending in `/not-a-chest-radiograph`. Any other answer keeps the sample: a 5xx or a 401 is for
    the load test itself to report. Raises httpx.TransportError when the service cannot be reached."""
    refused: list[Refusal] = []
    with httpx.Client(timeout=timeout_s) as client:
        for sample in samples:
            response = client.post(
                url, content=sample.data, headers={**(headers or {}), "Content-Type": sample.content_type}
            )
            if response.status_code != 422:
                continue
            try:
                problem = response.json()
            except ValueError:
                continue
            if isinstance(problem, dict) and str(problem.get("type", "")).endswith(NOT_A_CHEST_RADIOGRAPH):
                refused.append(Refusal(sample, str(problem.get("detail", "no reason given"))))
    return refused


def refused_by_model(samples: list[Sample], model: OnnxModel) -> list[Refusal]:
    """Samples `model`'s input-domain check finds out of domain: those a `cxr serve` of that model
    refuses with 422 under its default domain policy (refuse)."""
    refused: list[Refusal] = []
    for sample in samples:
        try:
            _, _, verdict = model.prepare(decode(sample.data, fmt=sample.fmt))
        except CxrError as error:  # images.load_folder already left out what does not decode
            refused.append(Refusal(sample, error.detail))
            continue
        if verdict.verdict == "out":
            refused.append(Refusal(sample, verdict.summary))
    return refused


def leave_out(samples: list[Sample], refused: list[Refusal]) -> list[Sample]:
    """`samples` without the refused ones, each reported once: one warning line, its file name and the
    reason."""
    for refusal in refused:
        logger.warning("leaving out %s: the service refuses it (%s)", refusal.sample.name, refusal.reason)
    return [sample for sample in samples if not any(sample is refusal.sample for refusal in refused)]
