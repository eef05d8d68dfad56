"""Near-duplicate search: Morgan-fingerprint Tanimoto for molecules, a k-mer identity estimate (and, on request,
true alignment identity) for proteins. Shared by the leakage check and the identity-cluster split.

Protein identity estimate: if two sequences are a fraction p identical (substitutions spread evenly), a k-mer of
the shorter one survives in the longer one with probability about p^k, so `identity ≈ containment^(1/k)` where
containment = shared distinct k-mers / distinct k-mers of the shorter sequence. With k = 5 a random pair shares
almost nothing (20^5 = 3.2M possible 5-mers), so the estimate is meaningful from ~50% identity up. A fragment
contained in a longer sequence scores 1.0, like identity over the shorter sequence does.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

KMER = 5
MAX_POSTINGS = 5000  # k-mers shared by more sequences than this (low-complexity repeats) are ignored


def kmer_codes(sequence: str, k: int = KMER) -> np.ndarray:
    """Distinct k-mers of an upper-case sequence as int64 codes (5 bits per letter), sorted."""
    letters = np.frombuffer(sequence.encode("ascii", errors="replace"), dtype=np.uint8).astype(np.int64) - 64
    count = len(letters) - k + 1
    if count <= 0:
        return np.empty(0, dtype=np.int64)
    codes = np.zeros(count, dtype=np.int64)
    for offset in range(k):
        codes = (codes << 5) | (letters[offset:offset + count] & 31)
    return np.unique(codes)


class KmerIndex:
    """An inverted index from k-mer to the sequences that contain it, as two sorted numpy arrays.

    Memory: 16 bytes per distinct (k-mer, sequence) pair, e.g. ~100 MB for 13k proteins of ~480 residues."""

    def __init__(self, sequences: Sequence[str], k: int = KMER) -> None:
        self.k = k
        self.sequences = list(sequences)
        per_sequence = [kmer_codes(s, k) for s in self.sequences]
        self.sizes = np.array([len(c) for c in per_sequence], dtype=np.int64)
        codes = np.concatenate(per_sequence) if per_sequence else np.empty(0, dtype=np.int64)
        owners = np.repeat(np.arange(len(per_sequence), dtype=np.int64), self.sizes)
        order = np.argsort(codes, kind="stable")
        self.codes, self.owners = codes[order], owners[order]

    def shared_counts(self, sequence: str) -> tuple[np.ndarray, int]:
        """(distinct k-mers shared with each indexed sequence [n_indexed], distinct k-mers of the query)."""
        query = kmer_codes(sequence, self.k)
        lo = np.searchsorted(self.codes, query, side="left")
        hi = np.searchsorted(self.codes, query, side="right")
        keep = (hi - lo > 0) & (hi - lo <= MAX_POSTINGS)
        lo, lengths = lo[keep], (hi - lo)[keep]
        if lengths.sum() == 0:
            return np.zeros(len(self.sequences), dtype=np.int64), len(query)
        starts = np.repeat(lo - np.cumsum(lengths) + lengths, lengths)  # gather all posting slices at once
        positions = starts + np.arange(lengths.sum())
        return np.bincount(self.owners[positions], minlength=len(self.sequences)), len(query)

    def estimate(self, sequence: str) -> np.ndarray:
        """Estimated identity of `sequence` to every indexed sequence, in [0, 1]; exact matches give 1.0."""
        shared, size = self.shared_counts(sequence)
        shorter = np.maximum(np.minimum(self.sizes, size), 1)
        estimate = (shared / shorter) ** (1.0 / self.k)
        if size == 0:  # shorter than k: only exact equality counts
            estimate = np.array([float(s == sequence) for s in self.sequences])
        return estimate

    def best(self, sequence: str) -> tuple[int, float]:
        """(index, estimated identity) of the most similar indexed sequence; (-1, 0.0) for an empty index."""
        if not self.sequences:
            return -1, 0.0
        estimate = self.estimate(sequence)
        index = int(np.argmax(estimate))
        return index, float(estimate[index])


def alignment_identity(first: str, second: str) -> float:
    """True identity: identical aligned positions / length of the shorter sequence, from a global BLOSUM62
    alignment (gap open -10, extend -0.5) with free end gaps, so that a fragment aligns inside its parent."""
    from Bio import Align
    from Bio.Align import substitution_matrices

    aligner = Align.PairwiseAligner(mode="global", substitution_matrix=substitution_matrices.load("BLOSUM62"),
                                    open_gap_score=-10, extend_gap_score=-0.5)
    aligner.end_gap_score = 0
    counts = aligner.align(first, second)[0].counts()
    return counts.identities / max(1, min(len(first), len(second)))


def morgan_fingerprints(smiles: Sequence[str]) -> list:
    """Morgan (ECFP4-like: radius 2, 2,048 bits) fingerprints of canonical SMILES; None for unparsable ones."""
    from rdkit import Chem, RDLogger
    from rdkit.Chem import rdFingerprintGenerator

    generator = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=2048)
    RDLogger.DisableLog("rdApp.*")
    try:
        mols = [Chem.MolFromSmiles(s) for s in smiles]
    finally:
        RDLogger.EnableLog("rdApp.error")
    return [generator.GetFingerprint(m) if m is not None else None for m in mols]


def max_tanimoto(queries: list, references: list) -> list[tuple[int, float]]:
    """For each query fingerprint: (index of the most similar reference, its Tanimoto); (-1, 0.0) if none."""
    from rdkit import DataStructs

    valid = [i for i, fp in enumerate(references) if fp is not None]
    pool = [references[i] for i in valid]
    results = []
    for fp in queries:
        if fp is None or not pool:
            results.append((-1, 0.0))
            continue
        scores = DataStructs.BulkTanimotoSimilarity(fp, pool)
        top = max(scores)
        results.append((valid[scores.index(top)], float(top)))
    return results
