"""The `evidence` field: for every molecule and protein in a conversation, the most similar known entities of
a `biomedgpt.retrieval.RetrievalIndex` with their annotations, so a reader can check an answer against them."""

from __future__ import annotations

from pathlib import Path

from biomedgpt.inference import Message


def load_index(path: str | Path):
    """Load an index written by `RetrievalIndex.save` (raises `UserError` when the file is not one)."""
    from biomedgpt.errors import UserError
    from biomedgpt.retrieval import RetrievalIndex

    if not Path(path).is_file():
        raise UserError(f"retrieval index not found: {path}")
    return RetrievalIndex.load(path)


def find_evidence(index, messages: list[Message], k: int) -> list[dict]:
    """`[{"type": "molecule", "query": SMILES, "neighbors": [{id, similarity, annotation, smiles, ...}]}, ...]`
    for each distinct entity of the user messages, in order of appearance."""
    evidence, seen = [], set()
    for message in messages:
        if message.role != "user":
            continue
        queries = [("molecule", s) for s in message.smiles] + [("protein", p) for p in message.proteins]
        for kind, query in queries:
            if (kind, query) in seen:
                continue
            seen.add((kind, query))
            found = index.query_molecule(query, k) if kind == "molecule" else index.query_protein(query, k)
            evidence.append({"type": kind, "query": query, "neighbors": [n.to_dict() for n in found]})
    return evidence
