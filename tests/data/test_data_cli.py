"""`biomedgpt data …` end to end through the real command line, and the scaffold / identity splits."""

from __future__ import annotations

import json
import random

from biomedgpt.cli import main
from biomedgpt.data.records import QARecord, read_qa, write_jsonl
from biomedgpt.data.splits import murcko_scaffold, split_file

TABLE = ("CID\tSMILES\tdescription\n"
         "1\tCC(=O)Oc1ccccc1C(=O)O\tThe molecule is aspirin.\n"
         "2\tc1ccccc1O\tThe molecule is phenol.\n"
         "3\tCCO\tThe molecule is ethanol.\n"
         "4\tC1CC\tBroken.\n")
TEST = "CID\tSMILES\tdescription\n9\tOc1ccccc1\tPhenol again.\n"


def test_molecule_qa_check_and_filter_through_the_cli(tmp_path, capsys):
    (tmp_path / "train.tsv").write_text(TABLE)
    (tmp_path / "test.tsv").write_text(TEST)
    train, summary = tmp_path / "train.jsonl", tmp_path / "summary.json"
    code = main(["data", "molecule-qa", str(tmp_path / "train.tsv"), "-o", str(train), "--source", "mine",
                 "--rejects", str(tmp_path / "rejects.jsonl"), "--summary-json", str(summary)])
    assert code == 0
    assert "read 4 rows: written 3 (3 records), skipped 1" in capsys.readouterr().out
    assert json.loads(summary.read_text())["skipped"] == {"invalid SMILES": 1}
    test = tmp_path / "test.jsonl"
    assert main(["data", "molecule-qa", str(tmp_path / "test.tsv"), "-o", str(test)]) == 0
    capsys.readouterr()
    filtered, report = tmp_path / "filtered.jsonl", tmp_path / "report.json"
    code = main(["data", "check", str(train), str(test), "--filtered", str(filtered), "--json", str(report),
                 "--fail-on-leak"])
    out = capsys.readouterr().out
    assert code == 1 and "1 TRAIN items have an exact duplicate in TEST" in out
    assert "mine:2 = test:9 (InChIKey ISWSIDIOOBJBQZ-UHFFFAOYSA-N)" in out
    assert [r.id for r in read_qa(filtered)] == ["mine:1", "mine:3"]
    assert json.loads(report.read_text())["train_items_with_exact_duplicate"] == 1
    # the raw tables can be checked directly too, and a clean pair passes --fail-on-leak
    assert main(["data", "check", str(filtered), "--against", str(tmp_path / "test.tsv"), "--fail-on-leak"]) == 0


def test_user_mistakes_exit_2_with_one_line(tmp_path, capsys):
    assert main(["data", "molecule-qa", str(tmp_path / "missing.tsv"), "-o", str(tmp_path / "o.jsonl")]) == 2
    assert "no such file" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "1", "question": "q", "answer": "a"}\n{"id": 2\n')
    assert main(["data", "check", str(bad), str(bad)]) == 2
    assert "bad.jsonl:2: invalid JSON" in capsys.readouterr().err
    assert main(["data", "protein-qa", str(bad), "-o", str(tmp_path / "o.jsonl")]) == 2


def test_protein_qa_and_mcq_through_the_cli(shared_data, tmp_path, capsys):
    sample = shared_data / "swissprot-flatfile-samples" / "multi_ex.txt"
    out = tmp_path / "prot.jsonl"
    assert main(["data", "protein-qa", str(sample), "-o", str(out), "--tasks", "name,family"]) == 0
    assert "read 8 entries/rows: written 8 (14 records)" in capsys.readouterr().out
    assert {r.metadata["task"] for r in read_qa(out)} == {"name", "family"}
    medqa = tmp_path / "medqa.jsonl"
    medqa.write_text(json.dumps({"question": "Q?", "options": {"A": "x", "B": "y"}, "answer": "y",
                                 "answer_idx": "B"}) + "\n")
    assert main(["data", "mcq", "medqa", str(medqa), "-o", str(tmp_path / "mcq.jsonl")]) == 0
    assert "read 1 questions: written 1" in capsys.readouterr().out


def test_scaffold_split_keeps_each_scaffold_in_one_split(tmp_path):
    smiles = ["c1ccccc1C", "c1ccccc1CC", "c1ccccc1O", "c1ccncc1C", "c1ccncc1N", "C1CCCCC1C", "C1CCCCC1O",
              "c1ccc2ccccc2c1", "c1ccc2ccccc2c1C", "CCO", "CCCO", "C1CC1C", "C1CCC1C", "c1ccoc1", "c1ccsc1"]
    records = [QARecord(id=str(i), question="q", answer="a", molecules=[s]) for i, s in enumerate(smiles)]
    write_jsonl(tmp_path / "all.jsonl", records)
    counts = split_file(tmp_path / "all.jsonl", tmp_path / "split", by="scaffold", fractions=(0.6, 0.2, 0.2))
    assert sum(counts.values()) == len(smiles) and all(counts.values())
    scaffolds = {name: {murcko_scaffold(r.molecules[0]) for r in read_qa(tmp_path / "split" / f"{name}.jsonl")}
                 for name in counts}
    assert not scaffolds["train"] & scaffolds["valid"] and not scaffolds["train"] & scaffolds["test"]
    assert not scaffolds["valid"] & scaffolds["test"]


def test_identity_split_keeps_families_together(tmp_path):
    rng = random.Random(0)
    records = []
    for family in range(10):
        parent = "".join(rng.choice("ACDEFGHIKLMNPQRSTVWY") for _ in range(200))
        for member in range(3):
            letters = list(parent)
            for position in rng.sample(range(200), 20):
                letters[position] = rng.choice("ACDEFGHIKLMNPQRSTVWY")
            records.append(QARecord(id=f"f{family}m{member}", question="q", answer="a", proteins=["".join(letters)]))
    write_jsonl(tmp_path / "all.jsonl", records)
    counts = split_file(tmp_path / "all.jsonl", tmp_path / "split", by="identity", min_identity=0.5)
    assert counts == {"train": 24, "valid": 3, "test": 3}
    families = {name: {r.id.split("m")[0] for r in read_qa(tmp_path / "split" / f"{name}.jsonl")} for name in counts}
    assert sum(len(f) for f in families.values()) == 10  # every family lies wholly in one split
