#!/usr/bin/env bash
# The test command: a fresh virtual environment, everything installed, lint, the tests (with the
# docstring examples), the manual built with warnings as errors, then the slow tests and the
# declared version floors. Tests whose benchmark data is missing skip (docs/data.md); .ci/run
# makes them fail instead.
# Usage: bash scripts/test.sh            (fast suite and docs, then the slow tests and the floors)
#        SKIP_SLOW=1 bash scripts/test.sh (fast suite and docs only)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test,docs]"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest -m "not slow" -n 2 --dist loadfile
bash scripts/docs.sh
if [ -z "${SKIP_SLOW:-}" ]; then
  # Exit code 5 means no test carries the marker: nothing to run is not a failure.
  .venv/bin/python -m pytest -m slow -n 2 --dist loadfile || [ $? -eq 5 ]
  bash scripts/floors.sh
fi
