"""A peer framework for the benchmark: BentoML 1.4 on the same ONNX model and the same preprocessing as
the service (OnnxModel.prepare, then ONNX Runtime).

Set up the way BentoML's documentation recommends for adaptive batching on a CPU: one `@bentoml.service`
with `workers=N` processes and `resources={"cpu": ...}`, and one `@bentoml.api(batchable=True,
batch_dim=0, max_batch_size=..., max_latency_ms=...)` that receives a list of uploaded files (BentoML's
documented upload: `multipart/form-data`, the file saved to a temporary path) and answers a list.
`max_latency_ms` is BentoML's cancel threshold (requests it expects to miss it get 503), not a batching
window: it is set to the service's request deadline, so it sheds only what the service would. Each of the
N workers gets `cores // N` intra-op threads and decodes the batch's images on as many threads, so the
workers together use the machine once. The bench tries a few of these settings (loadtest/peers.py) and
reports the best.

Decoding (CXR_PEER_DECODER): `service` (service.imaging.decode) or `pillow` (Pillow decodes the whole
image to grayscale, as loadtest/naive_app.py does by default).

BentoML reads a service's settings when the class is defined, so this module takes them from the
environment (CXR_PEER_MODEL_DIR, CXR_PEER_MAX_BATCH_SIZE, CXR_PEER_WORKERS, CXR_PEER_TIMEOUT_S). It runs in
a virtual environment of its own (loadtest/peers.py creates it), with this repository on PYTHONPATH:

    CXR_PEER_MODEL_DIR=models/cxr-compact/1 bentoml serve loadtest.peer_bentoml:Classifier --port 8004
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import bentoml
import numpy as np

from loadtest.pillow_decode import decode_pillow
from service.imaging.decode import decode
from service.inference.cpus import usable_cpus
from service.inference.decision import label_for
from service.inference.model import OnnxModel

_WORKERS = int(os.environ.get("CXR_PEER_WORKERS", "1"))
_MAX_BATCH_SIZE = int(os.environ.get("CXR_PEER_MAX_BATCH_SIZE", "8"))
_TIMEOUT_S = float(os.environ.get("CXR_PEER_TIMEOUT_S", "30"))
_THREADS = max(1, usable_cpus() // _WORKERS)


@bentoml.service(
    workers=_WORKERS,
    resources={"cpu": str(usable_cpus())},
    traffic={"timeout": _TIMEOUT_S},
)
class Classifier:
    def __init__(self) -> None:
        self.model = OnnxModel(
            Path(os.environ["CXR_PEER_MODEL_DIR"]),
            providers=["CPUExecutionProvider"],
            intra_op_threads=_THREADS,
        )
        self.decode = decode_pillow if os.environ.get("CXR_PEER_DECODER", "service") == "pillow" else decode
        self.pool = ThreadPoolExecutor(max_workers=_THREADS)
        size = self.model.input_size
        for batch in range(1, _MAX_BATCH_SIZE + 1):  # warm every shape, as the service does
            self.model.run(np.zeros((batch, size, size, 1), dtype=np.float32))

    def _prepare(self, path: Path) -> np.ndarray:
        tensor, _, _ = self.model.prepare(self.decode(path.read_bytes()))
        return tensor

    if _MAX_BATCH_SIZE > 1:

        @bentoml.api(  # type: ignore[untyped-decorator]
            route="/classify",
            batchable=True,
            batch_dim=0,
            max_batch_size=_MAX_BATCH_SIZE,
            max_latency_ms=int(_TIMEOUT_S * 1000),
        )
        def classify(self, image: list[Path]) -> list[dict[str, Any]]:
            return self._classify(image)

    else:
        # BentoML refuses a batchable API with max_batch_size 1 ("must be > 1"): unbatched is its own
        # documented form, one file per call. It answers a list of one, as the batchable API answers each
        # request, so the client (loadtest/checks.py) reads both the same way.
        @bentoml.api(route="/classify")  # type: ignore[untyped-decorator]
        def classify(self, image: Path) -> list[dict[str, Any]]:
            return self._classify([image])

    def _classify(self, image: list[Path]) -> list[dict[str, Any]]:
        tensors = list(self.pool.map(self._prepare, image))
        probabilities = self.model.run(np.stack(tensors))[0]
        card = self.model.card
        return [
            {
                "label": label_for(row, card),
                "probabilities": dict(zip(card.labels, map(float, row), strict=True)),
                "threshold": card.threshold,
            }
            for row in probabilities
        ]
