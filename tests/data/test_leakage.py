"""Leakage check: the ChEBI-20 / PCdes overlaps measured with RDKit, protein identity, question duplicates."""

from __future__ import annotations

import random

import pytest

from biomedgpt.data.leakage import Item, check_leakage, load_items, normalise_question
from biomedgpt.data.similarity import KmerIndex, alignment_identity

AMINO = "ACDEFGHIKLMNPQRSTVWY"


@pytest.fixture(scope="module")
def chebi_pcdes(shared_data):
    chebi, pcdes = shared_data / "chebi-20", shared_data / "pcdes"
    return {"test": load_items(chebi / "test.txt"), "validation": load_items(chebi / "validation.txt"),
            "pcdes": load_items(pcdes / "PCdev.txt") + load_items(pcdes / "PCtest.txt")}


def test_chebi20_pcdes_overlaps_found_by_inchikey_not_by_cid(chebi_pcdes):
    test, validation, pcdes = chebi_pcdes["test"], chebi_pcdes["validation"], chebi_pcdes["pcdes"]
    assert (len(test), len(validation), len(pcdes)) == (3300, 3301, 4500)
    test_cids = {item.id for item in test}
    assert sum(item.id in test_cids for item in pcdes) == 45  # what a CID check would find
    assert len({key for item in test for _, key in item.molecules}) == 3295  # test repeats 5 InChIKeys
    report = check_leakage(validation + pcdes, test, tanimoto=0.9)  # indices: validation first, then PCdes
    assert sum(index < len(validation) for index in report.leaking) == 5
    assert sum(index >= len(validation) for index in report.leaking) == 274
    section = report.sections["molecules"]
    assert section["exact"] == 279 and section["train_molecules"] == 7800  # one PCdes SMILES is not valid
    assert report.near and not report.near & report.leaking
    assert section["histogram"]["0.95"] >= 279  # every exact duplicate also has Tanimoto 1


def _mutate(sequence: str, fraction: float, rng: random.Random) -> str:
    letters = list(sequence)
    for position in rng.sample(range(len(letters)), int(fraction * len(letters))):
        letters[position] = rng.choice([a for a in AMINO if a != letters[position]])
    return "".join(letters)


def test_kmer_identity_estimate_tracks_true_identity():
    rng = random.Random(0)
    parent = "".join(rng.choice(AMINO) for _ in range(400))
    unrelated = "".join(rng.choice(AMINO) for _ in range(400))
    close, distant = _mutate(parent, 0.05, rng), _mutate(parent, 0.3, rng)
    index = KmerIndex([parent, unrelated])
    assert index.estimate(parent).tolist() == [1.0, pytest.approx(0.0, abs=0.25)]
    assert index.estimate(close)[0] == pytest.approx(0.95, abs=0.03)
    assert index.estimate(distant)[0] == pytest.approx(0.7, abs=0.08)
    assert index.best(parent[100:250]) == (0, 1.0)  # a fragment is identical over the shorter sequence
    assert alignment_identity(close, parent) == pytest.approx(0.95)
    assert alignment_identity(parent[100:250], parent) == 1.0
    assert KmerIndex([]).best(parent) == (-1, 0.0)


def test_protein_exact_and_near_duplicates_reported_and_aligned():
    rng = random.Random(1)
    test_sequences = ["".join(rng.choice(AMINO) for _ in range(300)) for _ in range(20)]
    train = [Item(0, "same", proteins=[test_sequences[3]]),
             Item(1, "close", proteins=[_mutate(test_sequences[5], 0.04, rng)]),
             Item(2, "far", proteins=[_mutate(test_sequences[7], 0.5, rng)]),
             Item(3, "new", proteins=["".join(rng.choice(AMINO) for _ in range(300))])]
    test = [Item(i, f"t{i}", proteins=[s]) for i, s in enumerate(test_sequences)]
    report = check_leakage(train, test, min_identity=0.9)
    assert report.leaking == {0} and report.near == {1}
    section = report.sections["proteins"]
    assert (section["exact"], section["near"]) == (1, 1)
    aligned = check_leakage(train, test, min_identity=0.9, align=True)
    assert aligned.near == {1} and "alignment identity >= 0.9" in aligned.sections["proteins"]["near_rule"]


def test_multiple_choice_questions_match_after_normalisation():
    assert normalise_question("  Which DRUG is used?\n") == normalise_question("which drug is used")
    train = [Item(0, "a", question=normalise_question("Which drug, here, is used?")),
             Item(1, "b", question=normalise_question("Another question"))]
    test = [Item(0, "t", question=normalise_question("which drug here is USED"))]
    report = check_leakage(train, test)
    assert report.leaking == {0} and report.sections["questions"]["examples"] == ["a = t"]
