"""The MolT5-protocol metrics: hand-worked small cases and the 200-row golden set scored by MolT5's script."""

from __future__ import annotations

import csv
import math

import pytest

from biomedgpt.evaluate import text_metrics as tm

REF = "the cat sat on the mat"
HYP = "the cat sat on a mat"


def test_tokenize_lowercases_drops_specials_and_truncates_at_512():
    assert tm.tokenize(["The Alkane [SEP] Héllo"]) == [["the", "alk", "##ane", "hell", "##o"]]
    long_text = " ".join(["carbon"] * 600)
    assert len(tm.tokenize([long_text])[0]) == 512


def test_bleu_hand_worked():
    # unigrams 5/6 ("the" clipped to 1), bigrams 3/5, trigrams 2/4, 4-grams 1/3; equal lengths: no brevity penalty
    scores = tm.bleu([REF], [HYP])
    assert scores["bleu2"] == pytest.approx(math.sqrt(5 / 6 * 3 / 5), abs=1e-12)
    assert scores["bleu4"] == pytest.approx((5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25, abs=1e-12)
    assert tm.bleu([REF], [REF]) == {"bleu2": pytest.approx(1.0), "bleu4": pytest.approx(1.0)}


def test_bleu_brevity_penalty_is_corpus_level():
    # "the cat sat": all n-grams match, but 3 tokens against 6 -> BP = exp(1 - 6/3)
    assert tm.bleu([REF], ["the cat sat"])["bleu2"] == pytest.approx(math.exp(-1), abs=1e-12)
    # corpus lengths add up: 6+6 reference tokens vs 3+6 hypothesis tokens -> BP = exp(1 - 12/9)
    two = tm.bleu([REF, REF], ["the cat sat", REF])
    p1, p2 = 9 / 9, 7 / 7
    assert two["bleu2"] == pytest.approx(math.exp(1 - 12 / 9) * math.sqrt(p1 * p2), abs=1e-12)


def test_rouge_hand_worked():
    scores = tm.rouge([REF], [HYP])
    assert scores["rouge1"] == pytest.approx(5 / 6)  # the, cat, sat, on, mat
    assert scores["rouge2"] == pytest.approx(3 / 5)  # the cat, cat sat, sat on
    assert scores["rougeL"] == pytest.approx(5 / 6)  # LCS: the cat sat on mat


def test_meteor_uses_wordnet_synonyms():
    # car ~ auto through WordNet: 3/3 matched in one chunk -> penalty 0.5 * (1/3)^3
    score = tm.meteor_scores(["the auto moved"], ["the car moved"])[0]
    assert score == pytest.approx(1 - 0.5 / 27, abs=1e-12)
    # no synonym: 2 of 3 matched in 2 chunks -> Fmean = 2/3, penalty 0.5 * (2/2)^3
    assert tm.meteor_scores(["the auto moved"], ["the cat moved"])[0] == pytest.approx(1 / 3, abs=1e-12)
    # nltk looks synonyms up after Porter stemming ("large" -> "larg"), so big/large do not match; MolT5's
    # numbers include this behaviour, and so do ours
    assert tm.meteor_scores(["the big cell"], ["the large cell"])[0] == pytest.approx(1 / 3, abs=1e-12)


def test_wordnet_is_converted_into_the_cache_with_lf_endings(tmp_path, monkeypatch):
    monkeypatch.setenv("BIOMEDGPT_CACHE", str(tmp_path))
    root = tm.wordnet_root()
    assert root == tmp_path / "nltk_data"
    data = (root / "corpora" / "wordnet" / "data.noun").read_bytes()
    assert b"\r\n" not in data[:200_000] and data.count(b"\n") > 80_000
    assert tm.wordnet_root() == root  # second call reuses it


def test_exact_match_and_input_checks():
    assert tm.exact_match(["Nucleus", "cytoplasm"], ["  nucleus. ", "golgi"]) == 0.5
    with pytest.raises(ValueError, match="2 references but 1 predictions"):
        tm.text_metrics(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="no texts"):
        tm.bleu([], [])


@pytest.mark.shared_data
def test_golden_chebi20_rows_match_molt5_script(shared_data):
    """200 ChEBI-20 rows scored by MolT5's own `text_translation_metrics.py`: we agree to 1e-9."""
    path = shared_data / "metric-golden" / "chebi20_nn_200.tsv"
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    assert len(rows) == 200
    scores = tm.text_metrics([r["ground truth"] for r in rows], [r["output"] for r in rows])
    expected = {"bleu2": 0.4332019899567121, "bleu4": 0.3368343120265379, "meteor": 0.46239243966975296,
                "rouge1": 0.5184512488448146, "rouge2": 0.3509451828790474, "rougeL": 0.4592030729664428}
    for name, value in expected.items():
        assert scores[name] == pytest.approx(value, abs=1e-9), name
