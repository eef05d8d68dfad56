"""Yes/no reading questions about PubMed abstracts, in PubMedQA's record format, for a finetune pass that tries to
teach biomedgpt-small to answer from what an abstract says rather than from the class prior (docs/default-model.md,
session 11).

Two sources, neither an evaluation set of this project:
- **BC5CDR** training and development abstracts (the test set is never read): "Does <chemical> induce <disease>?"
  answered "yes" for the annotated chemical-induced-disease relations and "no" for a chemical and a disease that the
  same abstract mentions without that relation; at most `--per-abstract` of each per abstract, so the labels are
  balanced. The context is the title and the abstract.
- **PubMedQA's labelled training half** (`data/build/pubmedqa_train.jsonl`, already free of test questions) with its
  conclusion (the record's long answer) appended to the context, so the model sees the sentence the label follows from.

Abstracts whose PMID is in a PubMedQA record of `--exclude` (the test split) are dropped.

    python scripts/reading_yesno.py OUT --seed 11 --bc5cdr-dir ../shared/data/biomed-text-corpus/raw/biogpt/BC5CDR \
        --pubmedqa-train data/build/pubmedqa_train.jsonl --exclude data/build/pubmedqa_test.jsonl
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import sys
from collections import Counter, defaultdict
from pathlib import Path

from biomedgpt.data.records import MCQRecord, read_mcq, write_jsonl

OPTIONS = {"A": "yes", "B": "no", "C": "maybe"}
SPLITS = ("CDR_TrainingSet.PubTator.txt", "CDR_DevelopmentSet.PubTator.txt")
TEMPLATES = ("Does {chemical} induce {disease}?", "Can {chemical} cause {disease}?",
             "Is {disease} induced by {chemical}?")


def read_pubtator(path: Path) -> list[dict]:
    """Documents of one PubTator file: pmid, title, abstract, a name per (type, MeSH id), CID pairs."""
    docs, doc = [], None
    for line in path.read_text().splitlines():
        if not line.strip():
            doc = None
            continue
        if "|t|" in line[:20]:
            pmid, title = line.split("|t|", 1)
            doc = {"pmid": pmid, "title": title, "abstract": "", "mentions": defaultdict(list), "relations": set()}
            docs.append(doc)
        elif "|a|" in line[:20]:
            doc["abstract"] = line.split("|a|", 1)[1]
        else:
            fields = line.split("\t")
            if len(fields) == 4 and fields[1] == "CID":
                doc["relations"].add((fields[2], fields[3]))
            elif len(fields) >= 6 and fields[5] != "-1":
                for mesh in fields[5].split("|"):
                    doc["mentions"][(fields[4], mesh)].append(fields[3])
    for doc in docs:  # a concept's name: its longest mention (the full name, not the abbreviation "CP")
        doc["names"] = {key: max(texts, key=len) for key, texts in doc["mentions"].items()}
    return docs


def _inline(name: str) -> str:
    """A mention as it reads mid-sentence: "Naloxone" -> "naloxone", acronyms ("ACE") and "5-FU" unchanged."""
    return name[0].lower() + name[1:] if name[:1].isupper() and name[1:2].islower() else name


def bc5cdr_records(directory: Path, per_abstract: int, excluded: set[str], rng: random.Random) -> list[MCQRecord]:
    records = []
    for split in SPLITS:
        for doc in read_pubtator(directory / split):
            if doc["pmid"] in excluded:
                continue
            chemicals = {mesh: n for (kind, mesh), n in doc["names"].items() if kind == "Chemical"}
            diseases = {mesh: n for (kind, mesh), n in doc["names"].items() if kind == "Disease"}
            pairs = [(c, d) for c in sorted(chemicals) for d in sorted(diseases)]
            induced = {d for _, d in doc["relations"]}
            positive = [p for p in pairs if p in doc["relations"]]
            # a "no" only for a disease that no chemical of the abstract induces (often one a chemical treats): a
            # pair merely left unannotated beside an induced disease is too often a missed "yes"
            negative = [p for p in pairs if p[1] not in induced]
            chosen = ([(p, "A") for p in rng.sample(positive, min(per_abstract, len(positive)))]
                      + [(p, "B") for p in rng.sample(negative, min(per_abstract, len(negative)))])
            for (chemical, disease), answer in chosen:
                question = rng.choice(TEMPLATES).format(chemical=_inline(chemicals[chemical]),
                                                        disease=_inline(diseases[disease]))
                records.append(MCQRecord(id=f"bc5cdr:{doc['pmid']}:{chemical}:{disease}", question=question,
                                         options=dict(OPTIONS), answer=answer,
                                         context=f"{doc['title']}\n{doc['abstract']}",
                                         metadata={"pmid": doc["pmid"], "source": "bc5cdr"}))
    return records


def with_conclusions(path: Path, excluded: set[str]) -> list[MCQRecord]:
    return [dataclasses.replace(record, id=f"{record.id}:conclusion",
                                context=f"{record.context}\nCONCLUSIONS: {record.metadata['long_answer']}")
            for record in read_mcq(path)
            if record.metadata.get("pmid") not in excluded and record.metadata.get("long_answer")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--bc5cdr-dir", type=Path, required=True)
    parser.add_argument("--pubmedqa-train", type=Path, required=True)
    parser.add_argument("--exclude", type=Path, required=True, help="PubMedQA test records (their PMIDs are dropped)")
    parser.add_argument("--per-abstract", type=int, default=1, help="yes and no questions per BC5CDR abstract")
    parser.add_argument("--bc5cdr-limit", type=int, help="keep this many BC5CDR questions (a seeded sample)")
    args = parser.parse_args()

    excluded = {record.metadata["pmid"] for record in read_mcq(args.exclude) if "pmid" in record.metadata}
    if not excluded:
        raise SystemExit(f"{args.exclude}: no PMIDs found; refusing to build without the test exclusion")
    rng = random.Random(args.seed)
    cdr = bc5cdr_records(args.bc5cdr_dir, args.per_abstract, excluded, rng)
    if args.bc5cdr_limit is not None and args.bc5cdr_limit < len(cdr):
        cdr = rng.sample(cdr, args.bc5cdr_limit)
    concl = with_conclusions(args.pubmedqa_train, excluded)
    rows = cdr + concl
    rng.shuffle(rows)
    write_jsonl(args.out, rows)
    counts = Counter(OPTIONS[record.answer] for record in cdr)
    print(f"{len(cdr)} BC5CDR questions ({dict(counts)}), {len(concl)} PubMedQA training questions with their "
          f"conclusions, {len(excluded)} test PMIDs excluded -> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
