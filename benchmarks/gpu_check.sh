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
#      default of `sae train --prefetch` on CUDA (benchmarks/bench_reader_feed.py);
#   6. harvest vs the plain forward to the deepest hook point (benchmarks/bench_harvest.py; goal
#      >= 0.9x), on the GPU when that script takes --device, and only where the offline model and
#      its packages are installed (a bare GPU image may lack them: the part then says so).
# Part 3 also times a TopK step with `--deterministic on` against `off` (goal: within 10%) and
# says whether every SAE resumed bit-identically in each mode.
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
  tests/saes/kernels/test_triton_kernels.py tests/saes/kernels/test_feature_grads.py \
  tests/saes/test_kernel_training_agreement.py
part "kernels and training steps" 150 "$PY" benchmarks/gpu_check.py ${SPARSIFY_SRC:+--sparsify "$SPARSIFY_SRC"}
part "determinism" 150 "$PY" benchmarks/gpu_determinism.py
part "trainer vs plain dense loop" 90 "$PY" benchmarks/bench_train.py --synthetic \
  --device "$("$PY" -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')"
part "reader feeding the trainer" 120 "$PY" benchmarks/bench_reader_feed.py --rows 262144 --steps 200 --reps 2 \
  --d 768 --expansion 32 --device "$("$PY" -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')"
DEV=$("$PY" -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')
if ! "$PY" -c 'import transformers, transformer_lens; from workbench.models import offline_path; offline_path("smollm2-135m")' \
    >/dev/null 2>&1; then
  echo
  echo "==== harvest vs plain forward: not run (the offline model smollm2-135m or transformers /"
  echo "     transformer_lens is not installed here); measure it where they are: $PY benchmarks/bench_harvest.py"
  failed+=("harvest (not run: model or packages missing)")
elif "$PY" benchmarks/bench_harvest.py --help | grep -q -- '--device'; then
  part "harvest vs plain forward" 150 "$PY" benchmarks/bench_harvest.py --tokens 65536 --reps 3 --skip-memory --device "$DEV"
else
  echo "(bench_harvest.py has no --device: its harvest table is the CPU's, not the GPU's)"
  part "harvest vs plain forward (CPU)" 150 "$PY" benchmarks/bench_harvest.py --tokens 16384 --reps 3 --skip-memory
fi
echo
if [ ${#failed[@]} -eq 0 ]; then echo "gpu_check: every part passed"; else echo "gpu_check: FAILED: ${failed[*]}"; exit 1; fi
