"""Splits that keep similar things together, so that a test set measures generalisation, not memory.

- scaffold (molecules): records grouped by Bemis–Murcko scaffold; the largest groups fill train first, then
  valid, then test (the MoleculeNet / DeepChem convention), so test holds rarer scaffolds.
- identity (proteins): greedy clusters of sequences whose k-mer identity estimate to the cluster's
  representative is >= a threshold, assigned whole (largest first, ties shuffled with a seed), so that no
  test protein has a close relative (of the same cluster) in train.
"""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path

from biomedgpt.data.records import QARecord, read_qa, write_jsonl
from biomedgpt.errors import UserError

SPLIT_NAMES = ("train", "valid", "test")


def murcko_scaffold(smiles: str) -> str:
    """Canonical Bemis–Murcko scaffold SMILES ('' for acyclic molecules, which then share one group)."""
    from rdkit.Chem.Scaffolds import MurckoScaffold

    from biomedgpt.modalities.molecule import parse_smiles

    return MurckoScaffold.MurckoScaffoldSmiles(mol=parse_smiles(smiles), includeChirality=False)


def _assign(groups: list[list[int]], total: int, fractions: tuple[float, ...]) -> list[list[int]]:
    """Fill the splits in order with whole groups, moving on once a split has reached its share."""
    splits: list[list[int]] = [[] for _ in fractions]
    targets = [fraction * total for fraction in fractions]
    current = 0
    for group in groups:
        while current < len(splits) - 1 and len(splits[current]) + len(group) > targets[current] and splits[current]:
            current += 1
        splits[current].extend(group)
    return splits


def scaffold_groups(records: list[QARecord]) -> list[list[int]]:
    groups: dict[str, list[int]] = defaultdict(list)
    for index, record in enumerate(records):
        if not record.molecules:
            raise UserError(f"record {record.id!r} has no molecule: a scaffold split needs one per record")
        groups[murcko_scaffold(record.molecules[0])].append(index)
    return sorted(groups.values(), key=lambda g: (-len(g), g[0]))


def identity_groups(records: list[QARecord], min_identity: float, seed: int) -> list[list[int]]:
    """Greedy (CD-HIT style) clusters: longest sequence first, each joins the most similar existing
    representative with estimated identity >= min_identity or becomes a representative itself. Unlike single
    linkage this cannot chain distant proteins through shared domains into one giant cluster. Clusters are
    ordered largest first (ties shuffled with `seed`), so that big families land in train."""
    import numpy as np

    from biomedgpt.data.similarity import KmerIndex

    sequences = []
    for record in records:
        if not record.proteins:
            raise UserError(f"record {record.id!r} has no protein: an identity split needs one per record")
        sequences.append(record.proteins[0])
    distinct = sorted(set(sequences), key=lambda s: (-len(s), s))
    index = KmerIndex(distinct)
    is_representative = np.zeros(len(distinct), dtype=bool)
    cluster_of = np.empty(len(distinct), dtype=np.int64)
    for i, sequence in enumerate(distinct):
        estimate = np.where(is_representative, index.estimate(sequence), -1.0)
        best = int(np.argmax(estimate))
        if estimate[best] >= min_identity:
            cluster_of[i] = cluster_of[best]
        else:
            is_representative[i], cluster_of[i] = True, i
    position = {sequence: i for i, sequence in enumerate(distinct)}
    groups: dict[int, list[int]] = defaultdict(list)
    for record_index, sequence in enumerate(sequences):
        groups[int(cluster_of[position[sequence]])].append(record_index)
    ordered = sorted(groups.values(), key=lambda g: g[0])
    random.Random(seed).shuffle(ordered)
    return sorted(ordered, key=len, reverse=True)  # stable: equal sizes keep their shuffled order


def split_file(path: str | Path, output_dir: str | Path, by: str, fractions: tuple[float, ...] = (0.8, 0.1, 0.1),
               min_identity: float = 0.5, seed: int = 0) -> dict[str, int]:
    """Split a QA JSONL into output_dir/{train,valid,test}.jsonl; returns the record count of each."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise UserError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    records = list(read_qa(path))
    if by == "scaffold":
        groups = scaffold_groups(records)
    elif by == "identity":
        groups = identity_groups(records, min_identity, seed)
    else:
        raise UserError(f"unknown split {by!r}; choose scaffold or identity")
    counts = {}
    for name, indices in zip(SPLIT_NAMES, _assign(groups, len(records), fractions)):
        counts[name] = write_jsonl(Path(output_dir) / f"{name}.jsonl", (records[i] for i in sorted(indices)))
    return counts
