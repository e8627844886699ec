"""A peer for the image path: NVIDIA's Triton Inference Server through PyTriton 0.7 (Triton 2.51, python
backend only) doing the job of `/v1/classify`: an uploaded JPEG in, decoded, prepared as the service does
(OnnxModel.prepare: the input-domain check, lung crop, resize, CLAHE), ONNX Runtime, probabilities out.

Set up the way PyTriton documents it: one bound inference callable per model instance (`infer_func=[...]`,
each instance a thread of the proxy with its own ONNX Runtime session), `@batch` over the batch Triton's
dynamic batcher forms (`DynamicBatcher`, preferred batch sizes up to the maximum, a short queue delay). The
request is Triton's own: a BYTES tensor `image` holding the file, sent with the binary tensor extension
(loadtest/peers.py builds the body); the answer is a BYTES tensor `result` holding the same JSON object the
other peers answer (`label`, `probabilities`, `threshold`), so the bench checks every peer the same way.
Each of the N instances gets `cores // N` intra-op threads and decodes its batch on as many threads.

Decoding (`--decoder`): `service` (service.imaging.decode) or `pillow` (loadtest/pillow_decode.py). An
image that cannot be decoded gets `{"error": ...}` as its result, and the rest of its batch is classified;
like the other peers, it runs the input-domain check (part of the work) but does not act on its verdict
(the bench sends only films the check accepts).

It runs from PyTriton's virtual environment (loadtest/peers.py creates it; numpy<2), with this repository on
PYTHONPATH:

    python -m loadtest.peer_pytriton_image --model-dir models/cxr-compact/1 --http-port 8011 \\
        --grpc-port 8012 --metrics-port 8013
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, QueuePolicy, Tensor, TimeoutAction
from pytriton.triton import Triton, TritonSecurityConfig

from loadtest.peer_pytriton import loopback_config
from loadtest.pillow_decode import decode_pillow
from service.errors import CxrError
from service.imaging.decode import decode
from service.inference.cpus import usable_cpus
from service.inference.decision import label_for
from service.inference.model import OnnxModel

logger = logging.getLogger(__name__)
MODEL_NAME = "cxr-image"
"""The name the image peer serves under (`/v2/models/cxr-image/infer`), apart from the tensor model's."""
TOKEN_VARIABLE = "PYTRITON_BENCH_ACCESS_TOKEN"
"""The access token of PyTriton's restricted endpoints (else PyTriton makes one no client knows)."""


class Instance:
    """One model instance: its own session, decode threads and warm shapes."""

    def __init__(self, model_dir: Path, decoder: str, threads: int, max_batch_size: int) -> None:
        self.model = OnnxModel(model_dir, providers=["CPUExecutionProvider"], intra_op_threads=threads)
        self.decode = decode_pillow if decoder == "pillow" else decode
        self.pool = ThreadPoolExecutor(max_workers=threads)
        size = self.model.input_size
        for rows in range(1, max_batch_size + 1):  # warm every shape, as the service does
            self.model.run(np.zeros((rows, size, size, 1), dtype=np.float32))

    def _prepare(self, body: bytes) -> np.ndarray | str:
        """The image's tensor, or why it is not classified (a failed request fails only itself, not the
        batch Triton put it in)."""
        try:
            tensor, _, _ = self.model.prepare(self.decode(body))
        except CxrError as error:
            return error.detail
        return tensor

    def __call__(self, image: np.ndarray) -> dict[str, np.ndarray]:
        prepared = list(self.pool.map(self._prepare, [bytes(row[0]) for row in image]))
        tensors = [item for item in prepared if not isinstance(item, str)]
        rows = iter(self.model.run(np.stack(tensors))[0] if tensors else [])
        card = self.model.card
        results: list[dict[str, Any]] = []
        for item in prepared:
            if isinstance(item, str):
                results.append({"error": item})
                continue
            row = next(rows)
            results.append(
                {
                    "label": label_for(row, card),
                    "probabilities": dict(zip(card.labels, map(float, row), strict=True)),
                    "threshold": card.threshold,
                }
            )
        encoded = [json.dumps(result).encode() for result in results]
        return {"result": np.array(encoded, dtype=np.bytes_).reshape(-1, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True, type=Path, help="the model version folder")
    parser.add_argument("--decoder", choices=["service", "pillow"], default="service")
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--instances", type=int, default=1)
    parser.add_argument("--queue-delay-ms", type=float, default=2.0, help="the dynamic batcher's delay")
    parser.add_argument("--timeout-s", type=float, default=10.0, help="requests waiting longer are refused")
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    threads = max(1, usable_cpus() // args.instances)
    instances = [
        Instance(args.model_dir, args.decoder, threads, args.max_batch_size) for _ in range(args.instances)
    ]
    config = loopback_config(args.http_port, args.grpc_port, args.metrics_port)
    # The batcher takes every batch size up to the maximum (a batch of 1 is the max-batch-1 setting), and
    # drops what waited past the timeout, as the service sheds what passed its deadline.
    preferred = [size for size in (2, 4, 8) if size <= args.max_batch_size]
    batcher = DynamicBatcher(
        max_queue_delay_microseconds=int(args.queue_delay_ms * 1000),
        preferred_batch_size=preferred or None,
        default_queue_policy=QueuePolicy(
            timeout_action=TimeoutAction.REJECT, default_timeout_microseconds=int(args.timeout_s * 1e6)
        ),
    )
    security = TritonSecurityConfig(access_token=os.environ.get(TOKEN_VARIABLE) or None)
    with Triton(config=config, security_config=security) as triton:
        triton.bind(
            model_name=MODEL_NAME,
            infer_func=[batch(instance) for instance in instances],
            inputs=[Tensor(name="image", dtype=np.bytes_, shape=(1,))],
            outputs=[Tensor(name="result", dtype=np.bytes_, shape=(1,))],
            config=ModelConfig(max_batch_size=args.max_batch_size, batcher=batcher),
            strict=True,
        )
        logger.info(
            "serving %s: %d instance(s), max batch %d, %d intra-op thread(s) each, decoder %s",
            MODEL_NAME,
            args.instances,
            args.max_batch_size,
            threads,
            args.decoder,
        )
        triton.serve()  # until SIGTERM (targets.launch stops it)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
