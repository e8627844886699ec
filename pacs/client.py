"""Classify DICOM bytes through a running `cxr serve` (POST /v1/classify, raw `application/dicom` body).

Answers are sorted for the retry loop: connection failures, timeouts, 429, 502, 503 and 504 are
`Transient` (503 and 429 carry Retry-After); 400/413/415/422 are `Permanent` (problem type
`unsupported-dicom` becomes kind "unsupported": a policy skip such as a lateral-only series or a hand
radiograph, not a fault); 401/403 and 404 (unknown model) are `Permanent` of kind "config": the pass
stops and exits 2 without marking any image failed.

Out-of-domain images (the service's input-domain check): a 422 whose problem `type` ends with
`/not-a-chest-radiograph`, or a 200 result whose `domain.verdict` is "out", raise `OutOfDomain` with the
service's reason and the checks that failed (`domain.failed`: score and the card's threshold): the image
was not analysed, so there is no score and no heatmap to write.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import httpx

from pacs.retry import Backoff, Permanent, Transient, retry
from service.imaging.domain_verdict import FailedCheck

logger = logging.getLogger(__name__)

_TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class Classification:
    """One image's answer, as the SR and the report need it."""

    label: str
    positive_label: str
    probability: float
    """p(positive_label)."""
    probabilities: dict[str, float]
    threshold: float
    model_name: str
    model_version: str
    model_sha256: str
    flags: dict[str, str]
    domain: dict[str, Any] | None = None
    """The service's input-domain verdict when it gave one: {"verdict": "in" | "corrected", "reasons": [...]}."""
    heatmap: bytes | None = field(default=None, repr=False, compare=False)
    """The CAM as a PNG on the decoded image's grid (asked for with `heatmap=True`); not kept in the ledger:
    the SC drawn from it is."""

    @property
    def positive(self) -> bool:
        return self.label == self.positive_label

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "positive_label": self.positive_label,
            "probability": self.probability,
            "probabilities": self.probabilities,
            "threshold": self.threshold,
            "model": {"name": self.model_name, "version": self.model_version, "sha256": self.model_sha256},
            "flags": self.flags,
            **({"domain": self.domain} if self.domain else {}),
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Classification:
        return cls(
            label=str(raw["label"]),
            positive_label=str(raw["positive_label"]),
            probability=float(raw["probability"]),
            probabilities={str(k): float(v) for k, v in raw["probabilities"].items()},
            threshold=float(raw["threshold"]),
            model_name=str(raw["model"]["name"]),
            model_version=str(raw["model"]["version"]),
            model_sha256=str(raw["model"]["sha256"]),
            flags={str(k): str(v) for k, v in raw.get("flags", {}).items()},
            domain=raw.get("domain"),
        )


class OutOfDomain(Permanent):
    """The service refused to analyse the image (not a chest radiograph, per its input-domain check);
    `reason` is the service's own explanation, `failed` the checks that refused it, each with its score
    and the model card's threshold (empty from a service that does not send them)."""

    def __init__(self, reason: str, failed: list[FailedCheck] | None = None) -> None:
        super().__init__(f"not analysed: {reason}", kind="out-of-domain")
        self.reason = reason
        self.failed = failed or []


def failed_checks(domain: object) -> list[FailedCheck]:
    """The `failed` list of a `domain` verdict from the service; entries that do not parse are left out
    (the reason still says what failed), as is the whole list from a service too old to send it."""
    entries = domain.get("failed") if isinstance(domain, dict) else None
    parsed: list[FailedCheck] = []
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, dict):
            with contextlib.suppress(ValueError):
                parsed.append(FailedCheck.from_dict(entry))
    return parsed


NOT_A_CHEST_RADIOGRAPH = "/not-a-chest-radiograph"
"""The end of the problem `type` the service's input-domain check answers 422 with."""


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


def transport_error(error: httpx.TransportError, what: str) -> Transient | Permanent:
    """A failed exchange: transient (refused, reset, timeout), except a TLS certificate that does not
    verify, which no retry will fix (kind "config": fix the CA bundle or the server's certificate)."""
    text = str(error)
    if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
        return Permanent(
            f"{what}: TLS certificate verification failed (--ca-bundle or --no-tls-verify)", kind="config"
        )
    return Transient(f"{what}: {type(error).__name__}")


def raise_for_status(response: httpx.Response, what: str, *, not_found: str = "invalid") -> None:
    """Map an HTTP answer onto Transient/Permanent (shared with pacs.dicomweb); `not_found` is the kind of
    a 404: an image deleted meanwhile ("invalid") or, from the service, an unknown model ("config")."""
    if response.is_success:
        return
    detail = ""
    problem_type = ""
    domain = None
    if "json" in response.headers.get("Content-Type", ""):
        try:
            body = response.json()
            detail = str(body.get("detail", ""))[:300]
            problem_type = str(body.get("type", ""))
            domain = body.get("domain")
        except ValueError:
            pass
    message = f"{what}: HTTP {response.status_code}" + (f" ({detail})" if detail else "")
    if response.status_code in _TRANSIENT_STATUS:
        raise Transient(message, retry_after_s=_retry_after(response))
    if response.status_code == 422 and problem_type.endswith(NOT_A_CHEST_RADIOGRAPH):
        raise OutOfDomain(
            detail or "the service's input-domain check refused the image", failed_checks(domain)
        )
    if response.status_code in (401, 403, 404, 407):
        raise Permanent(message, kind="config" if response.status_code != 404 else not_found)
    kind = "unsupported" if problem_type.endswith("#unsupported-dicom") else "invalid"
    raise Permanent(message, kind=kind)


class ServiceClient:
    """A client of one service deployment; safe to share between threads (httpx.Client is)."""

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        model: str | None = None,
        verify: bool | str = True,
        timeout_s: float = 30.0,
        backoff: Backoff | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(
            base_url=url.rstrip("/"), headers=headers, verify=verify, timeout=timeout_s, trust_env=False
        )
        self._model = model
        self._backoff = backoff or Backoff()
        self._stop = stop
        self._models: dict[str | None, tuple[str, str, bool]] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as error:  # refused, reset, timeout, DNS: the service may come back
            raise transport_error(error, f"service {method} {path}") from None
        raise_for_status(response, f"service {method} {path}", not_found="config")
        return response

    def _model_info(self, name: str | None) -> tuple[str, str, bool]:
        """(name, positive label, has a CAM output) of `name`, or of the default model when None."""
        with self._lock:
            if name in self._models:
                return self._models[name]
        response = retry(
            lambda: self._request("GET", "/v1/models"), self._backoff, what="GET /v1/models", stop=self._stop
        )
        listing = response.json()
        with self._lock:
            for model in listing.get("models", []):
                info = (str(model["name"]), str(model["positive_label"]), "cam" in model.get("outputs", []))
                self._models[info[0]] = info
                if model.get("default"):
                    self._models[None] = info
            if name not in self._models:
                raise Permanent(f"the service does not list model {name or '(default)'}", kind="config")
            return self._models[name]

    def classify(self, dicom: bytes, *, heatmap: bool = False) -> Classification:
        """One DICOM image -> its classification, retrying transient failures within the backoff budget.

        `heatmap`: also fetch the class activation map, when the model has one (else `heatmap` stays None).
        Raises OutOfDomain when the service says the image is not a chest radiograph."""
        params = {"model": self._model} if self._model else {}
        if heatmap and self._model_info(self._model)[2]:
            params["heatmap"] = "true"

        def post() -> httpx.Response:
            return self._request(
                "POST",
                "/v1/classify",
                content=dicom,
                params=params,
                headers={"Content-Type": "application/dicom"},
            )

        body = retry(post, self._backoff, what="POST /v1/classify", stop=self._stop).json()
        result = body["results"][0]
        domain = result.get("domain")
        if isinstance(domain, dict) and domain.get("verdict") == "out":
            reasons = "; ".join(str(reason) for reason in domain.get("reasons", [])) or "no reason given"
            raise OutOfDomain(reasons, failed_checks(domain))
        model = result["model"]
        positive = self._model_info(str(model["name"]))[1]
        probabilities = {str(k): float(v) for k, v in result["probabilities"].items()}
        heat = result.get("heatmap")
        return Classification(
            label=str(result["label"]),
            positive_label=positive,
            probability=probabilities[positive],
            probabilities=probabilities,
            threshold=float(result["threshold"]),
            model_name=str(model["name"]),
            model_version=str(model["version"]),
            model_sha256=str(model["sha256"]),
            flags={str(k): str(v) for k, v in result.get("flags", {}).items()},
            domain=(
                {
                    "verdict": str(domain.get("verdict")),
                    "reasons": [str(r) for r in domain.get("reasons", [])],
                }
                if isinstance(domain, dict)
                else None
            ),
            heatmap=base64.b64decode(heat["data"]) if isinstance(heat, dict) and heat.get("data") else None,
        )
