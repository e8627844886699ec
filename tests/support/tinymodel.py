"""A tiny ONNX classifier with a real model card, built with `onnx.helper` alone (no TensorFlow).

It follows the graph contract in `service/inference/model.py`: input `image` (N, S, S, 1) float32 with a dynamic
batch; outputs `probabilities` (N, 2) over ["non-covid", "covid"] and `cam` (N, S/P, S/P). The positive
logit is spatially local brightness: `cam = gain * (avgpool_P(image) - offset)` and
`p(covid) = sigmoid(mean(cam))`, so a bright blob raises p(covid) and the CAM peaks on the blob
(the web page tests rely on that). Like the real export, mean(cam) is exactly the positive logit.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import onnx
from onnx import TensorProto, helper

from service.imaging.preprocess import PreprocessSpec

LABELS = ["non-covid", "covid"]


def _scalar(name: str, value: float) -> onnx.TensorProto:
    return helper.make_tensor(name, TensorProto.FLOAT, [], [value])


def build_graph(
    input_size: int = 32, pool: int = 4, gain: float = 16.0, offset: float = 0.44
) -> onnx.ModelProto:
    """The ONNX model itself (opset 17, IR 8 so any recent onnxruntime loads it)."""
    if input_size % pool:
        raise ValueError("input_size must be a multiple of pool")
    cells = input_size // pool
    nodes = [
        helper.make_node("Transpose", ["image"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node(
            "AveragePool", ["nchw"], ["pooled"], kernel_shape=[pool, pool], strides=[pool, pool]
        ),
        helper.make_node("Sub", ["pooled", "offset"], ["centred"]),
        helper.make_node("Mul", ["centred", "gain"], ["cam4"]),
        helper.make_node("Squeeze", ["cam4", "channel_axis"], ["cam"]),
        helper.make_node("ReduceMean", ["cam4"], ["logit"], axes=[2, 3], keepdims=0),
        helper.make_node("Sigmoid", ["logit"], ["positive"]),
        helper.make_node("Sub", ["one", "positive"], ["negative"]),
        helper.make_node("Concat", ["negative", "positive"], ["probabilities"], axis=1),
    ]
    initializers = [
        _scalar("offset", offset),
        _scalar("gain", gain),
        _scalar("one", 1.0),
        helper.make_tensor("channel_axis", TensorProto.INT64, [1], [1]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_cxr",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", input_size, input_size, 1])],
        [
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 2]),
            helper.make_tensor_value_info("cam", TensorProto.FLOAT, ["N", cells, cells]),
        ],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    return model


def make_tiny_model(
    repository: Path,
    name: str = "tiny",
    version: str = "1",
    *,
    input_size: int = 32,
    threshold: float = 0.5,
    domain: dict[str, object] | None = None,
) -> Path:
    """Write `<repository>/<name>/<version>/{model.onnx, card.json}` and return the version directory.

    Without `domain` the card has no input-domain section, so the service checks nothing (every image is
    "in", reason "not checked"): the tests' small synthetic images stay classifiable. `domain` (e.g.
    `{"thresholds": {"min_side": 128}}`) adds the model-free checks (size, colour) without a view model."""
    directory = repository / name / version
    directory.mkdir(parents=True, exist_ok=True)
    model_path = directory / "model.onnx"
    onnx.save(build_graph(input_size), str(model_path))
    card = {
        "name": name,
        "version": version,
        "labels": LABELS,
        "positive_label": "covid",
        "threshold": threshold,
        "files": {"model.onnx": hashlib.sha256(model_path.read_bytes()).hexdigest()},
        "preprocessing": PreprocessSpec(input_size=input_size, lung_crop=False).to_dict(),
        "segmenter": None,
        "intended_use": "Test fixture. Research use only. Not for diagnosis.",
        **({"domain": domain} if domain is not None else {}),
    }
    (directory / "card.json").write_text(json.dumps(card, indent=2))
    return directory


def blob_image(
    size: tuple[int, int] = (256, 256),
    centre: tuple[float, float] | None = (0.5, 0.5),
    radius: float = 0.2,
    background: int = 60,
    seed: int = 0,
) -> np.ndarray:
    """Synthetic 8-bit grayscale "X-ray": textured background, plus a bright disc at `centre` (fractions
    of width and height) unless `centre` is None."""
    height, width = size
    rng = np.random.default_rng(seed)
    image = np.clip(rng.normal(background, 12, size), 0, 255).astype(np.uint8)
    if centre is not None:
        cx, cy = round(centre[0] * width), round(centre[1] * height)
        cv2.circle(image, (cx, cy), round(radius * min(height, width)), 235, thickness=-1)
    return image


def encode(image: np.ndarray, ext: str = ".png") -> bytes:
    """PNG or JPEG bytes of an image, as a client would upload them."""
    ok, buffer = cv2.imencode(ext, image)
    if not ok:
        raise ValueError(f"cv2 could not encode {ext}")
    return buffer.tobytes()


def png_bomb(width: int = 50_000, height: int = 50_000) -> bytes:
    """A ~100-byte PNG whose header declares width x height 8-bit pixels (2.5 GB for the default)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 4096, 9))
        + chunk(b"IEND", b"")
    )
