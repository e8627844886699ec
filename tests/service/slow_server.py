"""`cxr` with every model batch slowed by CXR_TEST_BATCH_DELAY_S seconds, for the SIGTERM drain tests
(they need work still queued when the signal arrives); each run's start is logged to CXR_TEST_RUN_LOG. Run as `python -m tests.service.slow_server serve ...`."""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import numpy as np

from cxr import cli
from service.inference.model import OnnxModel

_DELAY_S = float(os.environ.get("CXR_TEST_BATCH_DELAY_S", "0"))
_RUN_LOG = os.environ.get("CXR_TEST_RUN_LOG")
_run = OnnxModel.run


def _slow_run(self: OnnxModel, batch: np.ndarray) -> Any:
    if _RUN_LOG:  # one line per model run as it starts: the event a test waits for ("it is in the model")
        with open(_RUN_LOG, "a") as runs:
            runs.write(f"{len(batch)}\n")
    time.sleep(_DELAY_S)
    return _run(self, batch)


OnnxModel.run = _slow_run  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(cli.main(sys.argv[1:]))
