"""The model repository as served: every verified model version, each with its own batcher.

Loading verifies every file's sha256 against its card (service.inference.model); one mismatch and the service does
not start. Requests name a model (`?model=NAME`, optionally `&version=V`); the default is the settings'
`default_model`, else `<repo>/default.json`'s `"model"`, else the first name in sorted order. A name
without a version means its newest version.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from service.errors import NotFound, Overloaded, TooManyRequests
from service.inference.batcher import Batcher
from service.inference.model import OnnxModel, find_versions
from service.metrics import Metrics
from service.settings import Settings

logger = logging.getLogger(__name__)


def _depth_of(batcher: Batcher) -> Callable[[], int]:
    return lambda: batcher.depth


@dataclass(frozen=True)
class ServedModel:
    """One model version and the batcher in front of its session."""

    model: OnnxModel
    batcher: Batcher

    @property
    def key(self) -> str:
        return f"{self.model.name}/{self.model.version}"


class ModelRepository:
    """Loads and verifies every version (constructor; raises ModelIntegrityError), then `start()`,
    `warm()` and `aclose()` from the lifespan. Construct it inside a running event loop."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self._by_name: dict[str, list[ServedModel]] = {}
        overloaded: type[Overloaded] = TooManyRequests if settings.overload_status == 429 else Overloaded
        self.overloaded = overloaded
        retry = {"Retry-After": str(settings.retry_after_s)}
        for directory in find_versions(settings.model_dir):
            model = OnnxModel(
                directory, providers=settings.providers or None, intra_op_threads=settings.intra_op_threads
            )
            key = f"{model.name}/{model.version}"
            batcher = Batcher(
                model,
                name=key,
                max_batch_size=settings.max_batch_size,
                max_delay_s=settings.max_queue_delay_ms / 1000.0,
                capacity=settings.queue_capacity,
                overloaded=lambda detail: overloaded(detail, headers=retry),
                observer=metrics.observer(key),
            )
            metrics.track_depth(key, _depth_of(batcher))
            # find_versions lists each name's versions oldest first, so the last one is the newest.
            self._by_name.setdefault(model.name, []).append(ServedModel(model, batcher))
            logger.info(
                "loaded model %s (sha256 %s..., providers %s)", key, model.sha256[:12], model.providers
            )
        if not self._by_name:
            raise FileNotFoundError(f"no model found under {settings.model_dir}")
        self.default_name = self._choose_default()

    def _choose_default(self) -> str:
        name: str | None
        if self.settings.default_model is not None:
            name = self.settings.default_model
        else:
            marker = self.settings.model_dir / "default.json"
            chosen = json.loads(marker.read_text()).get("model") if marker.is_file() else None
            name = str(chosen) if chosen is not None else None
        if name is None or name not in self._by_name:
            if name is not None:
                logger.warning(
                    "default model %r is not in the repository; using %s", name, min(self._by_name)
                )
            name = min(self._by_name)
        return str(name)

    def all(self) -> list[ServedModel]:
        return [served for versions in self._by_name.values() for served in versions]

    def get(self, name: str | None = None, version: str | None = None) -> ServedModel:
        """The requested model version (newest when `version` is None); NotFound names what exists."""
        versions = self._by_name.get(name or self.default_name)
        if versions is None:
            raise NotFound(f"No model named {name!r}; available: {', '.join(sorted(self._by_name))}.")
        if version is None:
            return versions[-1]
        for served in versions:
            if served.model.version == version:
                return served
        have = ", ".join(served.model.version for served in versions)
        raise NotFound(f"Model {name!r} has no version {version!r}; available: {have}.")

    def start(self) -> None:
        for served in self.all():
            served.batcher.start()

    async def warm(self) -> None:
        """Run and time every padded batch shape of every model, choosing each one's batch policy; only
        then is the service ready."""
        for served in self.all():
            size = served.model.input_size
            policy = await served.batcher.warm((size, size, 1), mode=self.settings.batch_policy)
            figures = ", ".join(f"{batch}: {rate:.1f}" for batch, rate in policy.images_per_s.items())
            logger.info(
                "warmed %s: batch policy %s, batches up to %d: %s; warm-up images/s by batch size {%s}",
                served.key,
                policy.mode,
                policy.max_batch_size,
                policy.reason,
                figures,
            )

    async def aclose(self, timeout: float) -> None:
        """Drain every batcher in parallel within `timeout` seconds."""
        await asyncio.gather(*(served.batcher.aclose(timeout) for served in self.all()))

    def describe(self) -> list[dict[str, Any]]:
        return [
            {
                **served.model.describe(),
                "default": served.model.name == self.default_name and served is self.get(),
            }
            for served in self.all()
        ]
