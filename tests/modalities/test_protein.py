import logging

import pytest
import torch

from biomedgpt.errors import InvalidSequenceError
from biomedgpt.modalities.protein import (
    ESM_ALPHABET,
    batch_sequences,
    normalize_sequence,
    tokenize_sequence,
    write_esm_vocab,
)


def test_normalisation_strips_header_whitespace_case_and_stop():
    assert normalize_sequence(">sp|P01308|INS_HUMAN Insulin\nmalw mrll\nPLLA*\n") == "MALWMRLLPLLA"


def test_first_bad_position_is_named():
    with pytest.raises(InvalidSequenceError, match=r"'1' at position 4"):
        normalize_sequence("MKV1AJ")
    with pytest.raises(InvalidSequenceError, match=r"'J' at position 5"):
        normalize_sequence("mk va j")
    with pytest.raises(InvalidSequenceError, match="empty"):
        normalize_sequence(">only a header\n")


def test_long_sequence_capped_with_warning(caplog):
    with caplog.at_level(logging.WARNING):
        assert len(normalize_sequence("A" * 2000)) == 1022
    assert "truncated" in caplog.text


def test_tokenisation_matches_transformers_esm_tokenizer(tmp_path):
    from transformers import EsmTokenizer

    write_esm_vocab(tmp_path / "vocab.txt")
    reference = EsmTokenizer(vocab_file=str(tmp_path / "vocab.txt"))
    sequence = "MALWMRLLPLLALLALWGPDPAAAXBUZO"
    assert tokenize_sequence(sequence) == reference(sequence)["input_ids"]
    assert len(ESM_ALPHABET) == 33 and ESM_ALPHABET[32] == "<mask>"


def test_batch_sequences_pads_right():
    batch = batch_sequences(["MKV", "MK"])
    assert batch.num_tokens == [5, 4]
    assert batch.input_ids[1, -1] == 1  # <pad>
    assert torch.equal(batch.attention_mask, torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]))
