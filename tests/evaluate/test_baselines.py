"""Nearest-neighbour, majority and random baselines."""

from __future__ import annotations

import pytest

from biomedgpt.data.records import MCQRecord, QARecord
from biomedgpt.errors import UserError
from biomedgpt.evaluate.baselines import Majority, NearestNeighbor, RandomGuess, make_baseline

TRAIN = [
    QARecord(id="t1", question="Describe.", answer="an aromatic ester", molecules=["CC(=O)Oc1ccccc1C(=O)O"]),
    QARecord(id="t2", question="Describe.", answer="a primary alcohol", molecules=["CCO"]),
    QARecord(id="t3", question="Describe.", answer="a primary alcohol", molecules=["CCCO"]),
    QARecord(id="t4", question="Where?", answer="nucleus", proteins=["MKTAYIAKQRQISFVKSHFSRQLEERLGLIEV"]),
]


def test_nn_copies_the_most_similar_training_answer():
    evaluated = [QARecord(id="e1", question="Describe.", answer="?", molecules=["CC(=O)Oc1ccccc1C(=O)OC"]),
                 QARecord(id="e2", question="Where?", answer="?", proteins=["MKTAYIAKQRQISFVKSHFSRQLEERLGLIEA"]),
                 QARecord(id="e3", question="Describe.", answer="?", molecules=["C1CC"])]
    nn = NearestNeighbor(TRAIN, evaluated)
    out = nn(evaluated)
    assert out[0]["prediction"] == "an aromatic ester" and out[0]["neighbor"] == "t1"
    assert out[1]["prediction"] == "nucleus" and out[1]["similarity"] == pytest.approx(31 / 32, abs=1e-6)
    assert out[2]["prediction"] == "" and "C1CC" in out[2]["error"]  # a bad SMILES is scored, never a crash


def test_nn_pool_drops_every_entity_of_the_evaluated_set():
    # ethanol is in the evaluated set (written differently): its training answer must not be copied
    evaluated = [QARecord(id="e1", question="Describe.", answer="?", molecules=["OCC"])]
    nn = NearestNeighbor(TRAIN, evaluated)
    assert nn.details["pool_removed_overlap"] == 1 and nn.details["pool_molecules"] == 2
    assert nn(evaluated)[0]["neighbor"] == "t3"


def _mcq(i, answer):
    return MCQRecord(id=f"q{i}", question=f"Q{i}?", options={"A": "yes", "B": "no", "C": "maybe"}, answer=answer)


def test_majority_uses_training_labels_or_says_it_used_the_evaluated_ones():
    train = [_mcq(0, "B"), _mcq(1, "B"), _mcq(2, "A")]
    evaluated = [_mcq(3, "A"), _mcq(4, "A")]
    assert Majority(train, evaluated, True)(evaluated) == [{"prediction": "B"}] * 2
    oracle = Majority([], evaluated, True)
    assert oracle.answer == "A" and oracle.details["oracle_labels"] is True
    assert Majority(TRAIN, [], False).answer == "a primary alcohol"


def test_random_is_seeded_per_record_and_independent_of_batching():
    records = [_mcq(i, "A") for i in range(60)]
    guess = RandomGuess([], True, seed=3)
    whole = [p["prediction"] for p in guess(records)]
    batched = [p["prediction"] for i in range(0, 60, 7) for p in guess(records[i : i + 7])]
    assert whole == batched and set(whole) == {"A", "B", "C"}
    assert whole != [p["prediction"] for p in RandomGuess([], True, seed=4)(records)]


def test_make_baseline_rejects_what_does_not_apply():
    with pytest.raises(UserError, match="unknown baseline"):
        make_baseline("oracle", TRAIN, TRAIN, False, 0)
    with pytest.raises(UserError, match="not multiple choice"):
        make_baseline("nn", [_mcq(0, "A")], [_mcq(1, "A")], True, 0)
    with pytest.raises(UserError, match="--train"):
        make_baseline("nn", [], TRAIN, False, 0)
    with pytest.raises(UserError, match="--train"):
        make_baseline("majority", [], TRAIN, False, 0)


def test_mixed_pools_answer_from_records_asked_the_same_question():
    seq = "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEV"
    train = [QARecord(id="go", question="Function?", answer="ATP binding", proteins=[seq]),
             QARecord(id="loc", question="Where?", answer="nucleus", proteins=[seq[:-1] + "A"]),
             QARecord(id="loc2", question="Where?", answer="nucleus", proteins=["MSDNGPQNQRNAPRITFGGPSDSTGSNQNG"]),
             QARecord(id="loc3", question="Where?", answer="cytoplasm", proteins=["MSDNGPQNQRNAPRITFGG"])]
    evaluated = [QARecord(id="e", question="Where?", answer="?", proteins=[seq[:-2] + "WW"]),
                 QARecord(id="f", question="Other?", answer="?", proteins=[seq[:-2] + "WW"])]
    out = NearestNeighbor(train, evaluated)(evaluated)
    assert out[0]["neighbor"] == "loc"  # "go" is as close, but answers another question
    assert out[1]["neighbor"] == "go"  # no record asked "Other?": the whole pool
    majority = Majority(train, [], False)
    assert [p["prediction"] for p in majority(evaluated)] == ["nucleus", "nucleus"]
    assert majority([train[0]])[0]["prediction"] == "ATP binding"
    guesses = RandomGuess(train, False, seed=0)([evaluated[0]] * 1)
    assert guesses[0]["prediction"] in {"nucleus", "cytoplasm"}
