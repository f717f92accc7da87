#!/usr/bin/env bash
# Set up .venv, then run the workbench end to end on the offline default model and corpus:
# harvest -> train -> eval -> browse -> steer. Safe to run again: a finished
# harvest is reused, an interrupted one resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
OUT=${QUICKSTART_DIR:-cache/quickstart}

echo "== 1. harvest: 100k tokens of wiki-vital from smollm2-135m, two hook points in one pass"
sae harvest --model smollm2-135m --corpus wiki-vital \
  --hooks blocks.4.hook_resid_post blocks.8.hook_resid_post \
  --tokens 100000 --out "$OUT/acts"
sae cache info "$OUT/acts"
sae cache verify "$OUT/acts"
echo "   and 100k tokens more (another shuffle seed, blocks.8 only): documents for sparse probing that the SAE never trains on"
sae harvest --model smollm2-135m --corpus wiki-vital --hooks blocks.8.hook_resid_post \
  --tokens 100000 --seed 1 --out "$OUT/probe-acts"

echo "== 2. train: a TopK SAE (8x width, k 32) on blocks.8 of that cache; prints held-out FVU, L0 and dead %"
echo "   (5% of the cache held out: about 5,000 tokens of documents the SAE never sees, for step 3)"
sae train --cache "$OUT/acts" --hooks blocks.8.hook_resid_post --arch topk --k 32 --expansion 8 \
  --batch-size 2048 --epochs 3 --heldout-fraction 0.05 --out "$OUT/saes"

echo "== 3. eval: spliced CE/KL scores on 1,536 held-out tokens, held-out FVU, L0, dead %, probing -> eval.json"
echo "   + Pareto plot; each score with its bootstrap 95% interval [low, high] (SAEBench's own size: --ce-tokens 20480)"
sae eval --sae "$OUT/saes" --cache "$OUT/acts" --ce-tokens 1536 --probe-cache "$OUT/probe-acts"

echo "== 4. browse: feature dashboards from the cache in one pass, and a static HTML feature browser"
sae browse --sae "$OUT/saes" --cache "$OUT/acts"

echo "== 5. steer: toward 'ocean' with the SAE's most contrastive feature (sae), its best output-score feature"
echo "   (sae_output: what a feature makes the model write, scored on 16 rise + 16 logit-lens candidates)"
echo "   and the DiffMean baseline; sweep rows on held-out prompts: concept, perplexity, KL cost"
sae steer-sweep --sae "$OUT/saes" --concepts ocean --methods sae diffmean --select rise output --candidates 16 \
  --coeffs 0 0.2 0.4 --prompts 4 --max-new-tokens 12 --neutral 2 --out "$OUT/steer"
