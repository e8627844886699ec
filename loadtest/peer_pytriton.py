"""A peer for the tensor path: NVIDIA's Triton Inference Server through PyTriton 0.7 (Triton 2.51, python
backend only), serving the same ONNX model as `cxr serve`'s /v2 under the same name and the same tensors
(models/cxr-compact/config.pbtxt: `image` [224, 224, 1] FP32 in, `cam` and `probabilities` out).

PyTriton bundles no onnxruntime backend, so ONNX Runtime runs inside the bound function, on the batch
Triton's dynamic batcher formed (max batch 8, preferred 2/4/8, 2 ms queue delay: the model's
config.pbtxt). Only numpy and onnxruntime are imported: the peer's environment has numpy<2 (PyTriton's
requirement) and none of the service's packages. It runs from a virtual environment of its own
(loadtest/peers.py creates it):

    python -m loadtest.peer_pytriton --model models/cxr-compact/1/model.onnx --http-port 8010
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

logger = logging.getLogger(__name__)
MAX_BATCH_SIZE = 8
"""As the model's config.pbtxt and the service's default."""
TOKEN_VARIABLE = "PYTRITON_BENCH_ACCESS_TOKEN"
"""The access token of PyTriton's restricted endpoints (else PyTriton makes one no client knows)."""


def _session(model: Path) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = len(os.sched_getaffinity(0))  # as the service: all usable cores
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


def loopback_config(http_port: int, grpc_port: int, metrics_port: int) -> TritonConfig:
    """Triton's HTTP and gRPC endpoints on loopback only (a benchmark peer serves nobody else)."""
    return TritonConfig(
        http_address="127.0.0.1",
        http_port=http_port,
        grpc_address="127.0.0.1",
        grpc_port=grpc_port,
        metrics_port=metrics_port,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, type=Path, help="the model.onnx /v2 serves")
    parser.add_argument("--name", default="cxr-compact")
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    session = _session(args.model)
    names = [output.name for output in session.get_outputs()]
    size = session.get_inputs()[0].shape[1]
    for rows in range(1, MAX_BATCH_SIZE + 1):  # warm every shape, as the service does
        session.run(None, {"image": np.zeros((rows, size, size, 1), dtype=np.float32)})

    @batch  # type: ignore[untyped-decorator]
    def infer(image: np.ndarray) -> dict[str, Any]:
        return dict(zip(names, session.run(None, {"image": image}), strict=True))

    config = loopback_config(args.http_port, args.grpc_port, args.metrics_port)
    outputs = [
        Tensor(name=output.name, dtype=np.float32, shape=tuple(output.shape[1:]))
        for output in session.get_outputs()
    ]
    # PyTriton guards statistics (which perf_analyzer reads) with an access token; the bench gives one.
    security = TritonSecurityConfig(access_token=os.environ.get(TOKEN_VARIABLE) or None)
    with Triton(config=config, security_config=security) as triton:
        triton.bind(
            model_name=args.name,
            infer_func=infer,
            inputs=[Tensor(name="image", dtype=np.float32, shape=(size, size, 1))],
            outputs=outputs,
            config=ModelConfig(
                max_batch_size=MAX_BATCH_SIZE,
                batcher=DynamicBatcher(max_queue_delay_microseconds=2000, preferred_batch_size=[2, 4, 8]),
            ),
            strict=True,
        )
        triton.serve()  # until SIGTERM (targets.launch stops it)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
