#!/usr/bin/env bash
# The GPU table in one command (about 10 minutes on one H100): writes benchmarks/results/gpu_*.md.
#
#   bash benchmarks/gpu_suite.sh            # on a machine with one NVIDIA GPU and jax[cuda], flax, optax
#   bash benchmarks/gpu_suite.sh --smoke    # CPU, tiny sizes: checks the suite runs (CI does this)
#
# Needs only jax, flax and optax. Wheels put in benchmarks/wheels/ are installed first (no index is
# asked), for a machine that lacks one of them. PYTHON picks the interpreter (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if compgen -G "benchmarks/wheels/*.whl" > /dev/null; then
  "$PY" -m pip install --no-index --quiet benchmarks/wheels/*.whl
fi
"$PY" -c "import jax, flax, optax" || {
  echo "gpu_suite: needs jax, flax and optax importable by $PY" >&2
  exit 2
}
# XLA must not take 75 % of the GPU up front in several processes; one process here, so the default
# preallocation is fine. The suite stops itself before 10 minutes (--budget_s, default 540 s).
exec "$PY" -m benchmarks.gpu_suite "$@"
