"""A stand-in classification service that answers as the input-domain check (issue 16) will, for tests of
what `cxr pacs` does with such answers before the real check exists. It is a real ASGI app under a real
uvicorn on a free loopback port; nothing of ours is mocked.

Contract (from the issue): a refused image gets HTTP 422 `application/problem+json` whose `type` ends with
`/not-a-chest-radiograph` and whose `detail` says why; an accepted but flagged image gets a normal result
carrying `"domain": {"verdict": "in" | "out" | "corrected", "reasons": [...]}`. Refusals carry
`domain.failed` as the real service sends it since issue 27 (one entry per failed check, with its score and
the card's threshold); the "out" one also an entry no client can read, which must be left out, not fatal.

Which answer an image gets is read from its Image Comments: `stub:refuse` (422), `stub:out` (200 with
verdict "out"), `stub:corrected` (200, verdict "corrected"); anything else: a plain 200.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn
from pydicom import dcmread
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

REFUSAL_DETAIL = "The image looks like a photograph of a document, not a chest radiograph."
REFUSAL_FAILED = [
    {
        "check": "not_radiograph",
        "score": 0.92,
        "threshold": 0.5,
        "threshold_name": "max_not_radiograph",
        "rule": "score > threshold refuses",
    }
]
OUT_REASONS = ["no lung fields found", "colour photograph"]
OUT_FAILED = [
    {
        "check": "lung_largest_area",
        "score": 0.004,
        "threshold": 0.02,
        "threshold_name": "min_lung_area",
        "rule": "score < threshold refuses",
    },
    {
        "check": "colour_fraction",
        "score": 0.6,
        "threshold": 0.1,
        "threshold_name": "max_colour_fraction",
        "rule": "score > threshold refuses",
    },
    {"check": "from a newer service", "score": "not a number"},  # left out by the client, not fatal
]
CORRECTED_REASONS = ["inverted polarity corrected"]
MODEL = {"name": "stub", "version": "0", "sha256": "0" * 64}


async def _models(request: Request) -> JSONResponse:
    # No "cam" output: the client must not ask for a heatmap, and the SC says there is none.
    listing = {
        **MODEL,
        "positive_label": "covid",
        "labels": ["non-covid", "covid"],
        "outputs": ["probabilities"],
    }
    return JSONResponse({"default": "stub", "models": [{**listing, "default": True}]})


def _result(domain: dict[str, Any] | None) -> dict[str, Any]:
    result: dict[str, Any] = {
        "index": 0,
        "label": "non-covid",
        "probabilities": {"non-covid": 0.8, "covid": 0.2},
        "threshold": 0.5,
        "model": MODEL,
        "flags": {},
    }
    if domain is not None:
        result["domain"] = domain
    return result


async def _classify(request: Request) -> JSONResponse:
    dataset = dcmread(io.BytesIO(await request.body()), stop_before_pixels=True, force=True)
    marker = str(dataset.get("ImageComments", ""))
    if marker == "stub:refuse":
        problem = {
            "type": "https://cxr-covid.example/problems/not-a-chest-radiograph",
            "title": "Not a chest radiograph",
            "status": 422,
            "detail": REFUSAL_DETAIL,
            "instance": "/v1/classify",
            "domain": {"verdict": "out", "reasons": [REFUSAL_DETAIL], "failed": REFUSAL_FAILED},
        }
        return JSONResponse(problem, status_code=422, media_type="application/problem+json")
    domain = None
    if marker == "stub:out":
        domain = {"verdict": "out", "reasons": OUT_REASONS, "failed": OUT_FAILED}
    elif marker == "stub:corrected":
        domain = {"verdict": "corrected", "reasons": CORRECTED_REASONS}
    return JSONResponse({"request_id": "stub", "results": [_result(domain)]})


def app() -> Starlette:
    return Starlette(
        routes=[Route("/v1/models", _models), Route("/v1/classify", _classify, methods=["POST"])]
    )


@contextmanager
def running() -> Iterator[str]:
    """The stub served by uvicorn on a free loopback port (the kernel picks it); yields its base URL."""
    server = uvicorn.Server(
        uvicorn.Config(app(), host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the stub service did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
