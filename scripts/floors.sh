#!/usr/bin/env bash
# The declared version range, tested at its bottom. Two virtual environments hold exactly the
# lowest versions pyproject.toml declares (scripts/floor_requirements.py; their own dependencies
# at the newest that fit):
#   .venv-floor/core   the library's floors: its fast tests and doctests;
#   .venv-floor/train  the floors with the `train` extra: one tiny training run of each program.
# Usage: bash scripts/floors.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export JAX_PLATFORMS=cpu

# floor_venv NAME [EXTRA ...]: create .venv-floor/NAME and install the floors of the core + extras.
floor_venv() {
  local venv=.venv-floor/$1
  shift
  [ -x "$venv/bin/python" ] || "$PY" -m venv "$venv"
  "$PY" scripts/floor_requirements.py "$@" > "$venv/floors.txt"
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q -r "$venv/floors.txt" ${FLOOR_TOOLS:-}
  echo "floors in $venv:" $(cat "$venv/floors.txt")
}

FLOOR_TOOLS="pytest pytest-xdist hypothesis chex" floor_venv core
# The library's tests: the test files that import neither models nor train.
LIB_TESTS=$(grep -LE "(from|import) (models|train)\b|\b(models|train)\.[a-z_]+" tests/test_*.py)
.venv-floor/core/bin/python -m pytest -q -m "not slow" -n 2 --dist loadfile -p no:cacheprovider \
  sparseout_jax $LIB_TESTS

floor_venv train train
PY_TRAIN=.venv-floor/train/bin/python
RUNS=$(mktemp -d)
trap 'rm -rf "$RUNS"' EXIT
$PY_TRAIN -m train.autoencoder.main --workdir "$RUNS/ae" --config train/autoencoder/configs/default.py \
  --config.hidden=64 --config.max_steps=20 --config.train_eval_size=1000 --config.progress=False
$PY_TRAIN -m train.wrn.main --workdir "$RUNS/wrn" --config train/wrn/configs/tiny.py \
  --config.num_epochs=1
$PY_TRAIN -m train.lm.main --workdir "$RUNS/lm" --config train/lm/configs/tiny.py \
  --config.num_epochs=1 --config.max_train_tokens=4000 --config.max_eval_tokens=400 \
  --config.data_dir="${SPARSEOUT_DATA:-../shared/data}/ptb"
echo "floors passed"
