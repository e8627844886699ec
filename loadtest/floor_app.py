"""The HTTP floor: uvicorn with an ASGI app that only reads the request body, for the benchmark only.

It answers every POST with a fixed classification-shaped JSON (so the load generator's short answer check
passes) without decoding anything: what it costs per request, on the server's event loop thread and in
the load generator, is what any app under stock uvicorn pays to receive the same 2.5 MB bodies on these
cores. The benchmark sets it next to the service's own cost per request. Not a classifier.

    uvicorn loadtest.floor_app:app --port 8002 --no-access-log
"""

from __future__ import annotations

from typing import Any

_ANSWER = b'{"results":[{"label":"normal","probabilities":{"covid":0.0,"normal":1.0},"threshold":0.5}]}'


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["type"] != "http":
        return
    chunks = []
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    b"".join(chunks)  # the one copy every app makes to hand the body on
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(_ANSWER))],
        }
    )
    await send({"type": "http.response.body", "body": _ANSWER})
