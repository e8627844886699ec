"""Open Inference Protocol request bodies as a client puts them on the wire, for the /v2 tests: JSON, and the
binary tensor data extension (a JSON header, its length in `Inference-Header-Content-Length`, then raw
little-endian FP32 bytes), plus the preprocessed tensor that /v1 computes for an image."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from service.imaging.decode import decode
from service.inference.model import OnnxModel, find_versions

HEADER_LENGTH = "Inference-Header-Content-Length"


def tensor_for(model_dir: Path, images: list[bytes]) -> np.ndarray:
    """The (N, S, S, 1) float32 tensor /v1/classify feeds the newest model for these encoded images."""
    model = OnnxModel(find_versions(model_dir)[-1])
    return np.stack([model.prepare(decode(image))[0] for image in images])


def tensor_json(tensor: np.ndarray, name: str = "image", **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "shape": list(tensor.shape),
        "datatype": "FP32",
        "data": tensor.ravel().tolist(),
        **extra,
    }


def binary_request(
    tensor: np.ndarray, *, outputs: list[dict[str, Any]] | None = None, **fields: Any
) -> tuple[bytes, dict[str, str]]:
    """Body and headers of a binary-extension infer request for one FP32 input named `image`."""
    raw = np.ascontiguousarray(tensor, dtype="<f4").tobytes()
    document: dict[str, Any] = {
        "inputs": [
            {
                "name": "image",
                "shape": list(tensor.shape),
                "datatype": "FP32",
                "parameters": {"binary_data_size": len(raw)},
            }
        ],
        **fields,
    }
    if outputs is not None:
        document["outputs"] = outputs
    header = json.dumps(document).encode()
    return header + raw, {HEADER_LENGTH: str(len(header)), "Content-Type": "application/octet-stream"}


def binary_outputs(body: bytes, header_length: int) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A binary-extension response: its JSON header and each output's array, read as a client does."""
    header = json.loads(body[:header_length])
    arrays: dict[str, np.ndarray] = {}
    offset = header_length
    for output in header["outputs"]:
        size = output.get("parameters", {}).get("binary_data_size")
        if size is None:
            arrays[output["name"]] = np.asarray(output["data"], np.float32).reshape(output["shape"])
            continue
        arrays[output["name"]] = np.frombuffer(body, "<f4", size // 4, offset).reshape(output["shape"])
        offset += size
    assert offset == len(body), "bytes left after the last binary output"
    return header, arrays
