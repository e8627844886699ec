"""`cxr serve`: settings from flags and `CXR_*` variables, then one uvicorn process.

SIGTERM (or Ctrl-C): the app stops accepting (503), the batchers get `drain_timeout_s` to finish queued
images and fail the rest with 503, and uvicorn's own graceful-shutdown timeout is set a little longer, so
every request gets an answer and none hangs.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import socket
from types import FrameType
from typing import TYPE_CHECKING

import uvicorn
from pydantic import ValidationError

from service.api.app import begin_drain, create_app
from service.flags import report_invalid
from service.inference.allocator import retain_freed_memory
from service.inference.model import ModelCard, ModelIntegrityError, find_versions, verify_files
from service.settings import Settings, add_cli_flags, from_cli

if TYPE_CHECKING:  # the app itself comes from service.api, the HTTP layer
    from fastapi import FastAPI

logger = logging.getLogger(__name__)

_RESPONSE_GRACE_S = 2.0
"""Time after the drain deadline for the last answers (including the 503s) to be written."""


class _DrainingServer(uvicorn.Server):
    """uvicorn, plus: on the first exit signal, tell the app to drain before uvicorn closes connections."""

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self._app = app
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.should_exit and self._loop is not None:
            # Signal handlers run between bytecodes: hand the work to the event loop.
            self._loop.call_soon_threadsafe(begin_drain, self._app)
        super().handle_exit(sig, frame)


def verify_repository(settings: Settings) -> None:
    """Raise ModelIntegrityError if any model file differs from its card (the lifespan checks again)."""
    for directory in find_versions(settings.model_dir):
        verify_files(directory, ModelCard.load(directory))


def run(settings: Settings) -> int:
    """Serve until a signal; 0 after a clean stop, 3 if the app failed to start (e.g. a bad checksum)."""
    try:
        # Checked before uvicorn starts: a failing lifespan makes uvicorn log a traceback, and an operator
        # should read one line saying which file failed, not a stack.
        verify_repository(settings)
    except ModelIntegrityError as error:
        logger.error("refusing to start: %s", error)
        return 3
    # Before the models load and the first body arrives: see service/inference/allocator.py for what it saves.
    retain_freed_memory(settings.malloc_retain_mib)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,  # service.api.middleware logs each request with its id and route template
        lifespan="on",
        timeout_graceful_shutdown=int(settings.drain_timeout_s + _RESPONSE_GRACE_S + 0.999),
        server_header=False,
    )
    server = _DrainingServer(config, app)
    # uvicorn installs its own SIGINT/SIGTERM handlers while it serves, and on the way out restores the ones
    # it found and raises the signal again for them. The handler found is this one, so a drained service
    # exits 0 (Docker, Kubernetes and systemd read 143 as a kill); a signal arriving before uvicorn's
    # handlers are in place starts the same drain.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, server.handle_exit)
    server.run()
    return 0 if server.started else 3


def add_flags(parser: argparse.ArgumentParser) -> None:
    """`cxr serve`'s flags: one per Settings field."""
    add_cli_flags(parser)


def main(args: argparse.Namespace) -> int:
    """Entry point of `cxr serve` (cxr.cli parses the flags)."""
    try:
        settings = from_cli(args)
    except ValidationError as error:
        report_invalid(error, logger)
        return 2
    logging.getLogger().setLevel(settings.log_level.upper())
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run(settings)
