#!/usr/bin/env bash
# The model card's numbers: a model folder (default models/biomedgpt-small) and the baselines on the same fixed,
# seeded samples of the project's test files (scripts/build_training_data.sh -> data/build/). Resumable: re-run
# to continue. Copies each run's metrics into benchmarks/results/default-model/ and writes REPORT.md there.
# Sample sizes (env): CHEBI_N=500 (set 3300 for the whole ChEBI-20 test), LOC_N=500, GO_N=200, MCQ_N=500.
# The model answers with its recommended decoding (config.json `generation`; biomedgpt-small: 4 beams,
# repetition penalty 1.0, bf16 weights); MODEL_TAG names that decoding in the run folders (default -bf16-beams4).
# The whole ChEBI-20 test took 83 min that way on 2 cores (1.5 s per molecule; ~2 h before the beams shared their
# prompt cache; greedy bf16 at batch 32: ~45 min); since finished prompts leave the batch, ~1.1 s per molecule was
# measured on a 16-molecule sample (~1 h expected for the whole test, not re-run).
# ABLATION=1 adds, on seeded samples of 100: greedy decoding in fp32 with and without evidence in the prompts
# (--evidence 0), beside the NN baseline on the same items. benchmarks/subset_metrics.py scores a full run on a
# seeded sample.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
MODEL=${MODEL:-models/biomedgpt-small}
NAME=${NAME:-biomedgpt-small}
RUNS=${RUNS:-runs/default-model}
RESULTS=${RESULTS:-benchmarks/results/default-model}
CHEBI_N=${CHEBI_N:-500} LOC_N=${LOC_N:-500} GO_N=${GO_N:-200} MCQ_N=${MCQ_N:-500}
D=data/build
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

# ChEBI-20 validation alone: the shipped evidence index's molecule pool (PCdes is research-only, not shipped).
grep '"source": "chebi20-validation"' $D/molecule_qa_train.jsonl > "$D/chebi20_validation_pool.jsonl"

ev() {  # ev TASK BENCHMARK DATA N SYSTEM [extra args...]
  local task=$1 bench=$2 data=$3 n=$4 system=$5; shift 5
  local tag=${system#baseline:}; [ "$system" = "$MODEL" ] && tag=$NAME
  echo "+ biomedgpt eval $task --model $system --data $data --limit $n $*" >&2
  "$BIN/biomedgpt" eval "$task" --model "$system" --data "$data" --limit "$n" --seed 0 --benchmark "$bench" \
    --out "$RUNS/$bench--$tag$SUFFIX" "$@" > /dev/null
}
SUFFIX=""
GREEDY=(--batch-size 16 --repetition-penalty 1.0 --num-beams 1 --quantize none)
MODEL_TAG=${MODEL_TAG:--bf16-beams4}
SUFFIX=$MODEL_TAG
ev qa chebi20-test-$CHEBI_N $D/molecule_qa_test.jsonl "$CHEBI_N" "$MODEL" --batch-size 8 --max-new-tokens 160
ev qa location-test-$LOC_N $D/protein_location_test.jsonl "$LOC_N" "$MODEL" --batch-size 16 --max-new-tokens 16
ev qa go-mf-test-$GO_N $D/protein_go_mf_test.jsonl "$GO_N" "$MODEL" --batch-size 16 --max-new-tokens 64
SUFFIX=""
ev qa chebi20-test-$CHEBI_N $D/molecule_qa_test.jsonl "$CHEBI_N" baseline:nn --train $D/chebi20_validation_pool.jsonl
SUFFIX="-pool-with-pcdes"
ev qa chebi20-test-$CHEBI_N $D/molecule_qa_test.jsonl "$CHEBI_N" baseline:nn --train $D/molecule_qa_train.jsonl
SUFFIX=""
if [ "${ABLATION:-0}" = 1 ]; then
  for bench in chebi20:molecule_qa_test:160 location:protein_location_test:16; do
    IFS=: read -r name file tokens <<< "$bench"
    ev qa $name-test-100 $D/$file.jsonl 100 "$MODEL" "${GREEDY[@]}" --max-new-tokens $tokens
    SUFFIX="-no-evidence"
    ev qa $name-test-100 $D/$file.jsonl 100 "$MODEL" "${GREEDY[@]}" --max-new-tokens $tokens --evidence 0
    SUFFIX=""
  done
  ev qa chebi20-test-100 $D/molecule_qa_test.jsonl 100 baseline:nn --train $D/chebi20_validation_pool.jsonl
  SUFFIX="-pool-with-pcdes"
  ev qa chebi20-test-100 $D/molecule_qa_test.jsonl 100 baseline:nn --train $D/molecule_qa_train.jsonl
  SUFFIX=""
  ev qa location-test-100 $D/protein_location_test.jsonl 100 baseline:nn --train $D/protein_qa_train.jsonl
fi
ev qa location-test-$LOC_N $D/protein_location_test.jsonl "$LOC_N" baseline:nn --train $D/protein_qa_train.jsonl
ev qa go-mf-test-$GO_N $D/protein_go_mf_test.jsonl "$GO_N" baseline:nn --train $D/protein_qa_train.jsonl
ev mcq pubmedqa-test-$MCQ_N $D/pubmedqa_test.jsonl "$MCQ_N" "$MODEL" --batch-size 8
ev mcq pubmedqa-test-$MCQ_N $D/pubmedqa_test.jsonl "$MCQ_N" baseline:majority --train $D/pubmedqa_train.jsonl
for mcq in medmcqa_dev medqa_usmle_test; do  # no training split here: majority = the most common gold letter
  ev mcq "${mcq//_/-}-$MCQ_N" $D/$mcq.jsonl "$MCQ_N" "$MODEL" --batch-size 8
  ev mcq "${mcq//_/-}-$MCQ_N" $D/$mcq.jsonl "$MCQ_N" baseline:majority
done

mkdir -p "$RESULTS"
for dir in "$RUNS"/*/; do
  cp "$dir/metrics.json" "$RESULTS/$(basename "$dir").json"
done
"$BIN/biomedgpt" report "$RUNS"/*/ --out "$RESULTS/REPORT.md"
