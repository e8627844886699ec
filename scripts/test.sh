#!/usr/bin/env bash
# Set up a virtual environment with the training and test extras and run the test suite.
# Tests that need ../shared/data, Orthanc, nginx or Chromium skip with a reason when those are absent
# (.ci/run installs them). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${CXR_VENV:-.venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e ".[train,dev,load]"
exec "$VENV/bin/python" -m pytest "$@"
