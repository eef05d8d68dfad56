"""Protein sequences: normalisation, validation against the ESM-2 alphabet, and ESM-2 tokenisation.

Every ESM-2 size (8M … 15B) shares one 33-token alphabet, so tokenisation is a fixed table; it matches
`transformers.EsmTokenizer` with the published `vocab.txt` (a test checks this).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from biomedgpt.errors import InvalidSequenceError

if TYPE_CHECKING:  # torch is imported where tensors are made, so text-only tools stay light
    import torch

logger = logging.getLogger(__name__)

ESM_ALPHABET = (
    "<cls>", "<pad>", "<eos>", "<unk>",
    "L", "A", "G", "V", "S", "E", "R", "T", "I", "D", "P", "K", "Q", "N", "F", "Y", "M", "H", "W", "C",
    "X", "B", "U", "Z", "O", ".", "-", "<null_1>", "<mask>",
)
ESM_TOKEN_IDS = {token: index for index, token in enumerate(ESM_ALPHABET)}
CLS_ID, PAD_ID, EOS_ID, UNK_ID, MASK_ID = 0, 1, 2, 3, 32
ESM_VOCAB_SIZE = len(ESM_ALPHABET)
# Residue letters accepted in input: the 20 standard amino acids plus ESM's ambiguity codes X B U Z O.
RESIDUES = frozenset("LAGVSERTIDPKQNFYMHWCXBUZO")
DEFAULT_MAX_RESIDUES = 1022  # ESM-2 was trained on at most 1024 positions: 1022 residues + <cls> + <eos>


@dataclass
class ProteinBatch:
    """ESM-2 token ids for several proteins, right-padded. `input_ids`, `attention_mask`: [num_proteins, L].

    Every non-pad position (including <cls> and <eos>) becomes one soft token in the LM prompt, as in the
    reference, so `num_tokens[k] = len(sequence_k) + 2`.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor

    @property
    def num_tokens(self) -> list[int]:
        return self.attention_mask.sum(dim=1).tolist()

    @property
    def num_proteins(self) -> int:
        return int(self.input_ids.shape[0])

    def to(self, device: torch.device | str) -> ProteinBatch:
        return ProteinBatch(self.input_ids.to(device), self.attention_mask.to(device))


def normalize_sequence(text: str, max_residues: int = DEFAULT_MAX_RESIDUES) -> str:
    """Clean a user-given sequence: drop FASTA header lines, whitespace and a trailing
    stop '*', upper-case it; validate every residue; cap its length with a warning.

    Raises `InvalidSequenceError` naming the first bad position (1-based, in the cleaned sequence) and character.
    """
    if not isinstance(text, str):
        raise InvalidSequenceError(f"protein sequence must be text, got {type(text).__name__}")
    lines = [line for line in text.strip().splitlines() if not line.lstrip().startswith(">")]
    sequence = "".join("".join(lines).split()).upper()
    if sequence.endswith("*"):
        sequence = sequence[:-1]
    if not sequence:
        raise InvalidSequenceError("empty protein sequence")
    for position, char in enumerate(sequence, start=1):
        if char not in RESIDUES:
            raise InvalidSequenceError(
                f"invalid protein sequence: character {char!r} at position {position} is not an amino acid "
                f"(allowed: {''.join(sorted(RESIDUES))})"
            )
    if len(sequence) > max_residues:
        logger.warning("protein of %d residues truncated to the first %d", len(sequence), max_residues)
        sequence = sequence[:max_residues]
    return sequence


def tokenize_sequence(sequence: str) -> list[int]:
    """ESM-2 token ids of a normalised sequence: <cls> residues <eos>."""
    return [CLS_ID, *(ESM_TOKEN_IDS[char] for char in sequence), EOS_ID]


def batch_sequences(sequences: list[str]) -> ProteinBatch:
    """Tokenise normalised sequences and right-pad them into one batch."""
    import torch

    if not sequences:
        raise ValueError("batch_sequences needs at least one protein")
    token_lists = [tokenize_sequence(s) for s in sequences]
    width = max(len(t) for t in token_lists)
    input_ids = torch.full((len(token_lists), width), PAD_ID, dtype=torch.long)
    attention_mask = torch.zeros((len(token_lists), width), dtype=torch.long)
    for row, tokens in enumerate(token_lists):
        input_ids[row, : len(tokens)] = torch.tensor(tokens)
        attention_mask[row, : len(tokens)] = 1
    return ProteinBatch(input_ids, attention_mask)


def write_esm_vocab(path) -> None:
    """Write the ESM-2 `vocab.txt` (for building an `EsmTokenizer` or a HF ESM folder offline)."""
    from pathlib import Path

    Path(path).write_text("\n".join(ESM_ALPHABET) + "\n")
