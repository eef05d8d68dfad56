#!/usr/bin/env bash
# Train biomedgpt-small on this machine with the project's own pipeline, then export only the parts we trained
# (encoders, adapters, the LoRA adapter, and the evidence index) into models/biomedgpt-small/. Run from the repository root after
# scripts/build_training_data.sh. Each stage resumes if interrupted (re-run this script; finished stages are
# skipped). The step budgets below are the CPU budget of the shipped model (see models/biomedgpt-small/MODEL_CARD.md).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
RUNS=${RUNS:-runs/small}
OUT=${OUT:-models/biomedgpt-small}
MOL_EPOCHS=${MOL_EPOCHS:-2}
PROT_STEPS=${PROT_STEPS:-60}
ALIGN_STEPS=${ALIGN_STEPS:-120}
FINETUNE_STEPS=${FINETUNE_STEPS:-400}
FINETUNE2_STEPS=${FINETUNE2_STEPS:-260}

stage() {  # stage NAME STAGE CONFIG [overrides...]: run (or resume) one stage into $RUNS/NAME unless done
  local name=$1 kind=$2 config=$3; shift 3
  if [ -f "$RUNS/$name/model/config.json" ]; then echo "== $name: done ($RUNS/$name/model)"; return; fi
  local resume=()
  [ -d "$RUNS/$name" ] && resume=(--resume)
  echo "== $name"
  /usr/bin/time -f "$name wall %e s, peak RSS %M kB" "$BIN/biomedgpt" train "$kind" --config "$config" \
    output_dir="$RUNS/$name" "$@" "${resume[@]}"
}

# A fixed, seeded sample of 1,000 protein QA records (all four questions) beside all molecule QA in finetuning.
if [ ! -f "$RUNS/protein_qa_train_1000.jsonl" ]; then
  mkdir -p "$RUNS"
  "$BIN/python" - "$RUNS/protein_qa_train_1000.jsonl" <<'PY'
import random, sys
rows = open("data/build/protein_qa_train.jsonl").readlines()
random.Random(0).shuffle(rows)
open(sys.argv[1], "w").writelines(rows[:1000])
PY
fi

# The second finetune pass: a seeded mixture of ChEBI-20-validation descriptions (the test set's style; PCdes
# writes "It is a ..." where ChEBI-20 writes "The molecule is a ..."), location and GO questions.
if [ ! -f "$RUNS/finetune_mix2.jsonl" ]; then
  mkdir -p "$RUNS"
  "$BIN/python" scripts/finetune_mixture.py "$RUNS/finetune_mix2.jsonl" --seed 0 \
    --molecules 1200 --location 700 --function 250 --other 150
fi

# The third pass (part of the shipped model; PASS3=0 stops after pass 2): PubMedQA's labelled training half (the
# 500 PQA-L questions outside the official test split, twice) beside ChEBI-20-validation descriptions and protein
# questions that pass 2 did not see.
if [ "${PASS3:-1}" = 1 ] && [ ! -f "$RUNS/finetune_mix3.jsonl" ]; then
  "$BIN/python" scripts/finetune_mixture.py "$RUNS/finetune_mix3.jsonl" --seed 3 \
    --molecules 1300 --location 450 --function 150 --other 100 --exclude "$RUNS/finetune_mix2.jsonl" \
    --extra data/build/pubmedqa_train.jsonl --extra-copies 2
fi

stage encoder-molecule encoder-molecule configs/small/encoder-molecule.yaml schedule.epochs="$MOL_EPOCHS" schedule.eval_every=100
stage encoder-protein encoder-protein configs/small/encoder-protein.yaml model="$RUNS/encoder-molecule/model" \
  schedule.max_steps="$PROT_STEPS" schedule.eval_every=50
stage align align configs/small/align.yaml model="$RUNS/encoder-protein/model" schedule.max_steps="$ALIGN_STEPS" \
  "data.train=[data/build/molecule_qa_train.jsonl]" data.max_length=256 threads=1
stage finetune-rag finetune configs/small/finetune-rag.yaml model="$RUNS/align/model" schedule.max_steps="$FINETUNE_STEPS" \
  "data.train=[data/build/molecule_qa_train.jsonl,$RUNS/protein_qa_train_1000.jsonl]"

stage finetune-rag2 finetune configs/small/finetune-rag2.yaml model="$RUNS/finetune-rag/model" \
  schedule.max_steps="$FINETUNE2_STEPS" "data.train=[$RUNS/finetune_mix2.jsonl]"

FINAL=finetune-rag2
if [ "${PASS3:-1}" = 1 ]; then
  stage finetune-rag3 finetune configs/small/finetune-rag3.yaml model="$RUNS/finetune-rag2/model" \
    "data.train=[$RUNS/finetune_mix3.jsonl]"
  FINAL=finetune-rag3
fi

echo "== export to $OUT"
# the decoding its card numbers were measured with becomes its default (config.json `generation`)
"$BIN/python" -m biomedgpt.model.export "$RUNS/$FINAL/model" "$OUT" \
  --generation num_beams=4 repetition_penalty=1.0 quantize=bf16  # evidence: models/evidence/
