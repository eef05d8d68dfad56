"""Convert the development datasets in ../shared/data into the record JSONL files `biomedgpt eval` reads.

A small, self-contained conversion used to run the evaluation baselines (benchmarks/run_baselines.sh); the
full-featured builders are `biomedgpt data ...`. Output (default runs/eval-data/):

    chebi20_validation.jsonl / chebi20_test.jsonl      molecule captioning (QA records)
    location_valid.jsonl / location_test.jsonl          DeepLoc 10-class subcellular location (QA records)
    go_mf_val.jsonl / go_mf_test.jsonl                  Swiss-Prot GO molecular-function names, FAPM split
    pubmedqa_train.jsonl / pubmedqa_test.jsonl          PQA-L: official 500 test PMIDs / the other 500
    medmcqa_dev.jsonl                                   MedMCQA dev (its answer index `cop` is 1-based)
    medqa_test.jsonl                                    MedQA-USMLE 4-option test

Usage: python benchmarks/eval_data.py [--shared ../shared/data] [--out runs/eval-data]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from biomedgpt.data.records import MCQRecord, QARecord, write_jsonl

MOLECULE_QUESTION = "Describe this molecule."
LOCATION_QUESTION = "Where in the cell is this protein located?"
FUNCTION_QUESTION = "What is the molecular function of this protein?"
PUBMEDQA_OPTIONS = {"A": "yes", "B": "no", "C": "maybe"}

csv.field_size_limit(sys.maxsize)


def chebi20(path: Path, split: str) -> list[QARecord]:
    """`CID<TAB>SMILES<TAB>description`; MolT5's files double some backslashes, which is undone here."""
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [QARecord(id=f"chebi20-{row['CID']}", question=MOLECULE_QUESTION, answer=row["description"],
                     source=f"chebi-20/{split}", molecules=[row["SMILES"].replace("\\\\", "\\")])
            for row in rows]


def deeploc(path: Path, split: str) -> list[QARecord]:
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    return [QARecord(id=f"deeploc-{split}-{row['idx']}", question=LOCATION_QUESTION, answer=row["label_name"],
                     source=f"deeploc/{split}", proteins=[row["sequence"]]) for row in rows]


def go_function(path: Path, split: str) -> list[QARecord]:
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="|"))
    return [QARecord(id=f"go-mf-{split}-{row['name']}", question=FUNCTION_QUESTION, answer=row["function"],
                     source=f"swissprot-go-fapm/{split}", proteins=[row["protein"]]) for row in rows]


def pubmedqa(shared: Path) -> tuple[list[MCQRecord], list[MCQRecord]]:
    """(train, test): test = the official 500 test PMIDs; train = the other 500 PQA-L questions."""
    every = json.loads((shared / "pubmedqa" / "ori_pqal.json").read_text())
    test_ids = set(json.loads((shared / "pubmedqa" / "test_ground_truth.json").read_text()))
    letters = {text: letter for letter, text in PUBMEDQA_OPTIONS.items()}
    train, test = [], []
    for pmid, item in every.items():
        record = MCQRecord(id=f"pubmedqa-{pmid}", question=item["QUESTION"], options=dict(PUBMEDQA_OPTIONS),
                           answer=letters[item["final_decision"]], context=" ".join(item["CONTEXTS"]))
        (test if pmid in test_ids else train).append(record)
    return train, test


def medmcqa(path: Path) -> list[MCQRecord]:
    records = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            options = {"A": row["opa"], "B": row["opb"], "C": row["opc"], "D": row["opd"]}
            records.append(MCQRecord(id=f"medmcqa-{row['id']}", question=row["question"], options=options,
                                     answer="ABCD"[row["cop"] - 1], metadata={"subject": row["subject_name"]}))
    return records


def medqa(path: Path) -> list[MCQRecord]:
    records = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle):
            row = json.loads(line)
            records.append(MCQRecord(id=f"medqa-{number}", question=row["question"], options=row["options"],
                                     answer=row["answer_idx"], metadata={"step": row["meta_info"]}))
    return records


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    repo = Path(__file__).resolve().parent.parent
    parser.add_argument("--shared", type=Path, default=repo.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=repo / "runs" / "eval-data")
    args = parser.parse_args()
    s, out = args.shared, args.out
    loc = s / "protein-instructprotein-benchmarks" / "subcellular_localization"
    go = s / "swissprot-go-fapm"
    pubmed_train, pubmed_test = pubmedqa(s)
    files = {
        "chebi20_validation": chebi20(s / "chebi-20" / "validation.txt", "validation"),
        "chebi20_test": chebi20(s / "chebi-20" / "test.txt", "test"),
        "location_valid": deeploc(loc / "deeploc_valid.tsv", "valid"),
        "location_test": deeploc(loc / "deeploc_test.tsv", "test"),
        "go_mf_val": go_function(go / "val_exp_prompt_mf_new.csv", "val"),
        "go_mf_test": go_function(go / "test_exp_prompt_mf_new.csv", "test"),
        "pubmedqa_train": pubmed_train,
        "pubmedqa_test": pubmed_test,
        "medmcqa_dev": medmcqa(s / "medmcqa" / "dev.json"),
        "medqa_test": medqa(s / "medqa-usmle" / "US_4_options_phrases_no_exclude_test.jsonl"),
    }
    for name, records in files.items():
        count = write_jsonl(out / f"{name}.jsonl", records)
        print(f"{out / name}.jsonl: {count} records")
    return 0


if __name__ == "__main__":
    sys.exit(main())
