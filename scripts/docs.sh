#!/usr/bin/env bash
# The manual and API reference: Sphinx builds docs/ into build/docs/html/ with warnings as errors.
# Usage: bash scripts/docs.sh   (creates .venv with the `docs` extra if it lacks Sphinx)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -c "import sphinx_book_theme, myst_parser" 2>/dev/null ||
  .venv/bin/python -m pip install -q -e ".[docs]"
.venv/bin/python -m sphinx -E -W --keep-going -q -b html docs build/docs/html  # -E: no stale pages
echo "manual: build/docs/html/index.html"
