"""PubChemQA-style builder: canonical SMILES, InChIKey de-duplication, exclusion, every bad row counted."""

from __future__ import annotations

import json

import pytest

from biomedgpt.data.molecule_qa import build_molecule_qa, molecule_identity
from biomedgpt.data.records import read_qa
from biomedgpt.errors import UserError

HEADER = b"CID\tSMILES\tdescription\n"


def _rejects(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_kind_of_bad_row_is_counted_never_fatal(tmp_path):
    table = tmp_path / "chebi.txt"
    table.write_bytes(
        HEADER
        + b"702\tCCO\tThe molecule is ethanol.\n"
        + b"703\tOCC\tThe molecule is ethanol again.\n"  # same InChIKey as 702
        + b"704\tC1CC\tA bad ring.\n"  # unclosed ring
        + b"705\tc1ccccc1\n"  # truncated row: no description
        + b"706\tCC(=O)O\t\n"  # empty description
        + b"707\tCC\tcaf\xe9 ethane\n"  # non-UTF-8
        + b"708\tCCC\t" + b"p" * (10 * 1024 * 1024) + b"\n"  # a 10 MB line
        + b"\n"
        + b"709\tCC(=O)Oc1ccccc1C(=O)O\tit is aspirin.\n"
    )
    out, rejects = tmp_path / "qa.jsonl", tmp_path / "rejects.jsonl"
    summary = build_molecule_qa([table], out, sources=["chebi20"], rejects_path=rejects)
    assert summary.read == 8 and summary.written == 2 and summary.balanced
    assert summary.skipped == {"duplicate molecule (same InChIKey)": 1, "invalid SMILES": 1, "malformed row": 1,
                               "missing description": 1, "unreadable line": 2}
    records = list(read_qa(out))
    assert [r.id for r in records] == ["chebi20:702", "chebi20:709"]
    assert records[1].molecules == ["CC(=O)Oc1ccccc1C(=O)O"]
    assert records[1].answer == "The molecule is aspirin."  # PCdes' "it" subject in ChEBI-20's style
    assert records[0].metadata["inchikey"] == "LFQSCWFLJHTTHZ-UHFFFAOYSA-N"
    rows = _rejects(rejects)
    assert [r["line"] for r in rows] == [3, 4, 5, 6, 7, 8]
    bad_smiles = next(r for r in rows if r["line"] == 4)
    assert bad_smiles["reason"].startswith("invalid SMILES: invalid SMILES 'C1CC'") and "ring" in bad_smiles["reason"]
    assert "line too long" in next(r for r in rows if r["line"] == 8)["reason"]
    assert "not valid UTF-8" in next(r for r in rows if r["line"] == 7)["reason"]


def test_empty_file_builds_an_empty_output(tmp_path):
    empty = tmp_path / "empty.tsv"
    empty.write_bytes(b"")
    summary = build_molecule_qa([empty], tmp_path / "out.jsonl")
    assert (summary.read, summary.written) == (0, 0)
    assert (tmp_path / "out.jsonl").read_text() == ""


def test_generic_csv_with_named_columns_and_exclusion(tmp_path):
    table = tmp_path / "mine.csv"
    table.write_text('name,smi,caption\naspirin,CC(=O)Oc1ccccc1C(=O)O,"An analgesic, and antipyretic."\n'
                     "benzene,c1ccccc1,An aromatic ring.\n")
    test = tmp_path / "test.tsv"
    test.write_text("CID\tSMILES\tdescription\n241\tC1=CC=CC=C1\tBenzene.\n")  # Kekulé form of the same molecule
    out = tmp_path / "out.jsonl"
    summary = build_molecule_qa([table], out, smiles_column="smi", text_column="caption", id_column="name",
                                exclude=[test], question="What is this?")
    assert summary.skipped == {"molecule in an excluded set (same InChIKey)": 1}
    (record,) = read_qa(out)
    assert (record.id, record.question, record.answer) == ("mine:aspirin", "What is this?",
                                                           "An analgesic, and antipyretic.")


def test_missing_columns_is_a_user_error(tmp_path):
    table = tmp_path / "bad.tsv"
    table.write_text("a\tb\n1\t2\n")
    with pytest.raises(UserError, match="cannot find the SMILES and description columns"):
        build_molecule_qa([table], tmp_path / "out.jsonl")


def test_doubled_backslashes_of_chebi20_and_stereo_kept_in_the_key():
    # MolT5's files double some backslashes; E and Z isomers must keep different InChIKeys.
    escaped, _ = molecule_identity("C(=C/C(=O)[O-])\\\\C=C\\\\C(=O)[O-]")
    assert "\\\\" not in escaped
    _, trans = molecule_identity("C/C=C/C")
    _, cis = molecule_identity("C/C=C\\C")
    assert trans != cis and not trans.endswith("UHFFFAOYSA-N")



@pytest.mark.parametrize(("written", "answer"), [
    ("It is a trimethoxyflavone. It has a role as a plant metabolite.",
     "The molecule is a trimethoxyflavone. It has a role as a plant metabolite."),  # only the leading subject
    ("it appears as a dark brown liquid.", "The molecule appears as a dark brown liquid."),
    ("It, also known as X, is a drug.", "The molecule, also known as X, is a drug."),
    ("Its salts are toxic.", "Its salts are toxic."),  # not the pronoun subject
    ("a glycoside of a kaurene.", "A glycoside of a kaurene."),
    ("The molecule is ethanol.", "The molecule is ethanol."),  # ChEBI-20 unchanged
])
def test_pcdes_descriptions_take_chebi20_subject(written, answer):
    from biomedgpt.data.molecule_qa import describe_answer

    assert describe_answer(written) == answer
