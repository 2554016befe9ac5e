#!/bin/bash
# Captioner evaluation (issue 20, docs/training.md "Stage 2"): the prompt ablations on the first 150
# test molecules, then the full test split. M: the checkpoint to evaluate; OUT: the report folder;
# TOKENS: max new tokens (default 128, the captioning default); BATCH: molecules per generate call;
# ABLATIONS=0 skips the ablations.
set -u
cd "$(dirname "$0")/.." && . .venv/bin/activate
M=${M:-checkpoints/mvclam-small-chebi}
OUT=${OUT:-runs/eval}
TOKENS=${TOKENS:-128}
BATCH=${BATCH:-32}
mkdir -p "$OUT"
C="mvclam evaluate captioning --pairs ../shared/data/pairs/*.tsv --model $M --split test --max-new-tokens $TOKENS --batch-size $BATCH"
run() { name=$1; shift; echo "== $name $(date +%T)"; $C "$@" --out "$OUT/$name.json" > "$OUT/$name.log" 2>&1; echo "rc=$? $(date +%T)"; }
run test_full --save-predictions "$OUT/captions_test.tsv"
# ChEBI-20 rows of the test split, scored from the same captions
mvclam evaluate captioning --pairs ../shared/data/pairs/chebi20_train.tsv ../shared/data/pairs/chebi20_validation.tsv \
  --split test --predictions "$OUT/captions_test.tsv" --out "$OUT/test_chebi20.json"
[ "${ABLATIONS:-1}" = 0 ] && exit 0
run abl150_both --limit-molecules 150 --save-predictions "$OUT/abl150_both.tsv"
run abl150_no_refs --limit-molecules 150 --prompt references=0
run abl150_no_soft --limit-molecules 150 --prompt soft_prompt=false
run abl150_smiles_only --limit-molecules 150 --prompt references=0 --prompt soft_prompt=false
run abl150_soft_only --limit-molecules 150 --prompt references=0 --prompt smiles_chars=0
