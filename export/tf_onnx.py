"""tf.function -> ONNX with tf2onnx, then a parity check against the TensorFlow result.

`tf2onnx.convert.from_keras` fails on Keras 3 models (KeyError 'keras_tensor_N', see the field notes), so
every export goes through `from_function` with a named input signature and a dict of named outputs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

OPSET = 17


class ParityError(RuntimeError):
    """The exported graph does not reproduce the Keras model within tolerance."""


def export_function(
    function: Any,
    path: Path,
    *,
    reference: Callable[[np.ndarray], Any],
    samples: np.ndarray,
    tolerance: float = 1e-4,
    metadata: dict[str, str] | None = None,
    output: str | None = None,
) -> float:
    """Convert, embed metadata, save, and verify: returns the max abs difference on `samples`.

    `reference(samples)` gives the Keras output to compare with (the output named `output`, or the only one).
    """
    import onnx
    import tf2onnx

    model_proto, _ = tf2onnx.convert.from_function(
        function, input_signature=function.input_signature, opset=OPSET
    )
    inputs = [i.name for i in model_proto.graph.input]
    initializers = {i.name for i in model_proto.graph.initializer}
    stray = [name for name in inputs if name in initializers or name != "image"]
    if stray:
        raise ParityError(f"exported graph has unexpected inputs {stray}; only 'image' is allowed")
    for key, value in (metadata or {}).items():
        entry = model_proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model_proto)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model_proto, str(path))
    difference = check_parity(path, reference, samples, output=output)
    if difference > tolerance:
        raise ParityError(f"{path.name}: max abs difference {difference:.2e} exceeds {tolerance:.0e}")
    logger.info("exported %s (%d samples, max abs diff %.2e)", path.name, len(samples), difference)
    return difference


def check_parity(
    path: Path, reference: Callable[[np.ndarray], Any], samples: np.ndarray, output: str | None = None
) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    index = names.index(output) if output else 0
    worst = 0.0
    for start in range(0, len(samples), 32):
        chunk = samples[start : start + 32].astype(np.float32)
        got = session.run(None, {"image": chunk})[index]
        expected = np.asarray(reference(chunk))
        worst = max(worst, float(np.max(np.abs(got - expected))))
    return worst
