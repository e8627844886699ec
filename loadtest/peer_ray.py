"""The peer framework for the benchmark: Ray Serve with `@serve.batch`, on the same ONNX model and the
same preprocessing as the service (service.imaging.decode + OnnxModel.prepare/run).

Set up the way Ray's documentation recommends for batching, and given the service's advantages so the
comparison is about the framework: one replica, `max_ongoing_requests` high enough for batches to form,
decoding on a pool of one thread per core (as the service) and `session.run` on a thread of its own, the same
intra-op thread count, batch size and batch wait as the service. Ray's HTTP proxy runs in its own actor
process and forwards each request to the replica.

    python -m loadtest.peer_ray --model-dir models/cxr-compact/1 --port 8002
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no phoning home from a benchmark

import ray  # after the environment it reads at import
from ray import serve

from service.inference.cpus import usable_cpus

logger = logging.getLogger(__name__)


@serve.deployment(max_ongoing_requests=512, ray_actor_options={"num_cpus": 0})
class Classifier:
    def __init__(
        self, model_dir: str, max_batch_size: int, max_delay_s: float, intra_op_threads: int
    ) -> None:
        from service.imaging.decode import decode
        from service.inference.model import OnnxModel

        self._decode = decode
        self.model = OnnxModel(
            Path(model_dir),
            providers=["CPUExecutionProvider"],
            intra_op_threads=intra_op_threads,
        )
        self.decoder = ThreadPoolExecutor(max_workers=usable_cpus())  # as the service: one per core
        self.runner = ThreadPoolExecutor(max_workers=1)
        # @serve.batch's wrapper carries these setters; its annotation does not say so.
        self.infer.set_max_batch_size(max_batch_size)  # type: ignore[attr-defined]
        self.infer.set_batch_wait_timeout_s(max_delay_s)  # type: ignore[attr-defined]
        size = self.model.input_size
        for batch in range(1, max_batch_size + 1):  # warm every shape, as the service does
            self.model.run(np.zeros((batch, size, size, 1), dtype=np.float32))

    def _prepare(self, data: bytes) -> np.ndarray:
        tensor, _, _ = self.model.prepare(self._decode(data))
        return tensor

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.002)
    async def infer(self, tensors: list[np.ndarray]) -> list[np.ndarray]:
        loop = asyncio.get_running_loop()
        probabilities, _ = await loop.run_in_executor(self.runner, self.model.run, np.stack(tensors))
        return list(probabilities)

    async def __call__(self, request: Request) -> Any:
        if request.url.path.rstrip("/").endswith("healthz"):
            return {"status": "ok"}
        body = await request.body()
        try:
            tensor = await asyncio.get_running_loop().run_in_executor(self.decoder, self._prepare, body)
        except Exception as error:  # the service's CxrError family: report, as the service would
            return JSONResponse({"detail": str(error)}, status_code=getattr(error, "status", 500))
        probabilities = await self.infer(tensor)
        card = self.model.card
        positive = float(probabilities[self.model.positive_index])
        negative = next(label for label in card.labels if label != card.positive_label)
        return {
            "results": [
                {
                    "label": card.positive_label if positive >= card.threshold else negative,
                    "probabilities": dict(zip(card.labels, map(float, probabilities), strict=True)),
                    "threshold": card.threshold,
                }
            ]
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True, help="a model version directory (card.json)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--max-queue-delay-ms", type=float, default=2.0)
    parser.add_argument("--intra-op-threads", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    ray.init(
        num_cpus=usable_cpus(),
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": os.environ.get("PYTHONPATH", "")}},
    )
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
        app = Classifier.bind(  # type: ignore[attr-defined]
            args.model_dir, args.max_batch_size, args.max_queue_delay_ms / 1000.0, args.intra_op_threads
        )
        serve.run(app, route_prefix="/", blocking=False)
        # targets.launch waits for this line, then polls /healthz through Ray's proxy.
        logger.info("Ray Serve peer running on http://127.0.0.1:%d", args.port)
        stop.wait()
    finally:
        serve.shutdown()  # type: ignore[no-untyped-call]
        ray.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
