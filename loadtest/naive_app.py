"""The naive baseline: the FastAPI app most people write first, for comparison in the benchmark only.

A synchronous route (FastAPI runs it in Starlette's 40-thread pool) decodes the upload and calls
`session.run` on a batch of one, on an ONNX Runtime session with its default options (an intra-op pool
as large as the machine, spinning). No batching, no bounded queue, no deadline.

Decoding (CXR_NAIVE_DECODE):
- `full` (the default, the baseline of the acceptance check): Pillow decodes the whole image and
  converts it to grayscale, as the first version of an app does; then the model's own contract
  (shrink to the training scale with INTER_AREA, trim, lung crop, CLAHE: OnnxModel.prepare) runs, so
  the answers are the same classification, not a cheaper pipeline.
- `service`: the service's decoder (service.imaging.decode: DCT-domain reduced JPEG decoding, header checks).
  The benchmark runs this too, so the gain of the serving design alone and of the decoder are told apart.

    CXR_NAIVE_MODEL=models/cxr-compact/1 uvicorn loadtest.naive_app:app --port 8001
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from fastapi import Body, FastAPI, HTTPException

from loadtest.pillow_decode import decode_pillow
from service.errors import CxrError
from service.imaging.decode import decode
from service.imaging.pixels import DecodedImage
from service.inference.decision import label_for
from service.inference.model import MODEL_FILE, OnnxModel, load_default

_model: OnnxModel = load_default(os.environ.get("CXR_NAIVE_MODEL") or None)
# The model file was verified by load_default; this is the plain session the ONNX Runtime docs show.
_session = ort.InferenceSession(str(Path(_model.directory) / MODEL_FILE), providers=_model.providers)
_input = _session.get_inputs()[0].name
_outputs = [output.name for output in _session.get_outputs()]
_decode_mode = os.environ.get("CXR_NAIVE_DECODE", "full")
if _decode_mode not in ("full", "service"):
    raise SystemExit(f"CXR_NAIVE_DECODE must be 'full' or 'service', not {_decode_mode!r}")


def _decoded(body: bytes) -> DecodedImage:
    """8-bit grayscale at the training scale, by the decoder this instance was started with."""
    return decode(body) if _decode_mode == "service" else decode_pillow(body)


app = FastAPI(title="naive baseline (benchmark only)")


@app.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/classify")
def classify(body: bytes = Body(..., media_type="application/octet-stream")) -> dict[str, Any]:
    try:
        tensor, _, _ = _model.prepare(_decoded(body))
    except CxrError as error:
        raise HTTPException(error.status, error.detail) from None
    outputs = dict(zip(_outputs, _session.run(None, {_input: tensor[None]}), strict=True))
    probabilities: np.ndarray = outputs["probabilities"][0]
    card = _model.card
    return {
        "results": [
            {
                "label": label_for(probabilities, card),
                "probabilities": dict(zip(card.labels, map(float, probabilities), strict=True)),
                "threshold": card.threshold,
            }
        ]
    }
