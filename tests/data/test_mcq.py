"""PubMedQA / MedMCQA / MedQA loaders on the real files, and their handling of malformed records."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from biomedgpt.data.mcq import build_mcq
from biomedgpt.data.records import read_mcq
from biomedgpt.errors import UserError


def test_pubmedqa_official_test_and_train_pool(shared_data, tmp_path):
    test_out, train_out = tmp_path / "test.jsonl", tmp_path / "train.jsonl"
    test = build_mcq("pubmedqa", [shared_data / "pubmedqa" / "test_set.json"], test_out)
    train = build_mcq("pubmedqa", [shared_data / "pubmedqa" / "ori_pqal.json"], train_out, exclude=[test_out])
    assert (test.read, test.written) == (500, 500)
    assert (train.read, train.written, train.skipped) == (1000, 500, {"question in an excluded set": 500})
    train_records = {r.id: r for r in read_mcq(train_out)}
    test_records = {r.id: r for r in read_mcq(test_out)}
    assert not set(train_records) & set(test_records)
    first = test_records["pubmedqa:21645374"]  # the SOURCE.md example: "Do mitochondria play a role …" → yes
    assert first.options == {"A": "yes", "B": "no", "C": "maybe"} and first.answer == "A"
    assert first.context.startswith("BACKGROUND: Programmed cell death (PCD) is the regulated death")
    assert test_records["pubmedqa:16418930"].answer == "B"  # "Landolt C and snellen e acuity …" → no
    pool = train_records["pubmedqa:10808977"]
    assert pool.question == "Can tailored interventions increase mammography use among HMO women?"
    assert pool.answer == "A" and pool.context.startswith("BACKGROUND: Telephone counseling and tailored print")
    truth = json.loads((shared_data / "pubmedqa" / "test_ground_truth.json").read_text())
    letters = {"yes": "A", "no": "B", "maybe": "C"}
    assert {r.id.split(":")[1]: r.answer for r in read_mcq(test_out)} == {k: letters[v] for k, v in truth.items()}


def test_medmcqa_answer_index_is_one_based(shared_data, tmp_path):
    out = tmp_path / "medmcqa.jsonl"
    summary = build_mcq("medmcqa", [shared_data / "medmcqa" / "dev.json"], out)
    assert (summary.read, summary.written) == (4183, 4183)
    records = list(read_mcq(out))
    assert Counter(r.answer for r in records) == {"A": 1348, "B": 1085, "C": 925, "D": 825}  # SOURCE.md counts
    first = records[0]
    assert first.question == "Which of the following is not true for myelinated nerve fibers:"
    assert first.answer == "A" and first.options["A"].startswith("Impulse through myelinated fibers is slower")


def test_medqa_answers(shared_data, tmp_path):
    out = tmp_path / "medqa.jsonl"
    summary = build_mcq("medqa", [shared_data / "medqa-usmle" / "US_4_options_phrases_no_exclude_test.jsonl"], out)
    assert (summary.read, summary.written) == (1273, 1273)
    first = next(iter(read_mcq(out)))
    assert first.answer == "B"
    assert first.options["B"] == "Tell the attending that he cannot fail to disclose this mistake"


def test_malformed_lines_are_counted(tmp_path):
    good = {"question": "Q?", "opa": "a", "opb": "b", "opc": "c", "opd": "d", "cop": 4, "id": "x1"}
    lines = [json.dumps(good).encode(), json.dumps({**good, "cop": 0, "id": "x2"}).encode(),  # 0 is not 1-based
             b'{"question": "truncated', json.dumps({**good, "opb": "", "id": "x3"}).encode(),
             b"\xff\xfe", b"", json.dumps({**good, "id": "x1"}).encode(), b"[1, 2]",
             b'{"question": "' + b"x" * (10 * 1024 * 1024) + b'"}']  # a 10 MB line
    path = tmp_path / "dev.json"
    path.write_bytes(b"\n".join(lines) + b"\n")
    out, rejects = tmp_path / "out.jsonl", tmp_path / "rejects.jsonl"
    summary = build_mcq("medmcqa", [path], out, rejects_path=rejects)
    assert summary.read == 8 and summary.written == 1 and summary.balanced
    assert summary.skipped == {"malformed record": 3, "invalid JSON": 1, "unreadable line": 2, "duplicate id": 1}
    (record,) = read_mcq(out)
    assert record.answer == "D"
    reasons = [json.loads(line)["reason"] for line in rejects.read_text().splitlines()]
    assert "cop 0 is not an answer index 1..4" in reasons[0]
    zero_based = build_mcq("medmcqa", [path], tmp_path / "zero.jsonl", index_base=0)
    assert zero_based.written == 1  # x2 (cop 0 = A) is valid 0-based; x1's cop 4 is then out of range
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    assert build_mcq("medqa", [empty], tmp_path / "none.jsonl").as_dict()["read"] == 0


def test_pubmedqa_broken_file_is_one_clear_error(tmp_path):
    path = tmp_path / "pqal.json"
    path.write_text('{"1": {"QUESTION": "a"')
    with pytest.raises(UserError, match="pqal.json:1: invalid JSON"):
        build_mcq("pubmedqa", [path], tmp_path / "out.jsonl")
    path.write_text('{"1": {"QUESTION": "a?", "CONTEXTS": ["c"], "final_decision": "perhaps"}}')
    summary = build_mcq("pubmedqa", [path], tmp_path / "out.jsonl")
    assert summary.skipped == {"malformed record": 1}
