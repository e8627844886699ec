"""`cxr` with every model batch slowed by CXR_TEST_BATCH_DELAY_S seconds, for the SIGTERM drain tests
(they need work still queued when the signal arrives). Run as `python -m tests.service.slow_server serve ...`."""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import numpy as np

from cxr import cli
from service.model import OnnxModel

_DELAY_S = float(os.environ.get("CXR_TEST_BATCH_DELAY_S", "0"))
_run = OnnxModel.run


def _slow_run(self: OnnxModel, batch: np.ndarray) -> Any:
    time.sleep(_DELAY_S)
    return _run(self, batch)


OnnxModel.run = _slow_run  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(cli.main(sys.argv[1:]))
