"""The nearest-neighbour index (molecules by Morgan/Tanimoto, proteins by k-mer prefilter + alignment)."""

from __future__ import annotations

import gzip
import json

import pytest
from rdkit import Chem, DataStructs
from rdkit.Chem import AllChem

from biomedgpt.data.records import QARecord
from biomedgpt.errors import InvalidSequenceError, InvalidSmilesError, UserError
from biomedgpt.retrieval import RetrievalIndex, alignment_identity, inchikey

MOLECULES = {
    "aspirin": "CC(=O)Oc1ccccc1C(=O)O",
    "salicylic": "O=C(O)c1ccccc1O",
    "ethanol": "CCO",
    "hexane": "CCCCCC",
    "caffeine": "Cn1cnc2c1c(=O)n(C)c(=O)n2C",
}
PROTEIN_A = "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQVKVKALPDAQFEVVHSLAKWKRQTLGQHDFSAGEGLYTHMKALRPDEDRLSPLHSVYVDQWDWERVMGDGERQFSTLKSTVEAIWAGIKATEAAVSEEFGLAPFLPDQIHFVHSQELLSRYPDLDAKGRERAIAKDLGAVFLVGIGGKLSDGHRHDVRAPDYDDWSTPSELGHAGLNGDILVWNPVLEDAFELSSMGIRVDADTLKHQLALTGDEDRLELEWHQALLRGEMPQTIGGGIGQSRLTMLLLQLPHIGQVQAGVWPAACRESVPALLELA"  # noqa: E501
PROTEIN_B = "MSDNGPQNQRNAPRITFGGPSDSTGSNQNGERSGARSKQRRPQGLPNNTASWFTALTQHGKEDLKFPRGQGVPINTNSSPDDQIGYYRRATRRIRGGDGKMKDLSPRWYFYYLGTGPEAGLPYGANKDGIIWVATEGALNTPKDHIGTRNPANNAAIVLQLPQGTTLPKGFYAE"  # noqa: E501


def _record(name, smiles=None, protein=None):
    return QARecord(id=name, question="What is it?", answer=f"about {name}",
                    molecules=[smiles] if smiles else [], proteins=[protein] if protein else [])


@pytest.fixture(scope="module")
def index():
    records = [_record(name, smiles=s) for name, s in MOLECULES.items()]
    records += [_record("protA", protein=PROTEIN_A), _record("protB", protein=PROTEIN_B),
                _record("bad", smiles="C1CC"), _record("two", smiles="CCO")]
    records[-1].molecules.append("CCN")  # two molecules: not indexed
    return RetrievalIndex.from_records(records)


def test_builds_from_records_and_skips_invalid_or_multi_entity(index):
    assert [e.id for e in index.molecules] == list(MOLECULES)
    assert [e.id for e in index.proteins] == ["protA", "protB"]
    assert index.molecules[0].key == inchikey(MOLECULES["aspirin"])


def test_molecule_query_ranks_by_tanimoto_like_rdkit(index):
    hits = index.query_molecule("OC(=O)c1ccccc1OC(C)=O", k=3)  # aspirin written differently
    assert hits[0].id == "aspirin" and hits[0].similarity == pytest.approx(1.0)
    assert hits[0].smiles == MOLECULES["aspirin"] and hits[0].sequence is None
    assert hits[1].id == "salicylic"
    # the similarity is RDKit's own Tanimoto of radius-2 / 2048-bit Morgan fingerprints
    fp = [AllChem.GetMorganFingerprintAsBitVect(Chem.MolFromSmiles(s), 2, nBits=2048)
          for s in (MOLECULES["aspirin"], MOLECULES["salicylic"])]
    assert hits[1].similarity == pytest.approx(DataStructs.TanimotoSimilarity(*fp))
    assert [h.similarity for h in hits] == sorted((h.similarity for h in hits), reverse=True)


def test_protein_query_finds_a_mutated_copy_by_identity(index):
    mutant = PROTEIN_B[:50] + "W" + PROTEIN_B[51:100] + PROTEIN_B[110:]  # one substitution, 10 deleted
    hits = index.query_protein(mutant, k=2)
    assert hits[0].id == "protB" and hits[0].sequence == PROTEIN_B and hits[0].smiles is None
    # needle identity: identical columns / alignment columns (the 10 deleted residues are gap columns)
    assert hits[0].similarity == pytest.approx((len(mutant) - 1) / len(PROTEIN_B))
    assert hits[1].similarity < 0.3


def test_alignment_identity_hand_cases():
    assert alignment_identity("ACDEFGHIKL", "ACDEFGHIKL") == 1.0
    assert alignment_identity("ACDEFGHIKL", "ACDEFGHIKA") == pytest.approx(0.9)
    assert alignment_identity("ACDEFGHIKL", "ACDEFKL") == pytest.approx(0.7)  # 7 identical of 10 columns
    assert alignment_identity("ACDEFGHIKL", "ACDEFGH") == pytest.approx(0.7)  # free end gaps are columns too
    assert alignment_identity("ACDUFGHIKO", "ACDUFGHIKL") == pytest.approx(0.9)  # U and O are not in BLOSUM62


def test_bad_queries_raise_clear_errors(index):
    with pytest.raises(InvalidSmilesError, match="C1CC"):
        index.query_molecule("C1CC")
    with pytest.raises(InvalidSequenceError, match="position 3"):
        index.query_protein("MK1A")


def test_without_removes_by_inchikey_and_sequence(index):
    smaller, removed = index.without({inchikey("C(C)O"), PROTEIN_A})
    assert removed == 2
    assert "ethanol" not in [e.id for e in smaller.molecules]
    assert [e.id for e in smaller.proteins] == ["protB"]
    assert smaller.query_molecule("CCO", k=1)[0].id != "ethanol"


def test_save_load_round_trip(index, tmp_path):
    path = tmp_path / "index.json.gz"
    index.save(path)
    loaded = RetrievalIndex.load(path)
    assert loaded.molecules == index.molecules and loaded.proteins == index.proteins
    for smiles in ("CCCCO", "c1ccccc1O"):
        assert loaded.query_molecule(smiles, k=5) == index.query_molecule(smiles, k=5)
    assert loaded.query_protein(PROTEIN_A[:120], k=2) == index.query_protein(PROTEIN_A[:120], k=2)


def test_proteins_are_parsed_on_first_protein_query(index, tmp_path):
    """Loading parses the molecules only (start-up of `ask`); the proteins are parsed from the bytes read at load
    when first needed, so the file may change or vanish in between without mixing two indexes."""
    path = tmp_path / "index.json.gz"
    index.save(path)
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    assert len(lines) == 2 and "proteins" not in json.loads(lines[0]) and json.loads(lines[0])["format"] == 2

    lazy = RetrievalIndex.load(path)
    path.write_bytes(b"replaced")
    assert lazy.query_molecule("CCCCO", k=2) == index.query_molecule("CCCCO", k=2)
    assert lazy.query_protein(PROTEIN_A[:120], k=2) == index.query_protein(PROTEIN_A[:120], k=2)
    path.unlink()
    assert lazy.proteins == index.proteins and len(lazy) == len(index)

    # a broken protein line: loading and molecule questions work (nothing parsed it), the first protein
    # question (or `read_proteins`, what `serve` calls at start-up) fails with a clear error
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write(lines[0] + "\n" + '{"proteins": [')
    broken = RetrievalIndex.load(path)
    assert broken.query_molecule("CCCCO", k=2) == index.query_molecule("CCCCO", k=2)
    with pytest.raises(UserError, match="not a retrieval index"):
        broken.query_protein(PROTEIN_A[:120], k=2)
    with pytest.raises(UserError, match="not a retrieval index"):
        RetrievalIndex.load(path).read_proteins()


def test_format_1_index_files_still_load(index, tmp_path):
    """Indexes written before the two-line format (one JSON document) load and answer the same."""
    path = tmp_path / "old.json.gz"
    index.save(path)
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        head, proteins = (json.loads(line) for line in handle)
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        json.dump({**head, "format": 1, **proteins}, handle)
    old = RetrievalIndex.load(path)
    path.unlink()
    assert old.molecules == index.molecules and old.proteins == index.proteins
    assert old.query_protein(PROTEIN_A[:120], k=2) == index.query_protein(PROTEIN_A[:120], k=2)


@pytest.mark.parametrize("content", [b"not gzip", "[1, 2]", '{"format": 2}', "{}\n", None, "corrupt", "no-line-2"])
def test_broken_index_files_raise_clear_errors(index, tmp_path, content):
    path = tmp_path / "index.json.gz"
    if content is None or content == "no-line-2":  # a valid first line, a truncated or missing second one
        index.save(path)
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            head = handle.readline()
        content = head + ('{"proteins": [' if content is None else "")
    if content == "corrupt":  # damaged deflate data (zlib.error, not an OSError)
        index.save(path)
        data = bytearray(path.read_bytes())
        data[40:400] = bytes(range(256)) + bytes(104)
        content = bytes(data)
    if isinstance(content, str):
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.write(content)
    else:
        path.write_bytes(content)
    with pytest.raises(UserError, match="retrieval index"):
        RetrievalIndex.load(path).query_protein(PROTEIN_A[:120], k=1)


def test_a_molecule_without_inchikey_never_counts_as_a_duplicate():
    index = RetrievalIndex.from_records([_record("dummy", smiles="*"), _record("ethanol", smiles="CCO")])
    assert inchikey("*") == "" and index.molecules[0].key == ""
    assert index.without({""})[1] == 0
    assert index.query_molecule("CCO", k=1, question="What is it?")[0].id == "ethanol"
    assert index.query_molecule("CCO", k=1, question="Another question?") == []


# ---------------------------------------------------------------------- retrieval-augmented prompts
def _user(smiles=(), proteins=()):
    from biomedgpt.inference import Message

    return Message("user", "Describe it.", list(smiles), list(proteins))


def test_leave_one_out_never_returns_the_query_itself(index):
    from biomedgpt.retrieval import find_evidence

    aspirin = "OC(=O)c1ccccc1OC(C)=O"  # written differently: identity is by InChIKey, not by string
    plain = find_evidence(index, [_user([aspirin], [PROTEIN_A])], k=2)
    assert [n["id"] for n in plain[0]["neighbors"]] == ["aspirin", "salicylic"]
    assert plain[1]["neighbors"][0]["id"] == "protA"
    held_out = find_evidence(index, [_user([aspirin], [PROTEIN_A])], k=2, leave_one_out=True)
    assert held_out[0]["neighbors"][0]["id"] == "salicylic"
    assert len(held_out[0]["neighbors"]) == 2 and all(n["id"] != "aspirin" for n in held_out[0]["neighbors"])
    assert [n["id"] for n in held_out[1]["neighbors"]] == ["protB"]


def test_evidence_prompt_format(index):
    from biomedgpt.retrieval import EVIDENCE_HEADERS, find_evidence, with_evidence

    evidence = find_evidence(index, [_user([MOLECULES["aspirin"]], [PROTEIN_B])], k=1)
    text = with_evidence("Describe it.", evidence)
    assert text == (f"{EVIDENCE_HEADERS['molecule']}\n1. (1.00) about aspirin\n\n"
                    f"{EVIDENCE_HEADERS['protein']}\n1. (1.00) What is it? about protB\n\nDescribe it.")
    assert with_evidence("Describe it.", []) == "Describe it."


def test_model_trained_with_evidence_gets_it_in_every_prompt(index, tiny_model_factory):
    """`config.evidence_in_prompt` puts the evidence into the prompt the LM sees (inference and training)."""
    from biomedgpt.inference import build_example

    model = tiny_model_factory()
    message = _user([MOLECULES["caffeine"]])
    plain = build_example(model, [message])
    model.config.evidence_in_prompt, model.evidence_index = 1, index
    rag = build_example(model, [message])
    text = model.tokenizer.decode([i for i in rag.input_ids if i >= 0])
    assert "1. (1.00) about caffeine" in text and text.index("about caffeine") < text.index("Describe it.")
    assert len(rag.input_ids) > len(plain.input_ids)
    training = model.tokenizer.decode([i for i in build_example(model, [message], leave_one_out=True).input_ids
                                       if i >= 0])
    assert "about caffeine" not in training and "1. (" in training
    assert build_example(model, [_user()]).input_ids == build_example(model, [_user()], leave_one_out=True).input_ids


def test_load_model_attaches_the_folder_index_when_trained_with_evidence(index, tiny_model_factory, tmp_path):
    from biomedgpt.inference import load_model

    model = tiny_model_factory()
    model.save_pretrained(tmp_path / "plain")
    assert getattr(load_model(str(tmp_path / "plain")), "evidence_index", None) is None  # k = 0: nothing loaded
    model.config.evidence_in_prompt = 2
    model.save_pretrained(tmp_path / "rag")
    index.save(tmp_path / "rag" / "index.json.gz")
    loaded = load_model(str(tmp_path / "rag"))
    assert loaded.config.evidence_in_prompt == 2
    assert [e.id for e in loaded.evidence_index.molecules] == [e.id for e in index.molecules]


def test_evidence_answers_the_same_question_when_the_pool_has_it():
    """A protein indexed once per question: a location question sees its neighbours' locations (as the
    nearest-neighbour baseline does); a question the pool never saw searches every annotation."""
    from biomedgpt.inference import Message
    from biomedgpt.retrieval import find_evidence

    def record(name, question, answer, protein):
        return QARecord(id=name, question=question, answer=answer, molecules=[], proteins=[protein])

    where, what = "Where is it?", "What does it do?"
    index = RetrievalIndex.from_records([record("A-func", what, "kinase", PROTEIN_A),
                                         record("B-loc", where, "nucleus", PROTEIN_B),
                                         record("A-loc", where, "cytoplasm", PROTEIN_A[:200])])
    query = PROTEIN_A[:250]
    located = find_evidence(index, [Message("user", f" {where} ", proteins=[query])], k=2)[0]["neighbors"]
    assert [n["id"] for n in located] == ["A-loc", "B-loc"]
    function = find_evidence(index, [Message("user", what, proteins=[query])], k=2)[0]["neighbors"]
    assert [n["id"] for n in function] == ["A-func"]
    unseen = find_evidence(index, [Message("user", "Tell me about it.", proteins=[query])], k=3)[0]["neighbors"]
    assert {n["id"] for n in unseen} == {"A-func", "A-loc", "B-loc"}
