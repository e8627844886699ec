"""API key gate: `Authorization: Bearer <key>` or `X-API-Key: <key>`, checked in constant time.

Keys come from settings, plain or as `sha256:<hex>` (so a deployment need not store the key itself).
With no keys configured the gate is open. Every configured key is compared, match or not, so the time
taken does not reveal which key (or which prefix) came close.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from typing import Annotated, cast

from fastapi import Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from service.errors import Unauthorized
from service.settings import Settings

_api_key_header = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="API key, when the service has keys"
)
_bearer = HTTPBearer(auto_error=False, description="API key as a bearer token, when the service has keys")


def key_matches(presented: str, keys: Sequence[str]) -> bool:
    """True if `presented` equals a plain key or hashes to a `sha256:<hex>` key."""
    given = presented.encode()
    digest = hashlib.sha256(given).hexdigest().encode()
    matched = False
    for key in keys:
        if key.startswith("sha256:"):
            matched |= hmac.compare_digest(digest, key.removeprefix("sha256:").encode())
        else:
            matched |= hmac.compare_digest(given, key.encode())
    return matched


async def require_api_key(
    request: Request,
    header_key: Annotated[str | None, Security(_api_key_header)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
) -> None:
    """FastAPI dependency: raises Unauthorized (401) unless keys are off or a valid key is presented."""
    settings = cast(Settings, request.app.state.settings)
    if not settings.api_keys:
        return
    presented = header_key or (bearer.credentials if bearer is not None else None)
    if not presented:
        raise Unauthorized(
            "An API key is required (Authorization: Bearer <key> or X-API-Key).", headers=_CHALLENGE
        )
    if not key_matches(presented, settings.api_keys):
        raise Unauthorized("The API key is not valid.", headers=_CHALLENGE)


_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="cxr"'}
