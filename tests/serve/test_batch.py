"""`biomedgpt batch`: CSV / JSONL in, one JSONL record per row out, bad rows as error records, resumable."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from serve_helpers import ASPIRIN, INSULIN_B

import biomedgpt.batch as batch
from biomedgpt.errors import UserError
from biomedgpt.inference import GenerationSettings, Message, generate_batch

SETTINGS = GenerationSettings(max_new_tokens=4)


def write_jsonl(path, lines):
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def read_output(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_jsonl_good_and_bad_rows(tiny_model, tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", [
        {"id": "a", "question": "What is it?", "molecules": [ASPIRIN]},
        {"id": "b", "question": "And this?", "proteins": INSULIN_B},
        "{not json",
        "",
        {"id": "d", "question": "Bad one", "smiles": "C1CC"},
        {"id": "e"},
        {"question": "no id", "system": "Be brief.", "protein": "MKV"},
        ["a list"],
    ])
    summary = batch.run_batch(tiny_model, source, tmp_path / "out.jsonl", SETTINGS, batch_size=8, progress=False)
    rows = read_output(tmp_path / "out.jsonl")
    assert [r["row"] for r in rows] == [1, 2, 3, 4, 5, 6, 7]  # the blank line is not a record
    assert [r["id"] for r in rows] == ["a", "b", "3", "d", "e", "6", "7"]
    errors = {r["id"]: r["error"] for r in rows if "error" in r}
    assert errors["3"].startswith("invalid JSON")
    assert "invalid SMILES 'C1CC'" in errors["d"]
    assert errors["e"] == "missing or empty 'question'"
    assert errors["7"] == "expected a JSON object, got list"
    assert (summary.rows, summary.answered, summary.errors, summary.resumed) == (7, 3, 4, 0)
    expected = generate_batch(tiny_model, [[Message("user", "What is it?", [ASPIRIN])],
                                           [Message("user", "And this?", [], [INSULIN_B])],
                                           [Message("system", "Be brief."), Message("user", "no id", [], ["MKV"])]],
                              SETTINGS, batch_size=3)
    assert [r["answer"] for r in rows if "answer" in r] == expected
    assert not (tmp_path / "out.jsonl.partial").exists()


def test_csv_with_entity_lists(tiny_model, tmp_path):
    source = tmp_path / "in.csv"
    source.write_text(f"id,question,molecules,proteins\nq1,Compare them,CCO;{ASPIRIN},\nq2,Which?,,MKV ; MALW\n")
    batch.run_batch(tiny_model, source, tmp_path / "out.jsonl", SETTINGS, progress=False)
    rows = read_output(tmp_path / "out.jsonl")
    assert [r["id"] for r in rows] == ["q1", "q2"] and all("answer" in r for r in rows)
    parsed = batch.read_rows(source)
    assert parsed[0].messages[0].smiles == ["CCO", ASPIRIN] and parsed[1].messages[0].proteins == ["MKV", "MALW"]


@pytest.mark.parametrize(("name", "text", "message"), [
    ("in.csv", "id,text\n1,hi\n", "needs a 'question' column"),
    ("in.txt", "hi\n", "unsupported input type .txt"),
])
def test_malformed_input_files(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(UserError, match=message):
        batch.read_rows(tmp_path / name)


def test_interrupted_run_resumes_and_output_stays_atomic(tiny_model, tmp_path, monkeypatch):
    source = write_jsonl(tmp_path / "in.jsonl", [{"id": str(i), "question": f"Question {i}?"} for i in range(5)])
    output = tmp_path / "out.jsonl"
    output.write_text("previous results\n")
    calls = []
    real = batch.generate_batch

    def interrupted(model, conversations, settings, batch_size):
        calls.append(len(conversations))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(model, conversations, settings, batch_size=batch_size)

    monkeypatch.setattr(batch, "generate_batch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        batch.run_batch(tiny_model, source, output, SETTINGS, batch_size=2, progress=False)
    assert output.read_text() == "previous results\n"  # untouched until the run completes
    assert len((tmp_path / "out.jsonl.partial").read_text().splitlines()) == 2

    calls.clear()
    monkeypatch.setattr(batch, "generate_batch", lambda *a, **k: calls.append(len(a[1])) or real(*a, **k))
    summary = batch.run_batch(tiny_model, source, output, SETTINGS, batch_size=2, progress=False)
    assert calls == [2, 1] and summary.resumed == 2 and summary.answered == 5
    assert [r["id"] for r in read_output(output)] == ["0", "1", "2", "3", "4"]
    assert not (tmp_path / "out.jsonl.partial").exists()


def test_partial_file_of_another_input_is_refused(tiny_model, tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", [{"question": "one"}, {"question": "two"}])
    (tmp_path / "out.jsonl.partial").write_text(json.dumps({"row": 1, "id": "1", "key": "0" * 16,
                                                            "answer": "x"}) + "\n")
    with pytest.raises(UserError, match="belongs to a different input"):
        batch.run_batch(tiny_model, source, tmp_path / "out.jsonl", SETTINGS, progress=False)
    summary = batch.run_batch(tiny_model, source, tmp_path / "out.jsonl", SETTINGS, restart=True, progress=False)
    assert summary.resumed == 0 and summary.answered == 2


def test_cli_end_to_end(tiny_model_dir, tmp_path):
    source = tmp_path / "questions.csv"
    source.write_text(f"id,question,molecules\nq1,What is it?,{ASPIRIN}\nq2,Broken,C1CC\nq3,Plain question,\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    command = [sys.executable, "-m", "biomedgpt", "batch", "--model", str(tiny_model_dir), "--input", str(source),
               "--output", str(tmp_path / "answers.jsonl"), "--max-new-tokens", "4"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    assert "3/3" in result.stderr  # the progress bar
    assert "3 rows: 2 answered, 1 errors" in result.stderr and "Traceback" not in result.stderr
    assert [("error" in r) for r in read_output(tmp_path / "answers.jsonl")] == [False, True, False]
    elsewhere = ["--input", str(tmp_path / "nope.jsonl"), "--output", str(tmp_path / "x.jsonl")]
    missing = subprocess.run(command[:6] + elsewhere, capture_output=True, text=True, timeout=300, env=env)
    assert missing.returncode == 2 and "input file not found" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
