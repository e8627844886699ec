#!/usr/bin/env bash
# Set up a virtual environment (service only, no TensorFlow) and serve the bundled model on :8000.
# Extra arguments go to `cxr serve` (e.g. --port 9000); CXR_* environment variables work too.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${CXR_VENV:-.venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e .
exec "$VENV/bin/cxr" serve "$@"
