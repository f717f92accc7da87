#!/usr/bin/env bash
# The GPU path in one command, under 10 minutes on one GPU, each part bounded by its own timeout:
#   1. the GPU tests: compiled Triton kernels against the torch path at full shapes, and a training
#      run on the Triton kernels against one on the torch path, step by step;
#   2. the kernel and TopK training-step table at d 768, F 131072, k 32 against the dense step and
#      against sparsify's kernels (benchmarks/gpu_check.py);
#   3. determinism: two identical runs and a run cut and resumed, every architecture, with the
#      default (atomic) and the sorted (deterministic) reductions (benchmarks/gpu_determinism.py);
#   4. the trainer against the plain dense TopK loop on the same batches (benchmarks/bench_train.py);
#   5. the cache reader feeding the trainer, in its thread vs a background thread, which decides the
#      default of `sae train --prefetch` on CUDA (benchmarks/bench_reader_feed.py).
# Runs from a checkout without installing it (PYTHONPATH), so a bare GPU image with torch and
# triton is enough. sparsify is never a dependency: set SPARSIFY_SRC to a folder holding its
# unpacked wheel (sparsify/xformers.py, sparsify/fused_encoder.py), or put the wheel in .whl/.
# Without a GPU every part still runs but says so (part 2 needs TRITON_INTERPRET=1 for the CPU).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [ -z "${SPARSIFY_SRC:-}" ] && ls .whl/eai_sparsify-*.whl >/dev/null 2>&1; then
  SPARSIFY_SRC=$(mktemp -d)
  "$PY" -m zipfile -e .whl/eai_sparsify-*.whl "$SPARSIFY_SRC" >/dev/null
fi
failed=()
part() {  # part NAME SECONDS COMMAND...
  local name=$1 limit=$2
  shift 2
  echo
  echo "==== $name (limit ${limit}s): $*"
  local t0=$SECONDS
  timeout "$limit" "$@"
  local rc=$?
  echo "==== $name: rc $rc in $((SECONDS - t0))s"
  [ "$rc" -eq 0 ] || failed+=("$name (rc $rc)")
}
"$PY" -c 'import torch; print("torch", torch.__version__, "| cuda", torch.cuda.is_available(), "|", torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU")'
part "GPU tests" 200 "$PY" -m pytest -q -p no:cacheprovider -m gpu -rs \
  tests/saes/kernels/test_triton_kernels.py tests/saes/test_kernel_training_agreement.py
part "kernels and training steps" 150 "$PY" benchmarks/gpu_check.py ${SPARSIFY_SRC:+--sparsify "$SPARSIFY_SRC"}
part "determinism" 120 "$PY" benchmarks/gpu_determinism.py
part "trainer vs plain dense loop" 90 "$PY" benchmarks/bench_train.py --synthetic \
  --device "$("$PY" -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')"
part "reader feeding the trainer" 120 "$PY" benchmarks/bench_reader_feed.py --rows 262144 --steps 200 --reps 2 \
  --d 768 --expansion 32 --device "$("$PY" -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')"
echo
if [ ${#failed[@]} -eq 0 ]; then echo "gpu_check: every part passed"; else echo "gpu_check: FAILED: ${failed[*]}"; exit 1; fi
