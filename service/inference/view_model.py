"""view.onnx in an ONNX Runtime session: the view model the input-domain check
(service.imaging.input_check) consults. The session lives here so that the image code needs no onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.imaging.input_check import MIRROR_PERMUTATION


class ViewModel:
    """view.onnx: (N, S, S, 1) -> `probabilities` (N, 17) over VIEW_CLASSES and `distance` (N,)."""

    def __init__(self, path: Path, input_size: int) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # runs in the preprocessing pool, one thread per core already
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        self.session = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.input_name = self.session.get_inputs()[0].name
        self.input_size = input_size

    def __call__(self, tensor: np.ndarray) -> tuple[np.ndarray, float]:
        """Averaged over the image and its mirror image (whose classes are permuted back): two looks at
        the same film steady the uncertain cases."""
        both = np.stack([tensor, tensor[:, ::-1]])[:, :, :, None]
        probabilities, distance = self.session.run(["probabilities", "distance"], {self.input_name: both})
        averaged = (probabilities[0] + probabilities[1][MIRROR_PERMUTATION]) / 2.0
        return averaged, float(distance.mean())
