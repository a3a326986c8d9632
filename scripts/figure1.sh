#!/usr/bin/env bash
# The main job: creates .venv, installs the training extras, and runs the paper's Figure 1 sweep
# (backprop, dropout, sparseout for several q) offline on the MNIST the repo ships.
# Extra arguments go to the sweep, e.g. `bash scripts/figure1.sh --workdir runs/elsewhere`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[train]"
exec .venv/bin/python -m train.autoencoder.sweep --workdir runs/figure1 "$@"
