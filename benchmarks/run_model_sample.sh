#!/usr/bin/env bash
# A model beside its baselines on fixed seeded samples (MedMCQA dev 200, PubMedQA test 100): the `small`
# preset (SmolLM2-135M-Instruct as the base LM, before any biomedical training), zero-shot, option-letter
# log-probability protocol. Needs runs/eval-data/ from benchmarks/eval_data.py. ~17 minutes on the shared
# 2-core machine. Results: benchmarks/results/model-sample/.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
B=.venv/bin/biomedgpt
R=runs/model-sample
$B eval mcq --model small --data runs/eval-data/medmcqa_dev.jsonl --benchmark medmcqa-dev-sample200 --limit 200 --out $R/medmcqa-small-logprob > /dev/null
$B eval mcq --model baseline:majority --data runs/eval-data/medmcqa_dev.jsonl --benchmark medmcqa-dev-sample200 --limit 200 --out $R/medmcqa-majority > /dev/null
$B eval mcq --model baseline:random --data runs/eval-data/medmcqa_dev.jsonl --benchmark medmcqa-dev-sample200 --limit 200 --out $R/medmcqa-random > /dev/null
$B eval mcq --model small --data runs/eval-data/pubmedqa_test.jsonl --train runs/eval-data/pubmedqa_train.jsonl --benchmark pubmedqa-test-sample100 --limit 100 --out $R/pubmedqa-small-logprob > /dev/null
$B eval mcq --model baseline:majority --data runs/eval-data/pubmedqa_test.jsonl --train runs/eval-data/pubmedqa_train.jsonl --benchmark pubmedqa-test-sample100 --limit 100 --out $R/pubmedqa-majority > /dev/null
$B eval mcq --model baseline:random --data runs/eval-data/pubmedqa_test.jsonl --train runs/eval-data/pubmedqa_train.jsonl --benchmark pubmedqa-test-sample100 --limit 100 --out $R/pubmedqa-random > /dev/null
mkdir -p benchmarks/results/model-sample
for d in $R/*/; do cp "$d/metrics.json" "benchmarks/results/model-sample/$(basename "$d").json"; done
$B report $R/medmcqa-small-logprob $R/medmcqa-majority $R/medmcqa-random \
  $R/pubmedqa-small-logprob $R/pubmedqa-majority $R/pubmedqa-random --out benchmarks/results/model-sample/REPORT.md
