#!/usr/bin/env bash
# Train biomedgpt-small on this machine with the project's own pipeline, then export only the parts we trained
# (encoders + adapters, and the evidence index) into models/biomedgpt-small/. Run from the repository root after
# scripts/build_training_data.sh. Each stage resumes if interrupted (re-run this script; finished stages are
# skipped). The step budgets below are the CPU budget of the shipped model (see models/biomedgpt-small/MODEL_CARD.md).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
RUNS=${RUNS:-runs/small}
OUT=${OUT:-models/biomedgpt-small}
MOL_EPOCHS=${MOL_EPOCHS:-2}
PROT_STEPS=${PROT_STEPS:-150}
ALIGN_STEPS=${ALIGN_STEPS:-400}

stage() {  # stage NAME CONFIG [overrides...]: run (or resume) one training stage unless its model/ exists
  local name=$1 config=$2; shift 2
  if [ -f "$RUNS/$name/model/config.json" ]; then echo "== $name: done ($RUNS/$name/model)"; return; fi
  local resume=()
  [ -d "$RUNS/$name" ] && resume=(--resume)
  echo "== $name"
  /usr/bin/time -f "$name wall %e s, peak RSS %M kB" "$BIN/biomedgpt" train "$name" --config "$config" \
    output_dir="$RUNS/$name" "$@" "${resume[@]}"
}

stage encoder-molecule configs/small/encoder-molecule.yaml schedule.epochs="$MOL_EPOCHS" schedule.eval_every=100
stage encoder-protein configs/small/encoder-protein.yaml model="$RUNS/encoder-molecule/model" \
  schedule.max_steps="$PROT_STEPS" schedule.eval_every=50
stage align configs/small/align.yaml model="$RUNS/encoder-protein/model" schedule.max_steps="$ALIGN_STEPS"

echo "== export to $OUT"
"$BIN/python" -m biomedgpt.model.export "$RUNS/align/model" "$OUT" \
  --index-records data/build/molecule_qa_train.jsonl data/build/protein_qa_train.jsonl
