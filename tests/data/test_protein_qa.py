"""UniProtQA-style builder on real Swiss-Prot records (current and pre-2008 formats) and on malformed input."""

from __future__ import annotations

import gzip
import json

import pytest

from biomedgpt.data.protein_qa import build_protein_qa, clean_text, iter_flat_entries, official_name
from biomedgpt.data.records import read_qa

P62258_SEQUENCE = (
    "MDDREDLVYQAKLAEQAERYDEMVESMKKVAGMDVELTVEERNLLSVAYKNVIGARRASWRIISSIEQKEENKGGEDKLKMIREYRQMVETELKLICCDI"
    "LDVLDKHLIPAANTGESKVFYYKMKGDYHRYLAEFATGNDRKEAAENSLVAYKAASDIAMTELPPTHPIRLGLALNFSVFYYEILNSPDRACRLAKAAFD"
    "DAIAELDTLSEESYKDSTLIMQLLRDNLTLWTSDMQGDGEEQNKEALQDVEDENQ"
)


@pytest.fixture(scope="module")
def samples(shared_data):
    return shared_data / "swissprot-flatfile-samples"


def _build(tmp_path, inputs, **kwargs):
    out = tmp_path / "qa.jsonl"
    summary = build_protein_qa(inputs, out, rejects_path=tmp_path / "rejects.jsonl", **kwargs)
    records = {r.id: r for r in read_qa(out)}
    rejects = [json.loads(line) for line in (tmp_path / "rejects.jsonl").read_text().splitlines()]
    return summary, records, rejects


def test_current_format_entry_gives_four_hand_checked_answers(samples, tmp_path):
    summary, records, _ = _build(tmp_path, [samples / "P62258.txt"])
    assert (summary.read, summary.written, summary.records) == (1, 1, 4)
    assert records["P62258:name"].answer == "14-3-3 protein epsilon"
    assert records["P62258:family"].answer == "Belongs to the 14-3-3 family."
    assert records["P62258:location"].answer == "Nucleus. Cytoplasm. Melanosome."
    assert records["P62258:function"].answer == (
        "Adapter protein implicated in the regulation of a large spectrum of both general and specialized "
        "signaling pathways. Binds to a large number of partners, usually by recognition of a phosphoserine or "
        "phosphothreonine motif. Binding generally results in the modulation of the activity of the binding "
        "partner. Positively regulates phosphorylated protein HSF1 nuclear export to the cytoplasm.")
    record = records["P62258:function"]
    assert record.proteins == [P62258_SEQUENCE] and len(P62258_SEQUENCE) == 255
    assert record.question == "What is the function of this protein?" and record.source == "uniprot"
    assert record.metadata == {"accession": "P62258", "task": "function", "organism": "Homo sapiens (Human)"}


def test_old_format_entry_and_wrapped_hyphen(samples, tmp_path):
    _, records, _ = _build(tmp_path, [samples / "sp016", samples / "P0CK95.txt", samples / "sp013"])
    # sp016 (2007 format): one-line DE with parenthesised alternative names, no evidence tags.
    assert records["P01100:name"].answer == "Proto-oncogene protein c-fos"
    assert records["P01100:family"].answer == "Belongs to the bZIP family. Fos subfamily."
    assert records["P01100:location"].answer == "Nucleus."
    assert records["P01100:function"].answer.startswith(
        "Nuclear phosphoprotein which forms a tight but non-covalently linked complex with the JUN/AP-1")
    # "{ECO:0000255|PROSITE-\nProRule:PRU00303}" is wrapped inside a tag; "SIMILARITY: To V.cholerae" is no family.
    assert records["P0CK95:location"].answer == "Cell inner membrane; Lipid-anchor."
    assert "P0CK95:family" not in records
    # sp013 (TrEMBL 2001): upper-case DE with an abbreviation in brackets; "SUBCELLULAR LOCATION: MITOCHONDRIAL."
    assert records["P82909:name"].answer == "MITOCHONDRIAL 28S RIBOSOMAL PROTEIN S36"
    assert records["P82909:location"].answer == "MITOCHONDRIAL."


def test_every_sample_file_parses_and_counts_balance(samples, tmp_path):
    files = sorted(p for p in samples.iterdir() if p.name != "SOURCE.md")
    summary, records, rejects = _build(tmp_path, files)
    assert summary.balanced and summary.read == 28 and summary.written == 26
    assert summary.skipped == {"no annotation to ask about": 2}  # an unreviewed SubName-only entry, an IPI entry
    assert {r["text"] for r in rejects} == {"H2CNN8", "IPI00383150"}
    assert len(records) == summary.records
    assert records["P00750:name"].answer == "Tissue-type plasminogen activator"  # not a "Contains:" chain name
    for record in records.values():
        assert "ECO:" not in record.answer and "PubMed:" not in record.answer and ".." not in record.answer


def test_gzipped_flat_file_streams(samples, tmp_path):
    packed = tmp_path / "multi.dat.gz"
    packed.write_bytes(gzip.compress((samples / "multi_ex.txt").read_bytes()))
    summary, records, _ = _build(tmp_path, [packed], tasks=("name",))
    assert (summary.read, summary.written, summary.records) == (8, 8, 8)
    assert records["P56540:name"].answer == "Protein CbbQ"


def test_malformed_entries_are_counted_and_the_rest_is_kept(samples, tmp_path):
    good = (samples / "P62258.txt").read_bytes()
    truncated = (samples / "sp016").read_bytes()[:-200]  # ends inside the sequence, with no '//'
    bad_residue = good.replace(b"MDDREDLVYQ", b"MDDREDLVJQ", 1).replace(b"AC   P62258;", b"AC   X00001;")
    non_utf8 = good.replace(b"14-3-3 protein epsilon", b"14-3-3 prot\xe9in", 1).replace(b"P62258;", b"X00002;", 1)
    long_line = good.replace(b"AC   P62258;", b"AC   X00003;\nCC   " + b"z" * (10 * 1024 * 1024), 1)
    short_sequence = good.replace(b"     EQNKEALQDV EDENQ\n", b"", 1).replace(b"P62258;", b"X00004;", 1)
    flat = tmp_path / "mixed.dat"
    flat.write_bytes(bad_residue + non_utf8 + long_line + short_sequence + good + truncated)
    summary, records, rejects = _build(tmp_path, [flat])
    assert summary.read == 6 and summary.written == 1 and summary.balanced
    assert summary.skipped == {"invalid sequence": 1, "malformed entry": 4}
    assert set(records) == {f"P62258:{task}" for task in ("function", "name", "family", "location")}
    reasons = [r["reason"] for r in rejects]
    assert "character 'J' at position 9" in reasons[0]
    assert "not valid UTF-8 (byte 0xe9" in reasons[1]
    assert "longer than 1,048,576 bytes" in reasons[2]
    assert "sequence length 240 does not match the SQ line (255 AA)" in reasons[3]
    assert "truncated entry" in reasons[4]


def test_empty_files(tmp_path):
    empty = tmp_path / "empty.dat"
    empty.write_bytes(b"")
    summary, records, _ = _build(tmp_path, [empty])
    assert (summary.read, summary.written, records) == (0, 0, {})
    only_id = tmp_path / "only_id.dat"
    only_id.write_text("ID   X\n")  # a flat file holding nothing but the start of an entry
    summary, records, rejects = _build(tmp_path, [only_id])
    assert (summary.read, summary.skipped_total, records) == (1, 1, {})
    assert "truncated entry" in rejects[0]["reason"]


def test_clean_text_and_names():
    assert clean_text("Binds X (PubMed:1, PubMed:2). {ECO:0000269|PubMed:1}.") == "Binds X."
    assert clean_text("Cytoplasm (Potential).") == "Cytoplasm."
    assert official_name(["RecName: Full=Claudin-1;", "AltName: Full=Other;"]) == "Claudin-1"
    assert official_name(["SubName: Full=Predicted protein {ECO:0000313|EMBL:X};"]) is None
    assert official_name(["Tyrosine kinase (EC 2.7.10.1) [Includes: Foo (Bar)] (Fragment)."]) == "Tyrosine kinase"


def test_tables_fapm_go_and_deeploc(shared_data, tmp_path):
    fapm = tmp_path / "val_exp_prompt_cc_new.csv"
    fapm.write_text("".join((shared_data / "swissprot-go-fapm" / "val_exp_prompt_cc_new.csv").open().readlines()[:4]))
    deeploc_lines = (shared_data / "protein-instructprotein-benchmarks" / "subcellular_localization"
                     / "deeploc_test.tsv").open().readlines()[:3]
    deeploc = tmp_path / "deeploc_test.tsv"
    deeploc.write_text("".join(deeploc_lines) + "99\tMKV\t3\tnucleus\n" + "100\tMK1V\t6\tnucleus\n")
    summary, records, rejects = _build(tmp_path, [fapm, deeploc])
    assert summary.read == 7 and summary.written == 5
    assert summary.skipped == {"malformed row": 1, "invalid sequence": 1}
    assert "does not match label_id 3" in rejects[0]["reason"]
    record = records["fapm-val:P16375:go_cc"]
    assert record.question == "In which cellular components is this protein located?"
    assert record.metadata["go_ids"] and record.metadata["task"] == "go_cc"
    location = records["deeploc_test:0"]
    assert location.answer == "plasma membrane" and location.metadata == {"task": "location_class", "label_id": 0}
    assert "Answer with one of: plasma membrane, cytoplasm" in location.question


def test_tiny_blocks_give_the_same_entries_and_oversized_entries_are_skipped(samples, tmp_path, monkeypatch):
    from biomedgpt.data import protein_qa

    multi = (samples / "multi_ex.txt").read_bytes()
    flat = tmp_path / "multi.dat"
    flat.write_bytes(b"\n\n" + multi + (samples / "P04439.txt").read_bytes() + multi)  # P04439 is 154 kB
    normal = [(e.first_line, e.accession, e.sequence) for e in iter_flat_entries(flat)]
    assert len(normal) == 17 and normal[0][0] == 3  # line numbers count the leading blank lines
    monkeypatch.setattr(protein_qa, "_BLOCK_BYTES", 4099)  # cut entries, lines and "//" at odd places
    assert [(e.first_line, e.accession, e.sequence) for e in iter_flat_entries(flat)] == normal
    monkeypatch.setattr(protein_qa, "MAX_ENTRY_BYTES", 100_000)
    entries = list(iter_flat_entries(flat))
    assert [e.accession for e in entries if not e.problem] == [a for _, a, _ in normal if a != "P04439"]
    (big,) = [e for e in entries if e.problem]
    assert big.problem == "entry is larger than 100,000 bytes" and big.raw.startswith("ID   HLAA_HUMAN")
    assert big.first_line == normal[8][0]
    monkeypatch.setattr(protein_qa, "_BLOCK_BYTES", 1 << 22)  # the whole entry in one block: same verdict
    monkeypatch.setattr(protein_qa, "MAX_LINE_BYTES", 1000)
    assert [e.problem for e in iter_flat_entries(flat)].count("entry is larger than 100,000 bytes") == 1


def test_windows_line_endings_give_the_same_records(samples, tmp_path):
    crlf = tmp_path / "P62258_crlf.txt"
    crlf.write_bytes((samples / "P62258.txt").read_bytes().replace(b"\n", b"\r\n"))
    _, expected, _ = _build(tmp_path, [samples / "P62258.txt"])
    _, records, _ = _build(tmp_path, [crlf])
    assert {k: (r.answer, r.proteins, r.metadata) for k, r in records.items()} == {
        k: (r.answer, r.proteins, r.metadata) for k, r in expected.items()}
