"""Prompt building, placeholder expansion, label masking and batching.

The collator is where text meets the other modalities: each `<moleculeHere>` placeholder becomes one
`MOLECULE_TOKEN_ID` per heavy atom and each `<proteinHere>` one `PROTEIN_TOKEN_ID` per ESM-2 position
(residues + <cls> + <eos>), so the model can write encoder outputs over exactly those positions. Prompt and
placeholder positions get `IGNORE_INDEX` labels; only the answer (and its end-of-turn token) is learned.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from biomedgpt.constants import (
    ASSISTANT_TAG,
    HUMAN_TAG,
    IGNORE_INDEX,
    MOLECULE_PLACEHOLDER,
    MOLECULE_TAG_CLOSE,
    MOLECULE_TAG_OPEN,
    MOLECULE_TOKEN_ID,
    PROTEIN_PLACEHOLDER,
    PROTEIN_TAG_CLOSE,
    PROTEIN_TAG_OPEN,
    PROTEIN_TOKEN_ID,
    REFERENCE_SYSTEM_PROMPT,
)
from biomedgpt.modalities.molecule import MoleculeBatch, MoleculeGraph, batch_graphs
from biomedgpt.modalities.protein import ProteinBatch, batch_sequences

_PLACEHOLDER_RE = re.compile(f"({re.escape(MOLECULE_PLACEHOLDER)}|{re.escape(PROTEIN_PLACEHOLDER)})")


def entity_prefix(num_molecules: int = 0, num_proteins: int = 0) -> str:
    """The text that introduces attached entities in a user turn, in the reference's tag format."""
    parts = [f"{MOLECULE_TAG_OPEN}{MOLECULE_PLACEHOLDER}{MOLECULE_TAG_CLOSE}"] * num_molecules
    parts += [f"{PROTEIN_TAG_OPEN}{PROTEIN_PLACEHOLDER}{PROTEIN_TAG_CLOSE}"] * num_proteins
    return " ".join(parts) + (" " if parts else "")


def render_prompt(
    tokenizer, messages: Sequence[dict[str, str]], *, use_chat_template: bool, system_prompt: str | None = None
) -> str:
    """Render a conversation (roles user/assistant, optional leading system) ending with the assistant's turn
    to be generated. Uses the LM's chat template when asked and available, else the reference template
    `{system} ### Human: {q} ### Assistant: {a} ...`."""
    messages = list(messages)
    if messages and messages[0]["role"] == "system":
        system_prompt, messages = messages[0]["content"], messages[1:]
    if use_chat_template and getattr(tokenizer, "chat_template", None):
        full = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + messages
        return tokenizer.apply_chat_template(full, tokenize=False, add_generation_prompt=True)
    text = system_prompt if system_prompt is not None else REFERENCE_SYSTEM_PROMPT
    for message in messages:
        tag = HUMAN_TAG if message["role"] == "user" else ASSISTANT_TAG
        text += f" {tag}{message['content']}"
    return text + f" {ASSISTANT_TAG}"


def end_of_turn(tokenizer) -> str:
    """What closes an assistant answer in training targets: the LM's eos (`<|im_end|>` for chat models)."""
    return tokenizer.eos_token or ""


@dataclass
class Example:
    """One tokenised prompt (and optionally its answer) with the entities its placeholders refer to."""

    input_ids: list[int]
    labels: list[int]
    molecules: list[MoleculeGraph] = field(default_factory=list)
    proteins: list[str] = field(default_factory=list)


def tokenize_prompt(
    tokenizer,
    prompt: str,
    molecules: Sequence[MoleculeGraph] = (),
    proteins: Sequence[str] = (),
    answer: str | None = None,
    add_bos: bool = True,
) -> Example:
    """Tokenise `prompt` (+ `answer`), expanding placeholders. `molecules`/`proteins` are in the order their
    placeholders appear; `proteins` are normalised sequences. Raises ValueError if the counts differ."""
    pieces = _PLACEHOLDER_RE.split(prompt)
    for placeholder, entities, name in ((MOLECULE_PLACEHOLDER, molecules, "molecule"),
                                        (PROTEIN_PLACEHOLDER, proteins, "protein")):
        if pieces.count(placeholder) != len(entities):
            raise ValueError(f"prompt has {pieces.count(placeholder)} {name} placeholders "
                             f"but {len(entities)} {name}s were given")
    ids: list[int] = []
    if add_bos and tokenizer.bos_token_id is not None and not prompt.startswith(tokenizer.bos_token or "\0"):
        ids.append(tokenizer.bos_token_id)
    mol_iter, prot_iter = iter(molecules), iter(proteins)
    for piece in pieces:
        if piece == MOLECULE_PLACEHOLDER:
            ids += [MOLECULE_TOKEN_ID] * next(mol_iter).num_atoms
        elif piece == PROTEIN_PLACEHOLDER:
            ids += [PROTEIN_TOKEN_ID] * (len(next(prot_iter)) + 2)
        elif piece:
            ids += tokenizer(piece, add_special_tokens=False)["input_ids"]
    labels = [IGNORE_INDEX] * len(ids)
    if answer is not None:
        answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
        ids += answer_ids
        labels += answer_ids
    return Example(ids, labels, list(molecules), list(proteins))


@dataclass
class Batch:
    """Model inputs for a batch. `input_ids`, `attention_mask`, `labels`: [B, T]."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    molecules: MoleculeBatch | None
    proteins: ProteinBatch | None

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device),
            self.molecules.to(device) if self.molecules is not None else None,
            self.proteins.to(device) if self.proteins is not None else None,
        )

    def model_inputs(self) -> dict:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask,
                "molecules": self.molecules, "proteins": self.proteins}


def collate(examples: Sequence[Example], pad_token_id: int, padding_side: str = "right") -> Batch:
    """Pad examples into one batch. Use `padding_side="left"` for generation (new tokens follow the prompt),
    "right" for training. Entities are gathered in row order, matching the row-major placeholder order."""
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        span = slice(width - n, width) if padding_side == "left" else slice(0, n)
        input_ids[row, span] = torch.tensor(example.input_ids, dtype=torch.long)
        labels[row, span] = torch.tensor(example.labels, dtype=torch.long)
        attention_mask[row, span] = 1
    graphs = [g for e in examples for g in e.molecules]
    sequences = [s for e in examples for s in e.proteins]
    return Batch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        labels=labels,
        molecules=batch_graphs(graphs) if graphs else None,
        proteins=batch_sequences(sequences) if sequences else None,
    )
