"""What a route needs from the app: the lifespan's state (service.state.Runtime)."""

from __future__ import annotations

from typing import cast

from fastapi import Request

from service.state import Runtime


def runtime_of(request: Request) -> Runtime:
    """The Runtime the lifespan put on `app.state` (service.api.app)."""
    return cast(Runtime, request.app.state.runtime)
