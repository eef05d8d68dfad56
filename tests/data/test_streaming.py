"""Bounded line reading, honest counts and the rejects file shared by every builder."""

from __future__ import annotations

import gzip
import json

from biomedgpt.data.streaming import MAX_LINE_BYTES, BuildSummary, Rejects, read_lines


def test_read_lines_flags_long_and_non_utf8_lines_and_keeps_going(tmp_path):
    path = tmp_path / "mixed.txt"
    path.write_bytes(b"first\n" + b"x" * (10 * 1024 * 1024) + b"\n" + b"caf\xe9\n" + b"last")
    lines = list(read_lines(path))
    assert [line.number for line in lines] == [1, 2, 3, 4]
    assert lines[0].text == "first" and lines[0].error is None
    assert "line too long" in lines[1].error and f"{MAX_LINE_BYTES:,}" in lines[1].error
    assert len(lines[1].text) < 10_000  # the 10 MB line is never held in memory whole
    assert lines[2].error == "not valid UTF-8 (byte 0xe9 at column 4)"
    assert lines[3].text == "last" and lines[3].error is None


def test_read_lines_reads_gzip_by_content_not_name(tmp_path):
    path = tmp_path / "table.txt"  # no .gz suffix on purpose
    path.write_bytes(gzip.compress(b"a\tb\nc\td\n"))
    assert [line.text for line in read_lines(path)] == ["a\tb", "c\td"]


def test_empty_file_gives_no_lines(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_bytes(b"")
    assert list(read_lines(path)) == []


def test_rejects_counts_and_writes_reasons(tmp_path):
    summary = BuildSummary(read=3, written=1, records=1)
    out = tmp_path / "rejects.jsonl"
    with Rejects(summary, out) as rejects:
        rejects.reject("invalid SMILES", ("in.tsv", 2), "1\tC1CC", detail="unclosed ring")
        rejects.reject("invalid SMILES", ("in.tsv", 3), "y" * 5000)
    assert summary.balanced and summary.skipped == {"invalid SMILES": 2}
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0] == {"file": "in.tsv", "line": 2, "reason": "invalid SMILES: unclosed ring", "text": "1\tC1CC"}
    assert len(rows[1]["text"]) == 2000 and rows[1]["text_truncated_from"] == 5000
    assert "skipped 2: invalid SMILES" in summary.format()


def test_lenient_record_reader_skips_and_reports_bad_lines(tmp_path):
    from biomedgpt.data.records import read_lenient

    path = tmp_path / "qa.jsonl"
    path.write_bytes(b'{"id": "1", "question": "q", "answer": "a"}\n\n{"id": 2\n'
                     b'{"id": "3", "answer": "a"}\n\xff\n{"id": "4", "question": "q2", "answer": "b"}\n')
    errors = []
    records = list(read_lenient(path, "qa", errors))
    assert [r.id for r in records] == ["1", "4"]
    assert [str(e).split(": ", 1)[0].rsplit(":", 1)[1] for e in errors] == ["3", "4", "5"]
    assert "missing field 'question'" in str(errors[1]) and "not valid UTF-8" in str(errors[2])
