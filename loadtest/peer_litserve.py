"""A peer framework for the benchmark: LitServe (Lightning AI) on the same ONNX model and the same
preprocessing as the service (OnnxModel.prepare, then ONNX Runtime).

Set up the way LitServe's documentation recommends for a CPU model: batching on the `LitAPI`
(`max_batch_size`, `batch_timeout`, with `batch`/`unbatch` stacking the tensors into one `session.run`),
`LitServer(accelerator="cpu", workers_per_device=N)` to use the cores with N inference worker processes,
and LitServe's default of one uvicorn API-server process per worker. The upload is the request's raw body
(FastAPI's `Body` on the `decode_request` annotation, which LitServe passes to its route), as
`/v1/classify` receives it; LitServe carries it to a worker over its queue, and `decode_request` decodes it
there. Each worker gets `cores // N` intra-op threads, so the workers together use the machine once. The
bench tries a few of these settings (loadtest/peers.py) and reports the best.

Decoding (`--decoder`): `service` (service.imaging.decode, the service's decoder) or `pillow` (Pillow
decodes the whole image to grayscale, as loadtest/naive_app.py does by default), so that the table tells
the serving design from the decoder.

Runs in a virtual environment of its own (loadtest/peers.py creates it), with this repository on
PYTHONPATH:

    python -m loadtest.peer_litserve --model-dir models/cxr-compact/1 --port 8003
"""

# No `from __future__ import annotations`: LitServe reads decode_request's annotation at run time.
import argparse
import logging
from pathlib import Path
from typing import Annotated, Any

import litserve as ls
import numpy as np
from fastapi import Body, HTTPException

from loadtest.pillow_decode import decode_pillow
from service.errors import CxrError
from service.imaging.decode import decode
from service.inference.cpus import usable_cpus
from service.inference.decision import label_for
from service.inference.model import OnnxModel

logger = logging.getLogger(__name__)

RawBody = Annotated[bytes, Body(media_type="application/octet-stream")]
"""The route's parameter type: LitServe gives its route `decode_request`'s annotation, and FastAPI reads a
`bytes` Body as the raw upload (a plain `Request` would be parsed as JSON or a form)."""


class Classifier(ls.LitAPI):  # type: ignore[misc]
    def __init__(self, model_dir: Path, decoder: str, intra_op_threads: int, **options: Any) -> None:
        super().__init__(api_path="/classify", **options)
        self.model_dir, self.decoder, self.intra_op_threads = model_dir, decoder, intra_op_threads

    def setup(self, device: str) -> None:
        self.model = OnnxModel(
            self.model_dir, providers=["CPUExecutionProvider"], intra_op_threads=self.intra_op_threads
        )
        self.decode = decode if self.decoder == "service" else decode_pillow
        size = self.model.input_size
        for batch in range(1, self.max_batch_size + 1):  # warm every shape, as the service does
            self.model.run(np.zeros((batch, size, size, 1), dtype=np.float32))

    def decode_request(self, request: RawBody) -> np.ndarray:
        try:
            tensor, _, _ = self.model.prepare(self.decode(request))
        except CxrError as error:
            raise HTTPException(error.status, error.detail) from None
        return tensor

    def batch(self, inputs: list[np.ndarray]) -> np.ndarray:
        return np.stack(inputs)

    def predict(self, x: np.ndarray) -> np.ndarray:
        if x.ndim == 3:  # max_batch_size 1: LitServe passes the one request unbatched
            return self.model.run(x[None])[0][0]  # type: ignore[no-any-return]
        return self.model.run(x)[0]

    def unbatch(self, output: np.ndarray) -> list[np.ndarray]:
        return list(output)

    def encode_response(self, output: np.ndarray) -> dict[str, Any]:
        card = self.model.card
        return {
            "results": [
                {
                    "label": label_for(output, card),
                    "probabilities": dict(zip(card.labels, map(float, output), strict=True)),
                    "threshold": card.threshold,
                }
            ]
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True, type=Path, help="a model version directory (card.json)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--decoder", choices=("service", "pillow"), default="service")
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--batch-timeout-ms", type=float, default=2.0)
    parser.add_argument("--workers", type=int, default=1, help="LitServer workers_per_device")
    parser.add_argument("--timeout-s", type=float, default=30.0, help="LitServer's request timeout")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    api = Classifier(
        args.model_dir,
        args.decoder,
        max(1, usable_cpus() // args.workers),
        max_batch_size=args.max_batch_size,
        batch_timeout=args.batch_timeout_ms / 1000.0,
    )
    server = ls.LitServer(
        api, accelerator="cpu", workers_per_device=args.workers, timeout=args.timeout_s, track_requests=False
    )
    # targets.launch polls /health, which answers 200 once every worker has run setup().
    server.run(host="127.0.0.1", port=args.port, generate_client_file=False, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
