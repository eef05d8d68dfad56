"""scripts/reading_yesno.py: yes/no reading questions from BC5CDR relations and PubMedQA conclusions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "reading_yesno.py"

# Two abstracts: in 100 clonidine induces hypotension and treats hypertension (which nothing induces here), and
# naloxone sits beside the induced disease without an annotated relation; 200 is a PubMedQA test PMID.
PUBTATOR = """100|t|Clonidine lowers blood pressure.
100|a|Clonidine treats hypertension but induced hypotension in two patients given naloxone.
100\t0\t9\tClonidine\tChemical\tD003000
100\t17\t31\tclonidine\tChemical\tD003000
100\t10\t16\thypertension\tDisease\tD006973
100\t20\t30\thypotension\tDisease\tD007022
100\t40\t48\tnaloxone\tChemical\tD009270
100\tCID\tD003000\tD007022

200|t|Aspirin and bleeding.
200|a|Aspirin induced bleeding.
200\t0\t7\tAspirin\tChemical\tD001241
200\t16\t24\tbleeding\tDisease\tD006470
200\tCID\tD001241\tD006470

"""


def _pubmedqa(path: Path, pmid: str, question: str, long_answer: str | None) -> None:
    record = {"id": f"pubmedqa:{pmid}", "question": question, "options": {"A": "yes", "B": "no", "C": "maybe"},
              "answer": "B", "context": "RESULTS: no difference.",
              "metadata": {"pmid": pmid, "long_answer": long_answer}}
    with path.open("a") as handle:
        handle.write(json.dumps(record) + "\n")


def _build(tmp_path: Path, *extra: str) -> list[dict]:
    cdr = tmp_path / "cdr"
    cdr.mkdir()
    (cdr / "CDR_TrainingSet.PubTator.txt").write_text(PUBTATOR)
    (cdr / "CDR_DevelopmentSet.PubTator.txt").write_text("")
    (cdr / "CDR_TestSet.PubTator.txt").write_text("999|t|never read\n999|a|never read\n")
    train, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    _pubmedqa(train, "300", "Does X help?", "X did not help.")
    _pubmedqa(train, "301", "Does Y help?", None)
    _pubmedqa(test, "200", "Is aspirin safe?", "No.")
    out = tmp_path / "out.jsonl"
    subprocess.run([sys.executable, str(SCRIPT), str(out), "--seed", "0", "--bc5cdr-dir", str(cdr),
                    "--pubmedqa-train", str(train), "--exclude", str(test), *extra], check=True,
                   capture_output=True, text=True)
    return [json.loads(line) for line in out.open()]


def test_relations_become_yes_and_only_uninduced_diseases_become_no(tmp_path):
    rows = _build(tmp_path, "--per-abstract", "5")
    cdr = {tuple(r["id"].split(":")[2:]): r for r in rows if r["id"].startswith("bc5cdr:")}
    assert cdr[("D003000", "D007022")]["answer"] == "A"  # the annotated relation
    assert {k for k, r in cdr.items() if r["answer"] == "B"} == {("D003000", "D006973"), ("D009270", "D006973")}
    assert ("D009270", "D007022") not in cdr  # beside an induced disease, unannotated: not trusted as a "no"
    question = cdr[("D003000", "D007022")]["question"]
    assert "clonidine" in question and "hypotension" in question  # mid-sentence case
    assert all(r["context"].startswith("Clonidine lowers blood pressure.\n") for r in cdr.values())


def test_test_pmids_are_dropped_and_conclusions_are_appended(tmp_path):
    rows = _build(tmp_path)
    assert not [r for r in rows if r["metadata"]["pmid"] == "200"]  # a PubMedQA test abstract, also in BC5CDR
    conclusions = [r for r in rows if r["id"].endswith(":conclusion")]
    assert [r["id"] for r in conclusions] == ["pubmedqa:300:conclusion"]  # 301 has no long answer
    assert conclusions[0]["context"] == "RESULTS: no difference.\nCONCLUSIONS: X did not help."


def test_refuses_to_build_without_test_pmids(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    result = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "out.jsonl"), "--seed", "0",
                             "--bc5cdr-dir", str(tmp_path), "--pubmedqa-train", str(empty), "--exclude", str(empty)],
                            capture_output=True, text=True)
    assert result.returncode != 0 and "no PMIDs" in result.stderr
