#!/usr/bin/env bash
# The test command: a fresh virtual environment, everything installed, lint, then the tests.
# Usage: bash scripts/test.sh            (fast suite, then the slow real-data tests)
#        SKIP_SLOW=1 bash scripts/test.sh (fast suite only)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test]"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest -m "not slow" -n 2 --dist loadfile
if [ -z "${SKIP_SLOW:-}" ]; then
  # Exit code 5 means no test carries the marker: nothing to run is not a failure.
  .venv/bin/python -m pytest -m slow -n 2 --dist loadfile || [ $? -eq 5 ]
fi
