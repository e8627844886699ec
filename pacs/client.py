"""Classify DICOM bytes through a running `cxr serve` (POST /v1/classify, raw `application/dicom` body).

Answers are sorted for the retry loop: connection failures, timeouts, 429, 502, 503 and 504 are
`Transient` (503 and 429 carry Retry-After); 400/413/415/422 are `Permanent` (problem type
`unsupported-dicom` becomes kind "unsupported": a policy skip such as a lateral-only series or a hand
radiograph, not a fault); 401/403 and 404 (unknown model) are `Permanent` of kind "config": the pass
stops and exits 2 without marking any image failed.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

import httpx

from pacs.retry import Backoff, Permanent, Transient, retry

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
        )


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
    if "json" in response.headers.get("Content-Type", ""):
        try:
            body = response.json()
            detail = str(body.get("detail", ""))[:300]
            problem_type = str(body.get("type", ""))
        except ValueError:
            pass
    message = f"{what}: HTTP {response.status_code}" + (f" ({detail})" if detail else "")
    if response.status_code in _TRANSIENT_STATUS:
        raise Transient(message, retry_after_s=_retry_after(response))
    if response.status_code in (401, 403, 404, 407):
        raise Permanent(message, kind="config" if response.status_code != 404 else not_found)
    if problem_type.endswith("/not-a-chest-radiograph"):  # the service's input-domain check
        raise Permanent(f"not analysed: {detail or 'not a frontal chest radiograph'}", kind="out-of-domain")
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
        self._positive: dict[str, str] = {}
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

    def _positive_label(self, name: str) -> str:
        with self._lock:
            if name in self._positive:
                return self._positive[name]
        response = retry(
            lambda: self._request("GET", "/v1/models"), self._backoff, what="GET /v1/models", stop=self._stop
        )
        for model in response.json().get("models", []):
            with self._lock:
                self._positive[str(model["name"])] = str(model["positive_label"])
        if name not in self._positive:
            raise Permanent(f"the service does not list model {name}", kind="config")
        return self._positive[name]

    def classify(self, dicom: bytes) -> Classification:
        """One DICOM image -> its classification, retrying transient failures within the backoff budget."""
        params = {"model": self._model} if self._model else {}

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
        model = result["model"]
        positive = self._positive_label(str(model["name"]))
        probabilities = {str(k): float(v) for k, v in result["probabilities"].items()}
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
        )
