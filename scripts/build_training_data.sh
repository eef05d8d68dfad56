#!/usr/bin/env bash
# Build the training and evaluation files the default model (biomedgpt-small) uses, from ../shared/data,
# into data/build/ (git-ignored), then check every train file against every eval file for leakage.
#
#   scripts/build_training_data.sh [OUT_DIR]        (OUT_DIR relative to the repository root; 1-2 min on 2 cores)
#
# Environment: PYTHON (default .venv/bin/python), BIOMEDGPT_SHARED_DATA (default ../shared/data).
# Never trains on a test split: every *_train file is built with --exclude of its eval files, and the
# final `check --fail-on-leak` calls stop the script if any exact duplicate remains.
set -euo pipefail

cd "$(dirname "$0")/.."  # the repository root: relative paths below (and OUT_DIR) are taken from here
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
SHARED=${BIOMEDGPT_SHARED_DATA:-../shared/data}
OUT=${1:-data/build}
DATA=("$PYTHON" -m biomedgpt.data.cli)  # = `biomedgpt data`, without loading the other areas' commands

[ -d "$SHARED" ] || { echo "no datasets at $SHARED (set BIOMEDGPT_SHARED_DATA)" >&2; exit 2; }
mkdir -p "$OUT/reports"
step() { echo; echo "== $*"; }

CHEBI=$SHARED/chebi-20
PCDES=$SHARED/pcdes
FAPM=$SHARED/swissprot-go-fapm
IP=$SHARED/protein-instructprotein-benchmarks

step "molecule QA: eval = ChEBI-20 test (all 3,300 rows, as published)"
"${DATA[@]}" molecule-qa "$CHEBI/test.txt" --source chebi20-test --keep-duplicates \
    -o "$OUT/molecule_qa_test.jsonl" --summary-json "$OUT/reports/molecule_qa_test.summary.json" \
    --rejects "$OUT/reports/molecule_qa_test.rejects.jsonl"

step "molecule QA: train = ChEBI-20 validation + PCdes, minus every ChEBI-20 test InChIKey, de-duplicated"
"${DATA[@]}" molecule-qa "$CHEBI/validation.txt" "$PCDES/PCdev.txt" "$PCDES/PCtest.txt" \
    --source chebi20-validation --source pcdes-dev --source pcdes-test --exclude "$CHEBI/test.txt" \
    -o "$OUT/molecule_qa_train.jsonl" --summary-json "$OUT/reports/molecule_qa_train.summary.json" \
    --rejects "$OUT/reports/molecule_qa_train.rejects.jsonl"

step "protein QA: eval = InstructProtein GO test sets (mf, bp, cc) and DeepLoc test"
for aspect in mf bp cc; do
    "${DATA[@]}" protein-qa "$IP/gene_ontology/test_${aspect}_with_names.tsv" --source "go-test-$aspect" \
        -o "$OUT/protein_go_${aspect}_test.jsonl" \
        --summary-json "$OUT/reports/protein_go_${aspect}_test.summary.json" \
        --rejects "$OUT/reports/protein_go_${aspect}_test.rejects.jsonl"
done
"${DATA[@]}" protein-qa "$IP/subcellular_localization/deeploc_test.tsv" --source deeploc-test --keep-duplicates \
    -o "$OUT/protein_location_test.jsonl" --summary-json "$OUT/reports/protein_location_test.summary.json" \
    --rejects "$OUT/reports/protein_location_test.rejects.jsonl"

step "protein QA: train = FAPM GO tables (val + test splits, mf/bp/cc) + DeepLoc valid, minus eval sequences"
PROTEIN_EVAL=("$OUT/protein_go_mf_test.jsonl" "$OUT/protein_go_bp_test.jsonl" "$OUT/protein_go_cc_test.jsonl"
              "$OUT/protein_location_test.jsonl")
"${DATA[@]}" protein-qa "$FAPM"/val_exp_prompt_{mf,bp,cc}_new.csv "$FAPM"/test_exp_prompt_{mf,bp,cc}_new.csv \
    "$IP/subcellular_localization/deeploc_valid.tsv" \
    --exclude "${PROTEIN_EVAL[0]}" --exclude "${PROTEIN_EVAL[1]}" --exclude "${PROTEIN_EVAL[2]}" \
    --exclude "${PROTEIN_EVAL[3]}" \
    -o "$OUT/protein_qa_train.jsonl" --summary-json "$OUT/reports/protein_qa_train.summary.json" \
    --rejects "$OUT/reports/protein_qa_train.rejects.jsonl"

step "multiple choice: PubMedQA test (official 500), PubMedQA train (the other 500 PQA-L), MedMCQA dev, MedQA test"
"${DATA[@]}" mcq pubmedqa "$SHARED/pubmedqa/test_set.json" -o "$OUT/pubmedqa_test.jsonl" \
    --summary-json "$OUT/reports/pubmedqa_test.summary.json"
"${DATA[@]}" mcq pubmedqa "$SHARED/pubmedqa/ori_pqal.json" --exclude "$OUT/pubmedqa_test.jsonl" \
    -o "$OUT/pubmedqa_train.jsonl" --summary-json "$OUT/reports/pubmedqa_train.summary.json"
"${DATA[@]}" mcq medmcqa "$SHARED/medmcqa/dev.json" -o "$OUT/medmcqa_dev.jsonl" \
    --summary-json "$OUT/reports/medmcqa_dev.summary.json" --rejects "$OUT/reports/medmcqa_dev.rejects.jsonl"
"${DATA[@]}" mcq medqa "$SHARED/medqa-usmle/US_4_options_phrases_no_exclude_test.jsonl" \
    -o "$OUT/medqa_usmle_test.jsonl" --summary-json "$OUT/reports/medqa_usmle_test.summary.json" \
    --rejects "$OUT/reports/medqa_usmle_test.rejects.jsonl"

step "leakage: every train file against its eval files (fails on any exact duplicate)"
"${DATA[@]}" check "$OUT/molecule_qa_train.jsonl" --against "$OUT/molecule_qa_test.jsonl" \
    --json "$OUT/reports/leakage_molecule_qa.json" --fail-on-leak
"${DATA[@]}" check "$OUT/protein_qa_train.jsonl" --against "${PROTEIN_EVAL[@]}" \
    --json "$OUT/reports/leakage_protein_qa.json" --fail-on-leak
"${DATA[@]}" check "$OUT/pubmedqa_train.jsonl" --against "$OUT/pubmedqa_test.jsonl" \
    "$OUT/medmcqa_dev.jsonl" "$OUT/medqa_usmle_test.jsonl" \
    --json "$OUT/reports/leakage_mcq.json" --fail-on-leak

step "protein QA, strict variant: train without near duplicates (5-mer identity estimate >= 0.9) of eval"
"${DATA[@]}" check "$OUT/protein_qa_train.jsonl" --against "${PROTEIN_EVAL[@]}" --identity 0.9 \
    --filtered "$OUT/protein_qa_train_strict.jsonl" --drop-near > "$OUT/reports/protein_qa_train_strict.txt"
tail -1 "$OUT/reports/protein_qa_train_strict.txt"

step "done: record counts (also in $OUT/MANIFEST.json, with sha256 checksums for model cards)"
"$PYTHON" - "$OUT" <<'PY'
import json, sys
from pathlib import Path
from biomedgpt.io import atomic_write_text, sha256_file

out = Path(sys.argv[1])
files = {p.name: {"records": sum(1 for line in p.open(encoding="utf-8") if line.strip()),
                  "sha256": sha256_file(p), "role": "eval" if "_test" in p.name or "_dev" in p.name else "train"}
         for p in sorted(out.glob("*.jsonl"))}
atomic_write_text(out / "MANIFEST.json", json.dumps(files, indent=2) + "\n")
for name, info in files.items():
    print(f"{info['records']:>8,}  {info['role']:<5}  {name}")
PY
