"""Nearest-neighbour index over known molecules and proteins with their annotations.

Two uses: the nearest-neighbour baselines of the evaluation (copy the answer of the most similar training
entity), and the "evidence" shown beside model answers (the most similar known molecules / proteins).

- Molecules: Morgan fingerprints (radius 2, 2,048 bits; RDKit), Tanimoto similarity with
  `BulkTanimotoSimilarity` against the whole pool (exact, ~1 µs per pair).
- Proteins: a k-mer prefilter (shared unique 3-mers through an inverted index, as a fraction of the larger
  3-mer set) picks `candidates` sequences, then each is aligned as EMBOSS `needle` does by default (global,
  BLOSUM62, gaps -10/-0.5, end gaps free) and ranked by needle's identity: identical columns / alignment
  length (gaps included). Dividing by the shorter length instead would rank short unrelated sequences first.

Build it from QA records (`RetrievalIndex.from_records`), query with `query_molecule` / `query_protein`, and
save/load it as one gzipped file of two JSON lines (fingerprints stored, so loading does not re-run RDKit): the
molecules first, the proteins second. Loading reads only the first line; the proteins (most of the bytes) are
parsed on the first protein query, so a question about a molecule does not pay for them at start-up.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import zlib
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from biomedgpt.constants import MOLECULE, PROTEIN, REPO_MODELS_DIR
from biomedgpt.errors import UserError

logger = logging.getLogger(__name__)

FINGERPRINT_RADIUS = 2
FINGERPRINT_BITS = 2048
KMER = 3  # BLAST's protein word size: short enough that remote homologs still share words
INDEX_FORMAT = 2  # 1: one JSON document (still read); 2: molecules line, then proteins line


@dataclass
class Entry:
    """One known entity with its annotation (the answer of the QA record it came from)."""

    id: str
    kind: str  # "molecule" or "protein"
    entity: str  # SMILES as given, or the normalised sequence
    annotation: str
    question: str = ""
    key: str = ""  # InChIKey (molecules) or the sequence itself (proteins): identity across files


@dataclass
class Neighbor:
    """A query result: the known entity, how similar it is (Tanimoto or identity, in [0, 1]) and what it is."""

    id: str
    similarity: float
    annotation: str
    smiles: str | None = None
    sequence: str | None = None
    question: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def morgan_fingerprint(smiles: str):
    """Morgan (ECFP4-like) bit vector, radius 2, 2,048 bits; raises `InvalidSmilesError` on a bad SMILES."""
    from rdkit.Chem import rdFingerprintGenerator

    from biomedgpt.modalities.molecule import parse_smiles

    generator = rdFingerprintGenerator.GetMorganGenerator(radius=FINGERPRINT_RADIUS, fpSize=FINGERPRINT_BITS)
    return generator.GetFingerprint(parse_smiles(smiles))


def inchikey(smiles: str) -> str:
    """The standard InChIKey ("" for the rare molecule InChI cannot describe); raises `InvalidSmilesError`."""
    from rdkit import Chem, rdBase

    from biomedgpt.modalities.molecule import parse_smiles

    mol = parse_smiles(smiles)
    blocker = rdBase.BlockLogs()  # InChI failures are an empty key here, not console noise
    try:
        return Chem.MolToInchiKey(mol)
    finally:
        del blocker


def clean_sequence(text: str) -> str:
    """Upper-case residues without whitespace or FASTA header; no length cap (unlike the ESM input path)."""
    from biomedgpt.modalities.protein import normalize_sequence

    return normalize_sequence(text, max_residues=10**9)


def _kmer_codes(sequence: str, k: int = KMER) -> np.ndarray:
    """Unique k-mers of a sequence as integers (base-26 codes of the letters)."""
    if len(sequence) < k:
        return np.zeros(0, dtype=np.int64)
    letters = np.frombuffer(sequence.encode("ascii"), dtype=np.uint8).astype(np.int64) - ord("A")
    codes = np.zeros(len(sequence) - k + 1, dtype=np.int64)
    for offset in range(k):
        codes = codes * 26 + letters[offset : len(sequence) - k + 1 + offset]
    return np.unique(codes)


def _aligner():
    from Bio import Align
    from Bio.Align import substitution_matrices

    aligner = Align.PairwiseAligner(mode="global", substitution_matrix=substitution_matrices.load("BLOSUM62"),
                                    open_gap_score=-10.0, extend_gap_score=-0.5)
    aligner.open_end_gap_score = aligner.extend_end_gap_score = 0.0  # needle's default: end gaps are free
    return aligner


# BLOSUM62 has no selenocysteine (U) or pyrrolysine (O): they align as the unknown residue X.
_TO_BLOSUM = str.maketrans("UO", "XX")


def alignment_identity(a: str, b: str, aligner=None) -> float:
    """EMBOSS needle's identity: identical columns of the best global alignment / alignment length, in [0, 1]."""
    if not a or not b:
        return 0.0
    alignment = (aligner or _aligner()).align(a.translate(_TO_BLOSUM), b.translate(_TO_BLOSUM))[0]
    return alignment.counts().identities / alignment.length


class _MoleculeTable:
    def __init__(self, entries: list[Entry], fingerprints: list) -> None:
        self.entries, self.fingerprints = entries, fingerprints

    def query(self, smiles: str, k: int, mask: np.ndarray | None = None) -> list[tuple[int, float]]:
        from rdkit import DataStructs

        fingerprint = morgan_fingerprint(smiles)
        if not self.entries:
            return []
        sims = np.asarray(DataStructs.BulkTanimotoSimilarity(fingerprint, self.fingerprints))
        if mask is not None:
            sims = np.where(mask, sims, -1.0)
        order = np.argsort(-sims, kind="stable")[:k]  # ties: earlier pool entry first
        return [(int(i), float(sims[i])) for i in order if sims[i] >= 0]


class _ProteinTable:
    """Proteins with a k-mer inverted index over their distinct sequences (one protein is indexed once per
    question), built on the first query: loading the shipped index is part of every `ask`'s start-up, and a
    question about a molecule never needs it. `entries` may be given as a function that reads them (from the
    index file), called once on first use for the same reason."""

    def __init__(self, entries: list[Entry] | Callable[[], list[Entry]], candidates: int) -> None:
        self._entries, self.candidates = entries, candidates
        self._postings: dict[int, np.ndarray] | None = None
        self._aligner = None

    @property
    def entries(self) -> list[Entry]:
        if callable(self._entries):
            self._entries = self._entries()
        return self._entries

    def _build(self) -> None:
        sequence_ids: dict[str, int] = {}
        self.entry_sequence = np.array([sequence_ids.setdefault(e.entity, len(sequence_ids)) for e in self.entries],
                                       dtype=np.int64)
        kmers = [_kmer_codes(sequence) for sequence in sequence_ids]
        self.kmer_counts = np.array([len(codes) for codes in kmers], dtype=np.float64)
        # k-mer code -> distinct sequences holding it (ascending), with one sort instead of a loop over k-mers
        codes = np.concatenate(kmers) if kmers else np.zeros(0, dtype=np.int64)
        rows = np.repeat(np.arange(len(kmers), dtype=np.int64), [len(c) for c in kmers])
        order = np.argsort(codes, kind="stable")
        codes, rows = codes[order], rows[order]
        unique, starts = np.unique(codes, return_index=True)
        self._postings = dict(zip(unique.tolist(), np.split(rows, starts[1:]) if len(unique) else []))

    def prefilter(self, sequence: str, n: int, mask: np.ndarray | None = None) -> np.ndarray:
        """Rows of the `n` pool entries (among `mask`, default all) whose sequence shares the largest fraction of
        unique k-mers with `sequence`."""
        if self._postings is None:
            self._build()
        codes = _kmer_codes(sequence)
        hits = [self._postings[c] for c in codes.tolist() if c in self._postings]
        shared = np.bincount(np.concatenate(hits), minlength=len(self.kmer_counts)) if hits else \
            np.zeros(len(self.kmer_counts), dtype=np.int64)
        fraction = (shared / np.maximum(1.0, np.maximum(len(codes), self.kmer_counts)))[self.entry_sequence]
        if mask is not None:
            fraction = np.where(mask, fraction, -1.0)
        order = np.argsort(-fraction, kind="stable")[:n]
        return order[fraction[order] >= 0]

    def query(self, sequence: str, k: int, mask: np.ndarray | None = None) -> list[tuple[int, float]]:
        if not self.entries:
            return []
        self._aligner = self._aligner or _aligner()
        rows = self.prefilter(sequence, max(k, self.candidates), mask)
        scored = [(int(r), alignment_identity(sequence, self.entries[r].entity, self._aligner)) for r in rows]
        scored.sort(key=lambda pair: -pair[1])  # stable: prefilter order breaks ties
        return scored[:k]


class RetrievalIndex:
    """Known molecules and proteins with annotations; query → top-k `Neighbor`s."""

    def __init__(self, molecules: list[Entry], proteins: list[Entry] | Callable[[], list[Entry]],
                 fingerprints: list | None = None, candidates: int = 10) -> None:
        if fingerprints is None:
            fingerprints = [morgan_fingerprint(e.entity) for e in molecules]
        self.candidates = candidates
        self._molecules = _MoleculeTable(molecules, fingerprints)
        self._proteins = _ProteinTable(proteins, candidates)
        self._masks: dict[tuple[str, str], np.ndarray] = {}
        self._keys: dict[str, np.ndarray] = {}

    @property
    def molecules(self) -> list[Entry]:
        return self._molecules.entries

    def read_proteins(self) -> RetrievalIndex:
        """Parse the proteins now if `load` left them for later; for a long-running server, so that a broken index
        file fails at start-up rather than at the first question about a protein."""
        _ = self._proteins.entries
        return self

    @property
    def proteins(self) -> list[Entry]:
        return self._proteins.entries

    def __len__(self) -> int:
        return len(self.molecules) + len(self.proteins)

    # ------------------------------------------------------------------ building
    @classmethod
    def from_records(cls, records: Iterable, candidates: int = 10) -> RetrievalIndex:
        """Index QA records (`biomedgpt.data.records.QARecord`) that carry exactly one molecule or one protein.

        Records with several entities, or an entity RDKit / the sequence check rejects, are skipped (logged
        with a count): a reference pool must never stop an evaluation.
        """
        from rdkit import DataStructs  # noqa: F401  (fail early if RDKit is missing)

        molecules, proteins, fingerprints, skipped = [], [], [], 0
        for record in records:
            try:
                if len(record.molecules) == 1 and not record.proteins:
                    smiles = record.molecules[0]
                    fingerprints.append(morgan_fingerprint(smiles))
                    molecules.append(Entry(record.id, MOLECULE, smiles, record.answer, record.question,
                                           inchikey(smiles)))
                elif len(record.proteins) == 1 and not record.molecules:
                    sequence = clean_sequence(record.proteins[0])
                    proteins.append(Entry(record.id, PROTEIN, sequence, record.answer, record.question, sequence))
                else:
                    skipped += 1
            except UserError as err:
                skipped += 1
                logger.debug("retrieval index: skipping record %s: %s", record.id, err)
        if skipped:
            logger.warning("retrieval index: skipped %d records (not exactly one valid entity)", skipped)
        return cls(molecules, proteins, fingerprints, candidates)

    def without(self, keys: set[str]) -> tuple[RetrievalIndex, int]:
        """A copy without entries whose key (InChIKey / sequence) is in `keys`, and how many were removed.
        Used to drop every pool entity that also occurs in the evaluated set (leakage)."""
        keys = {key for key in keys if key}  # an empty InChIKey identifies nothing
        keep = [i for i, e in enumerate(self.molecules) if e.key not in keys]
        proteins = [e for e in self.proteins if e.key not in keys]
        removed = len(self) - len(keep) - len(proteins)
        index = RetrievalIndex([self.molecules[i] for i in keep], proteins,
                               [self._molecules.fingerprints[i] for i in keep], self.candidates)
        return index, removed

    # ------------------------------------------------------------------ queries
    def has_question(self, kind: str, question: str) -> bool:
        """Whether any indexed molecule / protein entry came from a record with exactly this question."""
        return bool(self._mask(kind, question).any())

    def _mask(self, kind: str, question: str | None, exclude_key: str | None = None) -> np.ndarray | None:
        """Boolean mask [pool size] of the entries asked `question` (None: no restriction) whose key is not
        `exclude_key` (leave-one-out when the query itself is in the pool); None when nothing is restricted."""
        mask = None
        if question is not None:
            if (kind, question) not in self._masks:
                entries = self.molecules if kind == MOLECULE else self.proteins
                self._masks[kind, question] = np.array([e.question == question for e in entries], dtype=bool)
            mask = self._masks[kind, question]
        if exclude_key:
            if kind not in self._keys:
                entries = self.molecules if kind == MOLECULE else self.proteins
                self._keys[kind] = np.array([e.key for e in entries], dtype=object)
            keep = self._keys[kind] != exclude_key
            mask = keep if mask is None else mask & keep
        return mask

    def query_molecule(self, smiles: str, k: int = 5, question: str | None = None,
                       exclude_key: str | None = None) -> list[Neighbor]:
        """Top-k known molecules by Tanimoto similarity (only entries asked `question`, when given; never the
        entries whose InChIKey is `exclude_key`); raises `InvalidSmilesError` on a bad SMILES."""
        mask = self._mask(MOLECULE, question, exclude_key)
        return [self._neighbor(self.molecules[i], s) for i, s in self._molecules.query(smiles, k, mask)]

    def query_protein(self, sequence: str, k: int = 5, question: str | None = None,
                      exclude_key: str | None = None) -> list[Neighbor]:
        """Top-k known proteins by alignment identity after the k-mer prefilter (only entries asked
        `question`, when given; never the entries whose sequence is `exclude_key`); raises
        `InvalidSequenceError` on a bad sequence."""
        mask = self._mask(PROTEIN, question, exclude_key)
        hits = self._proteins.query(clean_sequence(sequence), k, mask)
        return [self._neighbor(self.proteins[i], s) for i, s in hits]

    @staticmethod
    def _neighbor(entry: Entry, similarity: float) -> Neighbor:
        is_molecule = entry.kind == MOLECULE
        return Neighbor(entry.id, similarity, entry.annotation, smiles=entry.entity if is_molecule else None,
                        sequence=None if is_molecule else entry.entity, question=entry.question)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> None:
        """Write the index (atomically) as gzipped JSON lines: the header with the molecules and their Morgan
        fingerprints (base64), then the proteins."""
        from biomedgpt.io import atomic_path

        head = {
            "format": INDEX_FORMAT,
            "fingerprint": {"radius": FINGERPRINT_RADIUS, "bits": FINGERPRINT_BITS},
            "candidates": self.candidates,
            "molecules": [asdict(e) for e in self.molecules],
            "fingerprints": [fp.ToBase64() for fp in self._molecules.fingerprints],
        }
        with atomic_path(path) as tmp, gzip.open(tmp, "wt", encoding="utf-8") as handle:
            handle.write(json.dumps(head) + "\n")
            handle.write(json.dumps({"proteins": [asdict(e) for e in self.proteins]}) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> RetrievalIndex:
        """Read an index file. The file's compressed bytes are read once; with format 2 the proteins are parsed
        from them on first use (see the module), so a file changed later never mixes with this index."""
        from rdkit import DataStructs

        path = Path(path)
        try:
            raw = path.read_bytes()
        except OSError as err:
            raise UserError(f"{path}: cannot read the retrieval index ({err})") from None
        head = _index_line(path, raw, 0)
        if head.get("format") not in (1, INDEX_FORMAT) or head.get("fingerprint", {}).get("bits") != FINGERPRINT_BITS:
            raise UserError(f"{path}: unsupported retrieval index format")
        fingerprints = []
        for text in head["fingerprints"]:
            fp = DataStructs.ExplicitBitVect(FINGERPRINT_BITS)
            fp.FromBase64(text)
            fingerprints.append(fp)
        if head["format"] == 1:  # one document: the proteins are already parsed
            if "proteins" not in head:
                raise UserError(f"{path}: not a retrieval index (no proteins)")
            proteins: list[Entry] | Callable[[], list[Entry]] = [Entry(**e) for e in head["proteins"]]
        else:
            def proteins() -> list[Entry]:
                return [Entry(**e) for e in _index_line(path, raw, 1)["proteins"]]

        return cls([Entry(**e) for e in head["molecules"]], proteins, fingerprints, head.get("candidates", 10))


def _index_line(path: Path, raw: bytes, line: int) -> dict:
    """JSON line `line` (0-based) of a gzipped index file's bytes `raw` (format 1 files hold a single line)."""
    try:
        with gzip.open(io.BytesIO(raw), "rt", encoding="utf-8") as handle:
            for _ in range(line):
                handle.readline()
            data = json.loads(handle.readline())
    except (OSError, EOFError, zlib.error, ValueError) as err:  # ValueError: bad JSON or UTF-8
        raise UserError(f"{path}: not a retrieval index ({err})") from None
    expected = ("molecules", "fingerprints") if line == 0 else ("proteins",)
    if not isinstance(data, dict) or any(key not in data for key in expected):
        raise UserError(f"{path}: not a retrieval index (line {line + 1} lacks {' / '.join(expected)})")
    return data


def load_index(path: str | Path) -> RetrievalIndex:
    """Load an index written by `RetrievalIndex.save` (raises `UserError` when the file is missing or not one)."""
    if not Path(path).is_file():
        raise UserError(f"retrieval index not found: {path}")
    return RetrievalIndex.load(path)


# The evidence index shipped with the repository (training-pool records whose license allows redistribution).
SHIPPED_INDEX = REPO_MODELS_DIR / "evidence" / "index.json.gz"


def model_index_path(model_name_or_path: str | Path | None) -> Path | None:
    """The evidence index for a model: the one its folder ships (`index.json.gz`), else the repository's
    `models/evidence/index.json.gz` when present, else None. Evidence is a nearest-neighbour lookup over known
    entities, independent of the model's weights, so any model (a preset too) can show it."""
    from biomedgpt.constants import EVIDENCE_INDEX_NAME

    if model_name_or_path is not None:
        candidate = Path(model_name_or_path).expanduser() / EVIDENCE_INDEX_NAME
        if candidate.is_file():
            return candidate
    return SHIPPED_INDEX if SHIPPED_INDEX.is_file() else None


def find_evidence(index: RetrievalIndex, messages, k: int, leave_one_out: bool = False) -> list[dict]:
    """`[{"type": "molecule", "query": SMILES, "neighbors": [{id, similarity, annotation, smiles, ...}]}, ...]`
    for each distinct entity of the user messages (objects with `role`, `smiles`, `proteins`), in order.

    `leave_one_out`: never return the entity itself (same InChIKey / sequence), for training records that are
    in the pool, so that they see the evidence a new molecule or protein would see.

    When the pool holds annotations that answer exactly the message's question (a protein is indexed once per
    question: function, component, location), only those are searched, as the nearest-neighbour baseline does:
    a location question then sees its neighbours' locations, not their GO terms."""
    evidence, seen = [], set()
    for message in messages:
        if message.role != "user":
            continue
        question = message.text.strip()
        queries = [(MOLECULE, s) for s in message.smiles] + [(PROTEIN, p) for p in message.proteins]
        for kind, query in queries:
            if (kind, query) in seen:
                continue
            seen.add((kind, query))
            same = question if question and index.has_question(kind, question) else None
            if kind == MOLECULE:
                found = index.query_molecule(query, k, same, exclude_key=inchikey(query) if leave_one_out else None)
            else:
                found = index.query_protein(query, k, same,
                                            exclude_key=clean_sequence(query) if leave_one_out else None)
            evidence.append({"type": kind, "query": query, "neighbors": [n.to_dict() for n in found]})
    return evidence


# ---------------------------------------------------------------------- retrieval-augmented prompts
# One format for training data, evaluation, `ask` and `serve`: a model trained on these prompts sees the same
# text at inference. Molecule evidence is the neighbours' descriptions; protein evidence also says which question
# each annotation answers, because one protein is indexed once per question (function, component, location).
EVIDENCE_HEADERS = {
    MOLECULE: "Known molecules most similar to this one (Tanimoto similarity) and their descriptions:",
    PROTEIN: "Known proteins most similar to this one (sequence identity) and their annotations:",
}


def evidence_block(kind: str, neighbors: list[dict]) -> str:
    """The evidence for one entity as prompt text (neighbours as `find_evidence` returns them)."""
    lines = [EVIDENCE_HEADERS[kind]]
    for rank, n in enumerate(neighbors, 1):
        text = n["annotation"] if kind == MOLECULE else f"{n['question']} {n['annotation']}".strip()
        lines.append(f"{rank}. ({n['similarity']:.2f}) {text}")
    return "\n".join(lines)


def with_evidence(text: str, evidence: list[dict]) -> str:
    """`text` (a user question) preceded by the evidence blocks of its entities: the retrieval-augmented prompt."""
    blocks = [evidence_block(e["type"], e["neighbors"]) for e in evidence if e["neighbors"]]
    return "\n\n".join([*blocks, text]) if blocks else text

