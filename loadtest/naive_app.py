"""The naive baseline: the FastAPI app most people write first, for comparison in the benchmark only.

A synchronous route (FastAPI runs it in Starlette's 40-thread pool) decodes the upload and calls
`session.run` on a batch of one, on an ONNX Runtime session with its default options (an intra-op pool
as large as the machine, spinning). No batching, no bounded queue, no deadline. Decoding and
preprocessing are the service's own (service.decode, OnnxModel.prepare), so the comparison measures the
serving design, not a different pipeline.

    CXR_NAIVE_MODEL=models/cxr-compact/1 uvicorn loadtest.naive_app:app --port 8001
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from fastapi import Body, FastAPI, HTTPException

from service.decode import decode
from service.errors import CxrError
from service.model import MODEL_FILE, OnnxModel, load_default

_model: OnnxModel = load_default(os.environ.get("CXR_NAIVE_MODEL") or None)
# The model file was verified by load_default; this is the plain session the ONNX Runtime docs show.
_session = ort.InferenceSession(str(Path(_model.directory) / MODEL_FILE), providers=_model.providers)
_input = _session.get_inputs()[0].name
_outputs = [output.name for output in _session.get_outputs()]

app = FastAPI(title="naive baseline (benchmark only)")


@app.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/classify")
def classify(body: bytes = Body(..., media_type="application/octet-stream")) -> dict[str, Any]:
    try:
        tensor, _ = _model.prepare(decode(body).pixels)
    except CxrError as error:
        raise HTTPException(error.status, error.detail) from None
    outputs = dict(zip(_outputs, _session.run(None, {_input: tensor[None]}), strict=True))
    probabilities: np.ndarray = outputs["probabilities"][0]
    card = _model.card
    positive = float(probabilities[_model.positive_index])
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
