"""Option-letter scoring, answer parsing and accuracy."""

from __future__ import annotations

import pytest
import torch

from biomedgpt.data.collate import collate
from biomedgpt.data.records import MCQRecord
from biomedgpt.errors import UserError
from biomedgpt.evaluate import multiple_choice as mc
from biomedgpt.inference import build_example

YES_NO = {"A": "yes", "B": "no", "C": "maybe"}
RECORDS = [
    MCQRecord(id="1", question="Is the sky blue?", options=YES_NO, answer="A", context="Observations of the sky."),
    MCQRecord(id="2", question="Which organ pumps blood?", options={"A": "liver", "B": "heart", "C": "lung",
                                                                     "D": "kidney"}, answer="B"),
    MCQRecord(id="3", question="Short?", options={"A": "x", "B": "y"}, answer="B"),
]


def test_letter_logprob_is_the_log_probability_of_the_answer_token(tiny_model):
    """The score of letter L equals -loss of the same prompt with L as the (only) answer token: the scoring
    reads the logits at exactly the position where training teaches the answer."""
    scores = mc.score_letters(tiny_model, RECORDS)
    for record, per_letter in zip(RECORDS, scores):
        assert sorted(per_letter) == sorted(record.options)
        for letter, logprob in per_letter.items():
            example = build_example(tiny_model, mc.conversation(record), answer=letter)
            batch = collate([example], tiny_model.tokenizer.pad_token_id)
            with torch.no_grad():
                loss = tiny_model(**batch.model_inputs(), labels=batch.labels).loss
            assert logprob == pytest.approx(-float(loss), abs=1e-4)


def test_batched_scores_equal_one_at_a_time(tiny_model):
    together = mc.score_letters(tiny_model, RECORDS)
    alone = [mc.score_letters(tiny_model, [record])[0] for record in RECORDS]
    for a, b in zip(together, alone):
        assert a == pytest.approx(b, abs=1e-4)


def test_few_shot_conversation_and_prompt():
    shots = mc.pick_shots(RECORDS, 2, seed=1)
    assert shots == mc.pick_shots(RECORDS, 2, seed=1)
    messages = mc.conversation(RECORDS[0], shots)
    assert [m.role for m in messages] == ["user", "assistant", "user", "assistant", "user"]
    assert messages[1].text == shots[0].answer
    text = mc.format_question(RECORDS[0])
    assert text.startswith("Context: Observations") and "A. yes\nB. no\nC. maybe" in text
    with pytest.raises(UserError, match="at least 5"):
        mc.pick_shots(RECORDS, 5, seed=0)
    # a training question that is also evaluated is never a shot (the test file passed as --train, say)
    for seed in range(20):
        assert RECORDS[0] not in mc.pick_shots(RECORDS, 2, seed=seed, evaluated=[RECORDS[0]])
    with pytest.raises(UserError, match="at least 3"):
        mc.pick_shots(RECORDS, 3, seed=0, evaluated=[RECORDS[2]])


@pytest.mark.parametrize("text, expected", [
    ("B", "B"), ("(C) maybe", "C"), ("The answer is A.", "A"), ("Answer: C", "C"), ("Yes.", "A"),
    ("I think no, because", "B"), ("yes or no", None), ("D", None), ("", None), ("B) no", "B"),
])
def test_parse_answer(text, expected):
    assert mc.parse_answer(text, YES_NO) == expected


def test_accuracy_metrics_hand_worked():
    metrics = mc.accuracy_metrics(["A", "A", "B", "C"], ["A", "B", "B", None])
    assert metrics["accuracy"] == 0.5
    # F1: A = 2*1/(1+2) = 2/3, B = 2*1/(2+1) = 2/3, C = 0
    assert metrics["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)
    assert metrics["unparsed"] == 0.25
    assert mc.best_letter({"A": -1.0, "B": -0.5, "C": -0.5}) == "B"
