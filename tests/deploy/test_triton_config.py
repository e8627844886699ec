"""config.pbtxt written by export/triton.py is what Triton would parse (Triton's own ModelConfig proto, from
tritonclient) and is consistent with the ONNX file it describes: names, data types, dims, batch size. Checked
for the tiny test model and for every model under models/ that has a config."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from google.protobuf import text_format
from onnx import helper
from tritonclient.grpc import model_config_pb2

from export.triton import CONFIG_FILE, LABELS_FILE, write_config
from tests.support.tinymodel import build_graph, make_tiny_model

REPOSITORY = Path(__file__).resolve().parents[2] / "models"
BUNDLED = sorted(REPOSITORY.glob(f"*/{CONFIG_FILE}")) if REPOSITORY.is_dir() else []
# ONNX element type -> the name of Triton's DataType enum value (model_config.proto).
ONNX_TO_TRITON = {onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.INT64: "TYPE_INT64"}


def parse(config: Path) -> model_config_pb2.ModelConfig:
    """Parse as Triton does: unknown fields or enum values raise."""
    return text_format.Parse(config.read_text(), model_config_pb2.ModelConfig())


def assert_consistent(config_file: Path) -> model_config_pb2.ModelConfig:
    """The config describes the newest numeric version's model.onnx exactly, and the model runs a batch of
    max_batch_size."""
    config = parse(config_file)
    model_root = config_file.parent
    version = max((p for p in model_root.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    model = onnx.load(str(version / "model.onnx"))
    constants = {initializer.name for initializer in model.graph.initializer}

    assert config.name == model_root.name
    assert config.platform == "onnxruntime_onnx"
    assert config.max_batch_size >= 1
    for declared, actual in (
        (config.input, [v for v in model.graph.input if v.name not in constants]),
        (config.output, list(model.graph.output)),
    ):
        assert [tensor.name for tensor in declared] == [value.name for value in actual]
        for tensor, value in zip(declared, actual, strict=True):
            shape = value.type.tensor_type.shape.dim
            assert not shape[0].HasField("dim_value"), f"{value.name}: the batch dimension must be variable"
            assert list(tensor.dims) == [d.dim_value if d.HasField("dim_value") else -1 for d in shape[1:]]
            expected_type = ONNX_TO_TRITON[value.type.tensor_type.elem_type]
            assert model_config_pb2.DataType.Name(tensor.data_type) == expected_type
    batching = config.dynamic_batching
    assert batching.preferred_batch_size and max(batching.preferred_batch_size) <= config.max_batch_size
    assert batching.max_queue_delay_microseconds >= 0

    # The largest batch Triton may form runs, and each output has the declared per-item shape.
    session = ort.InferenceSession(str(version / "model.onnx"), providers=["CPUExecutionProvider"])
    feeds = {
        tensor.name: np.zeros((config.max_batch_size, *tensor.dims), np.float32) for tensor in config.input
    }
    results = session.run([tensor.name for tensor in config.output], feeds)
    for tensor, result in zip(config.output, results, strict=True):
        assert result.shape == (config.max_batch_size, *tensor.dims)

    card = json.loads((version / "card.json").read_text())
    (probabilities,) = [tensor for tensor in config.output if tensor.name == "probabilities"]
    if probabilities.label_filename:
        labels = (model_root / probabilities.label_filename).read_text().splitlines()
        assert labels == card["labels"]  # Triton's classification extension names class i by line i
    return config


def test_config_for_the_tiny_model_matches_its_onnx_file(tmp_path: Path) -> None:
    version = make_tiny_model(tmp_path / "models", name="tiny", version="3")
    path = write_config(version, max_batch_size=16, max_queue_delay_microseconds=500)
    assert path == tmp_path / "models" / "tiny" / CONFIG_FILE
    config = assert_consistent(path)
    assert [tensor.name for tensor in config.input] == ["image"]
    assert list(config.input[0].dims) == [32, 32, 1]
    assert [(tensor.name, list(tensor.dims)) for tensor in config.output] == [
        ("probabilities", [2]),
        ("cam", [8, 8]),
    ]
    assert config.max_batch_size == 16
    assert list(config.dynamic_batching.preferred_batch_size) == [2, 4, 8, 16]
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    assert config.output[0].label_filename == LABELS_FILE
    assert model_config_pb2.ModelInstanceGroup.Kind.Name(config.instance_group[0].kind) == "KIND_AUTO"


def test_model_directory_or_version_directory_give_the_same_config(tmp_path: Path) -> None:
    version = make_tiny_model(tmp_path / "models")
    from_version = write_config(version).read_text()
    assert write_config(version.parent).read_text() == from_version


def test_refuses_what_triton_could_not_serve(tmp_path: Path) -> None:
    version = make_tiny_model(tmp_path / "models", version="1")
    with pytest.raises(ValueError, match="directory's"):
        write_config(version, name="other")
    with pytest.raises(ValueError, match="preferred"):
        write_config(version, max_batch_size=4, preferred_batch_sizes=[8])

    # Two versions with different input sizes cannot share one config.
    make_tiny_model(tmp_path / "models", version="2", input_size=64)
    with pytest.raises(ValueError, match="differ"):
        write_config(version.parent)

    # A version name Triton would ignore.
    named = make_tiny_model(tmp_path / "named", version="best")
    with pytest.raises(ValueError, match="numeric"):
        write_config(named)

    # A graph with a fixed batch of 1 cannot be batched by Triton.
    fixed = make_tiny_model(tmp_path / "fixed")
    graph = build_graph()
    graph.graph.input[0].CopyFrom(
        helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, [1, 32, 32, 1])
    )
    onnx.save(graph, str(fixed / "model.onnx"))
    with pytest.raises(ValueError, match="batch"):
        write_config(fixed)


@pytest.mark.parametrize("config_file", BUNDLED, ids=[path.parent.name for path in BUNDLED])
def test_bundled_model_configs_match_their_onnx_files(config_file: Path) -> None:
    assert_consistent(config_file)


def test_every_bundled_model_has_a_config() -> None:
    """The export step writes config.pbtxt with each model, so models/ is a Triton model repository."""
    models = sorted(p for p in REPOSITORY.iterdir() if p.is_dir() and any(p.glob("*/model.onnx")))
    if not models:
        pytest.skip("models/ holds no exported model yet")
    missing = [model.name for model in models if not (model / CONFIG_FILE).is_file()]
    assert missing == [], f"no {CONFIG_FILE} for {missing}: run `python -m export.triton models`"
