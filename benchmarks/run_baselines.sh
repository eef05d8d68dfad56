#!/usr/bin/env bash
# Baseline numbers for every benchmark, with `biomedgpt eval` (resumable: re-run to continue).
# Writes run folders under runs/baselines/ and copies their small metrics files plus a merged report into
# benchmarks/results/baselines/. Takes ~10 minutes on 2 CPU cores (most of it the protein alignments).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
DATA=${DATA:-runs/eval-data}
RUNS=${RUNS:-runs/baselines}
RESULTS=benchmarks/results/baselines
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

"$BIN/python" benchmarks/eval_data.py --out "$DATA"

run() {  # run NAME TASK DATA TRAIN BASELINE...
  local name=$1 task=$2 data=$3 train=$4; shift 4
  for baseline in "$@"; do
    local args=(eval "$task" --model "baseline:$baseline" --data "$DATA/$data.jsonl" --benchmark "$name"
                --out "$RUNS/$name--$baseline" --batch-size 64)
    if [ -n "$train" ]; then args+=(--train "$DATA/$train.jsonl"); fi
    echo "+ biomedgpt ${args[*]}" >&2
    "$BIN/biomedgpt" "${args[@]}" > /dev/null
  done
}

run chebi20-test     qa  chebi20_test   chebi20_validation nn majority random
run location-test    qa  location_test  location_valid     nn majority random
run go-mf-test       qa  go_mf_test     go_mf_val          nn majority random
run pubmedqa-test    mcq pubmedqa_test  pubmedqa_train     majority random
run medmcqa-dev      mcq medmcqa_dev    ""                 majority random
run medqa-test       mcq medqa_test     ""                 majority random

mkdir -p "$RESULTS"
for dir in "$RUNS"/*/; do
  name=$(basename "$dir")
  cp "$dir/metrics.json" "$RESULTS/$name.json"
  cp "$dir/run.json" "$RESULTS/$name.run.json"
done
"$BIN/biomedgpt" report "$RUNS"/chebi20-test--* "$RUNS"/location-test--* "$RUNS"/go-mf-test--* \
  "$RUNS"/pubmedqa-test--* "$RUNS"/medmcqa-dev--* "$RUNS"/medqa-test--* \
  --out "$RESULTS/REPORT.md" --plot "$RESULTS/baselines.png"

# Cross-check on the project's own data files (scripts/build_training_data.sh -> data/build/), when present:
# a larger molecule pool (ChEBI-20 validation + PCdes minus test InChIKeys) and a protein pool that mixes GO
# and location questions (the baselines then use the records asked the same question).
if [ -f data/build/molecule_qa_test.jsonl ]; then
  B=runs/build-check
  "$BIN/biomedgpt" eval qa --model baseline:nn --data data/build/molecule_qa_test.jsonl \
    --train data/build/molecule_qa_train.jsonl --benchmark chebi20-test-build --out $B/chebi-nn > /dev/null
  "$BIN/biomedgpt" eval qa --model baseline:nn --data data/build/protein_location_test.jsonl \
    --train data/build/protein_qa_train.jsonl --benchmark location-test-build --limit 500 --out $B/location-nn > /dev/null
  "$BIN/biomedgpt" eval mcq --model baseline:majority --data data/build/pubmedqa_test.jsonl \
    --train data/build/pubmedqa_train.jsonl --benchmark pubmedqa-build --out $B/pubmedqa-majority > /dev/null
  mkdir -p "$RESULTS/project-data"
  for dir in $B/*/; do cp "$dir/metrics.json" "$RESULTS/project-data/$(basename "$dir").json"; done
  "$BIN/biomedgpt" report $B/chebi-nn $B/location-nn $B/pubmedqa-majority --out "$RESULTS/project-data/REPORT.md"
fi
