"""A seeded finetuning mixture for biomedgpt-small's later passes (called by scripts/train_default_model.sh):
ChEBI-20-validation descriptions (the test set's style), DeepLoc location, GO function and other GO questions,
sampled from data/build/, optionally without the records an earlier pass trained on, and optional extra records
(whole files, repeated) in front.

    python scripts/finetune_mixture.py OUT --seed 0 --molecules 1200 --location 700 --function 250 --other 150
"""

from __future__ import annotations

import argparse
import json
import random
import sys

MOLECULES = "data/build/molecule_qa_train.jsonl"
PROTEINS = "data/build/protein_qa_train.jsonl"
FUNCTION_QUESTION = "What molecular functions does this protein have?"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("--seed", type=int, required=True)
    for name in ("molecules", "location", "function", "other"):
        parser.add_argument(f"--{name}", type=int, required=True, help=f"{name} records to sample")
    parser.add_argument("--exclude", help="a JSONL file whose records are not sampled (an earlier pass's mixture)")
    parser.add_argument("--extra", action="append", default=[], help="a JSONL file put in whole (repeatable)")
    parser.add_argument("--extra-copies", type=int, default=1, help="how many times the --extra records appear")
    args = parser.parse_args()

    rng = random.Random(args.seed)
    seen = set(open(args.exclude).readlines()) if args.exclude else set()
    molecules = [line for line in open(MOLECULES) if '"source": "chebi20-validation"' in line and line not in seen]
    proteins = [line for line in open(PROTEINS) if line not in seen]
    location = [line for line in proteins if '"source": "deeploc_valid"' in line]
    function = [line for line in proteins if json.loads(line)["question"] == FUNCTION_QUESTION]
    sampled = set(location) | set(function)
    other = [line for line in proteins if line not in sampled]
    extra = [line for path in args.extra for line in open(path)] * args.extra_copies
    rows = (extra + rng.sample(molecules, args.molecules) + rng.sample(location, args.location)
            + rng.sample(function, args.function) + rng.sample(other, args.other))
    rng.shuffle(rows)
    with open(args.out, "w") as handle:
        handle.writelines(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
