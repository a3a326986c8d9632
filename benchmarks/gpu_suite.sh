#!/usr/bin/env bash
# The GPU table in one command (under 10 minutes on one H100): writes benchmarks/results/gpu_*.md.
#
#   bash benchmarks/gpu_suite.sh                   # on a machine with one NVIDIA GPU, jax[cuda], flax, optax
#   bash benchmarks/gpu_suite.sh --parts wrn       # one table again (op, lstm, lstm_cudnn, wrn)
#   bash benchmarks/gpu_suite.sh --smoke           # CPU, tiny sizes: checks the suite runs (CI does this)
#
# Needs only jax, flax and optax. Wheels put in benchmarks/wheels/ are installed first (no index is
# asked), for a machine that lacks one of them. PYTHON picks the interpreter (default python3),
# GPU_SUITE_BUDGET_S the wall-clock budget of all parts together (default 540 s).
#
# Each table runs in its own process, so a crash (a first cuDNN run) loses only its own table; what
# would overrun the budget is skipped and says so in its table. Compiled programs are cached in
# JAX_COMPILATION_CACHE_DIR, so rerunning a skipped part on the same machine compiles less.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if compgen -G "benchmarks/wheels/*.whl" > /dev/null; then
  "$PY" -m pip install --no-index --quiet benchmarks/wheels/*.whl || exit 2
fi
"$PY" -c "import jax, flax, optax" || {
  echo "gpu_suite: needs jax, flax and optax importable by $PY" >&2
  exit 2
}
export GPU_SUITE_COMMAND="bash benchmarks/gpu_suite.sh $*"
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-/tmp/sparseout_gpu_suite_jax_cache}"
deadline=$(( $(date +%s) + ${GPU_SUITE_BUDGET_S:-540} ))
parts="op,lstm,lstm_cudnn,wrn"
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --parts) parts="$2"; shift 2 ;;
    --parts=*) parts="${1#--parts=}"; shift ;;
    *) args+=("$1"); shift ;;
  esac
done
status=0
for part in ${parts//,/ }; do
  "$PY" -m benchmarks.gpu_suite ${args[@]+"${args[@]}"} --parts "$part" --deadline "$deadline" \
    || { rc=$?; echo "gpu_suite: part $part exited with $rc" >&2; status=1; }
done
exit $status
