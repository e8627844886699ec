"""Triton-compatible model configuration: `<repo>/<name>/config.pbtxt` beside the model's versions.

The model repository already has NVIDIA Triton's layout (`<repo>/<name>/<version>/model.onnx`); with this
file beside the versions, Triton (or KServe's Triton runtime) serves the same ONNX artifacts as `cxr serve`,
with the same dynamic-batching policy. The configuration is read from the ONNX graph, never typed by hand,
so names, data types and dims cannot drift from the model. Triton serves the classifier only: decoding,
lung cropping (`lungseg.onnx`) and resizing stay with the client, which sends the preprocessed `image`
tensor (N, S, S, 1) float32 in [0, 1].

`cxr export` calls `write_config` after writing a version; `python -m export.triton [REPOSITORY]` writes one
for every model already in a repository.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import TensorProto

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.pbtxt"
LABELS_FILE = "labels.txt"
_MODEL_FILE = "model.onnx"
_CARD_FILE = "card.json"
_INSTANCE_KINDS = ("KIND_AUTO", "KIND_GPU", "KIND_CPU")
# ONNX element types -> Triton's DataType names (model_config.proto).
_DATA_TYPES: dict[int, str] = {
    TensorProto.FLOAT: "TYPE_FP32",
    TensorProto.FLOAT16: "TYPE_FP16",
    TensorProto.DOUBLE: "TYPE_FP64",
    TensorProto.BFLOAT16: "TYPE_BF16",
    TensorProto.INT8: "TYPE_INT8",
    TensorProto.INT16: "TYPE_INT16",
    TensorProto.INT32: "TYPE_INT32",
    TensorProto.INT64: "TYPE_INT64",
    TensorProto.UINT8: "TYPE_UINT8",
    TensorProto.UINT16: "TYPE_UINT16",
    TensorProto.UINT32: "TYPE_UINT32",
    TensorProto.UINT64: "TYPE_UINT64",
    TensorProto.BOOL: "TYPE_BOOL",
    TensorProto.STRING: "TYPE_STRING",
}


@dataclass(frozen=True)
class Tensor:
    """One graph input or output as Triton sees it: dims without the batch dimension (-1 = variable)."""

    name: str
    data_type: str
    dims: tuple[int, ...]


def read_signature(model_file: Path) -> tuple[list[Tensor], list[Tensor]]:
    """The graph's inputs and outputs. Raises ValueError unless every tensor has a variable first (batch)
    dimension, which Triton's batching (max_batch_size > 0) requires."""
    # Only the graph's interface is needed: external weights, if any, stay on disk.
    graph = onnx.load(str(model_file), load_external_data=False).graph
    # Older exporters list initializers (constants) among the inputs; a client cannot send those.
    constants = {initializer.name for initializer in graph.initializer}
    inputs = [_tensor(value, model_file) for value in graph.input if value.name not in constants]
    outputs = [_tensor(value, model_file) for value in graph.output]
    return inputs, outputs


def _tensor(value: onnx.ValueInfoProto, model_file: Path) -> Tensor:
    tensor_type = value.type.tensor_type
    data_type = _DATA_TYPES.get(tensor_type.elem_type)
    if data_type is None:
        raise ValueError(
            f"{model_file}: {value.name!r} has ONNX type {tensor_type.elem_type}, unknown to Triton"
        )
    dims = [dim.dim_value if dim.HasField("dim_value") else -1 for dim in tensor_type.shape.dim]
    if not dims or dims[0] != -1:
        raise ValueError(
            f"{model_file}: {value.name!r} has shape {dims}; Triton's batching needs a variable first (batch) "
            "dimension: export with a dynamic batch"
        )
    return Tensor(value.name, data_type, tuple(dims[1:]))


def _versions(model_root: Path) -> list[Path]:
    """Version directories Triton loads: numeric names holding model.onnx, oldest first."""
    found = [
        p for p in model_root.iterdir() if p.is_dir() and p.name.isdigit() and (p / _MODEL_FILE).is_file()
    ]
    return sorted(found, key=lambda path: int(path.name))


def _default_preferred(max_batch_size: int) -> list[int]:
    # The service pads batches to powers of two and the maximum (service/inference/batcher.py): ask Triton's dynamic
    # batcher for the same shapes.
    sizes = {size for size in (2**power for power in range(1, 16)) if size <= max_batch_size}
    return sorted(sizes | ({max_batch_size} if max_batch_size > 1 else set()))


def _block(tensors: Sequence[Tensor], label_file: str | None = None) -> str:
    items = []
    for tensor in tensors:
        lines = [f'    name: "{tensor.name}"', f"    data_type: {tensor.data_type}"]
        lines.append(f"    dims: [ {', '.join(str(d) for d in tensor.dims)} ]")
        if label_file is not None and tensor.name == "probabilities":
            lines.append(f'    label_filename: "{label_file}"')
        items.append("  {\n" + "\n".join(lines) + "\n  }")
    return "[\n" + ",\n".join(items) + "\n]"


def write_config(
    model_dir: Path,
    name: str | None = None,
    *,
    max_batch_size: int = 8,
    preferred_batch_sizes: Sequence[int] | None = None,
    max_queue_delay_microseconds: int = 2000,
    instance_count: int = 1,
    instance_kind: str = "KIND_AUTO",
) -> Path:
    """Write `config.pbtxt` (and `labels.txt` when the card names the labels) for one model; return its path.

    `model_dir` is the model's directory `<repo>/<name>` or one of its version directories
    `<repo>/<name>/<version>`. Every numeric version's model.onnx must have the same inputs and outputs (one
    config serves them all); `name` must be the directory's name, as Triton requires. The defaults: batches
    up to 8 (`cxr serve`'s configured maximum), padded sizes preferred, 2 ms queue delay from the oldest
    request (Triton's, fixed: `cxr serve` chooses its batch size at warm-up and waits 0 ms by default).
    KIND_AUTO puts the instance on a GPU when Triton has one, else on the CPU.
    """
    model_root = model_dir.parent if (model_dir / _MODEL_FILE).is_file() else model_dir
    name = name or model_root.name
    if name != model_root.name:
        raise ValueError(
            f"Triton requires the config name to be the directory's: {model_root.name!r}, not {name!r}"
        )
    if max_batch_size < 1:
        raise ValueError("max_batch_size must be at least 1 (the graph has a batch dimension)")
    if max_queue_delay_microseconds < 0 or instance_count < 1:
        raise ValueError("max_queue_delay_microseconds must be >= 0 and instance_count >= 1")
    if instance_kind not in _INSTANCE_KINDS:
        raise ValueError(f"instance_kind must be one of {_INSTANCE_KINDS}")
    preferred = sorted(set(preferred_batch_sizes or _default_preferred(max_batch_size)))
    if any(size < 1 or size > max_batch_size for size in preferred):
        raise ValueError(f"preferred batch sizes {preferred} must lie in 1..{max_batch_size}")

    versions = _versions(model_root)
    if not versions:
        raise ValueError(
            f"{model_root}: no numeric version directory with {_MODEL_FILE} (Triton loads only those)"
        )
    inputs, outputs = read_signature(versions[-1] / _MODEL_FILE)
    for older in versions[:-1]:
        if read_signature(older / _MODEL_FILE) != (inputs, outputs):
            raise ValueError(
                f"{older}: inputs/outputs differ from version {versions[-1].name}; one config cannot serve both"
            )

    label_file = _write_labels(model_root, versions[-1], outputs)
    text = "\n".join(
        [
            f"# Triton model configuration, written by export/triton.py from {versions[-1].name}/{_MODEL_FILE}.",
            "# Research use only: not for diagnosis. Inputs are preprocessed images (see the model card).",
            f'name: "{name}"',
            'platform: "onnxruntime_onnx"',
            f"max_batch_size: {max_batch_size}",
            f"input {_block(inputs)}",
            f"output {_block(outputs, label_file)}",
            "dynamic_batching {",
            f"  preferred_batch_size: [ {', '.join(str(size) for size in preferred)} ]",
            f"  max_queue_delay_microseconds: {max_queue_delay_microseconds}",
            "}",
            f"instance_group [\n  {{\n    count: {instance_count}\n    kind: {instance_kind}\n  }}\n]",
            "",
        ]
    )
    path = model_root / CONFIG_FILE
    path.write_text(text)
    logger.info("wrote %s (max batch %d, preferred %s)", path, max_batch_size, preferred)
    return path


def _write_labels(model_root: Path, version: Path, outputs: Sequence[Tensor]) -> str | None:
    """labels.txt for Triton's classification extension, one label per line in output order, when the
    card lists as many labels as `probabilities` has entries."""
    card_file = version / _CARD_FILE
    probabilities = next((tensor for tensor in outputs if tensor.name == "probabilities"), None)
    if probabilities is None or not card_file.is_file():
        return None
    labels = [str(label) for label in json.loads(card_file.read_text()).get("labels", [])]
    if list(probabilities.dims) != [len(labels)]:
        return None
    (model_root / LABELS_FILE).write_text("".join(f"{label}\n" for label in labels))
    return LABELS_FILE


def write_repository(
    repository: Path, *, max_batch_size: int = 8, max_queue_delay_microseconds: int = 2000
) -> list[Path]:
    """`write_config` for every model in the repository that has a numeric version with model.onnx."""
    return [
        write_config(
            model_root,
            max_batch_size=max_batch_size,
            max_queue_delay_microseconds=max_queue_delay_microseconds,
        )
        for model_root in sorted(p for p in repository.iterdir() if p.is_dir())
        if _versions(model_root)
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write Triton config.pbtxt files for a model repository.")
    parser.add_argument("repository", nargs="?", default="models", type=Path)
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--max-queue-delay-microseconds", type=int, default=2000)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    written = write_repository(
        args.repository,
        max_batch_size=args.max_batch_size,
        max_queue_delay_microseconds=args.max_queue_delay_microseconds,
    )
    return 0 if written else 1


if __name__ == "__main__":
    sys.exit(main())
