"""Train/test leakage: exact and near duplicates between two sets of files, and a filtered TRAIN.

- molecules: same InChIKey (exact), Morgan-fingerprint Tanimoto >= a threshold (near). PubChem CIDs are not a
  safe key: 45 PCdes rows share a CID with ChEBI-20 test, but 274 share an InChIKey.
- proteins: same sequence (exact), k-mer identity estimate >= a threshold (near), optionally confirmed by a
  true alignment (`align=True`).
- multiple-choice items: same question text after normalisation (case, punctuation, spacing).

Inputs may be our JSONL files (QA or multiple-choice) or raw tables (ChEBI-20/PCdes TSV, FAPM, GO, DeepLoc).
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from biomedgpt.data.records import MCQRecord, read_mcq, read_qa, write_jsonl
from biomedgpt.data.streaming import BuildSummary, Rejects, read_lines
from biomedgpt.errors import InvalidSequenceError, InvalidSmilesError, UserError

DEFAULT_TANIMOTO = 0.9
DEFAULT_IDENTITY = 0.9
HISTOGRAM = (0.5, 0.7, 0.8, 0.9, 0.95)


@dataclass
class Item:
    """One record of a checked file: its position, id, and the keys that leakage is judged on."""

    index: int
    id: str
    molecules: list[tuple[str, str]] = field(default_factory=list)  # (canonical SMILES, InChIKey)
    proteins: list[str] = field(default_factory=list)
    question: str | None = None  # normalised, for multiple-choice items


def normalise_question(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower()
    return " ".join(re.sub(r"[^\w]+", " ", text).split())


def file_kind(path: str | Path) -> str:
    """qa | mcq (our JSONL), or a raw table kind: molecule-table | uniprot | fapm | go-tsv | deeploc."""
    from biomedgpt.data.protein_tables import detect_format

    for line in read_lines(path):
        if not line.text.strip() and line.error is None:
            continue
        if line.text.lstrip().startswith("{"):
            try:
                data = json.loads(line.text)
            except json.JSONDecodeError:
                raise UserError(f"{path}:{line.number}: invalid JSON") from None
            return "mcq" if isinstance(data, dict) and "options" in data else "qa"
        try:
            return detect_format(path)
        except UserError:
            return "molecule-table"
    raise UserError(f"{path}: the file is empty")


def _table_items(path: Path, kind: str) -> list[Item]:
    """Items of a raw table, read through the builders' own readers (bad rows are skipped, as they would be)."""
    from biomedgpt.data.molecule_qa import read_molecule_table
    from biomedgpt.data.protein_qa import _NeverSeen, flat_file_records
    from biomedgpt.data.protein_tables import table_records

    rejects = Rejects(BuildSummary())
    items: list[Item] = []
    if kind == "molecule-table":
        for row in read_molecule_table(path, rejects):
            item = Item(len(items), row.id)
            _add_molecule(item, row.smiles)
            items.append(item)
        return items
    records = (flat_file_records(path, rejects) if kind == "uniprot"
               else table_records(path, kind, rejects, path.name.split(".")[0], seen=_NeverSeen()))
    seen_ids: dict[str, Item] = {}
    for record in records:  # a flat-file entry gives several records with one sequence: one item per entry
        key = record.id.rsplit(":", 1)[0] if kind == "uniprot" else record.id
        if key not in seen_ids:
            seen_ids[key] = Item(len(items), key, proteins=list(record.proteins))
            items.append(seen_ids[key])
    return items


def _add_molecule(item: Item, smiles: str) -> None:
    from biomedgpt.data.molecule_qa import molecule_identity

    try:
        item.molecules.append(molecule_identity(smiles))
    except InvalidSmilesError:
        pass  # an unparsable molecule cannot be matched; the builders drop it anyway


def load_items(path: str | Path) -> list[Item]:
    """Read every record of a file into leakage items (our JSONL files or raw tables)."""
    from biomedgpt.modalities.protein import normalize_sequence

    path = Path(path)
    kind = file_kind(path)
    if kind not in ("qa", "mcq"):
        return _table_items(path, kind)
    items = []
    for index, record in enumerate(read_qa(path) if kind == "qa" else read_mcq(path)):
        item = Item(index, record.id)
        if isinstance(record, MCQRecord):
            item.question = normalise_question(record.question)
        else:
            for smiles in record.molecules:
                _add_molecule(item, smiles)
            for sequence in record.proteins:
                try:
                    item.proteins.append(normalize_sequence(sequence, max_residues=1 << 40))
                except InvalidSequenceError:
                    pass
        items.append(item)
    return items


def load_molecule_keys(path: str | Path) -> set[str]:
    """InChIKeys of every molecule in a file (a molecule table or a QA JSONL)."""
    return {key for item in load_items(path) for _, key in item.molecules}


def load_protein_sequences(path: str | Path) -> set[str]:
    """Every protein sequence in a file (a protein table, a flat file or a QA JSONL)."""
    return {sequence for item in load_items(path) for sequence in item.proteins}


@dataclass
class LeakageReport:
    """Per modality: how many TRAIN items have an exact / a near duplicate in TEST, with examples."""

    train_items: int = 0
    test_items: int = 0
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)
    leaking: set[int] = field(default_factory=set)  # TRAIN indices with an exact duplicate
    near: set[int] = field(default_factory=set)  # TRAIN indices with only a near duplicate

    def as_dict(self) -> dict[str, Any]:
        return {"train_items": self.train_items, "test_items": self.test_items,
                "train_items_with_exact_duplicate": len(self.leaking),
                "train_items_with_near_duplicate_only": len(self.near), "sections": self.sections}

    def format(self) -> str:
        lines = [f"TRAIN {self.train_items:,} items, TEST {self.test_items:,} items: {len(self.leaking):,} TRAIN items "
                 f"have an exact duplicate in TEST, {len(self.near):,} more a near duplicate"]
        for name, section in self.sections.items():
            lines.append(f"  {name}: exact {section['exact']:,} (by {section['exact_key']}), near {section['near']:,} "
                         f"({section['near_rule']})")
            if section.get("histogram"):
                lines.append("    TRAIN items by best similarity to TEST: " + ", ".join(
                    f">={k}: {v:,}" for k, v in section["histogram"].items()))
            examples = section.get("examples", [])
            shown = [e for e in examples if " = " in e][:3] + [e for e in examples if " = " not in e][:3]
            lines += [f"    e.g. {example}" for example in shown]
        return "\n".join(lines)


def _histogram(best: list[float]) -> dict[str, int]:
    return {f"{threshold:g}": sum(score >= threshold for score in best) for threshold in HISTOGRAM}


def _check_molecules(train: list[Item], test: list[Item], tanimoto: float, report: LeakageReport) -> None:
    from biomedgpt.data.similarity import max_tanimoto, morgan_fingerprints

    test_keys = {key: item.id for item in test for _, key in item.molecules}
    owners = [(item, smiles, key) for item in train for smiles, key in item.molecules]
    exact_items = {item.index for item, _, key in owners if key in test_keys}
    test_smiles = [smiles for item in test for smiles, _ in item.molecules]
    test_ids = [item.id for item in test for _ in item.molecules]
    best = max_tanimoto(morgan_fingerprints([s for _, s, _ in owners]), morgan_fingerprints(test_smiles))
    near_items, exact_examples, near_examples = set(), [], []
    for (item, _, key), (where, score) in zip(owners, best):
        if key in test_keys:
            exact_examples.append(f"{item.id} = {test_keys[key]} (InChIKey {key})")
        elif score >= tanimoto and item.index not in exact_items:
            near_items.add(item.index)
            near_examples.append(f"{item.id} ~ {test_ids[where]} (Tanimoto {score:.2f})")
    examples = exact_examples[:10] + near_examples[:10]
    report.leaking |= exact_items
    report.near |= near_items - report.leaking
    report.sections["molecules"] = {
        "exact": len(exact_items), "exact_key": "InChIKey", "near": len(near_items),
        "near_rule": f"Morgan r=2 2048-bit Tanimoto >= {tanimoto:g}", "examples": examples,
        "histogram": _histogram([score for _, score in best]),
        "train_molecules": len(owners), "test_molecules": len(test_smiles),
    }


def _check_proteins(train: list[Item], test: list[Item], min_identity: float, align: bool,
                    report: LeakageReport) -> None:
    from biomedgpt.data.similarity import KmerIndex, alignment_identity

    test_sequences = sorted({s for item in test for s in item.proteins})
    index = KmerIndex(test_sequences)
    exact_set = set(test_sequences)
    exact_items, near_items, best_scores, examples = set(), set(), [], []
    for item in train:
        for sequence in item.proteins:
            if sequence in exact_set:
                exact_items.add(item.index)
                best_scores.append(1.0)
                continue
            where, score = index.best(sequence)
            if align and score >= min_identity - 0.1:  # confirm (or reject) the estimate with an alignment
                score = alignment_identity(sequence, test_sequences[where])
            best_scores.append(score)
            if score >= min_identity:
                near_items.add(item.index)
                if len(examples) < 20:
                    examples.append(f"{item.id}: identity {score:.2f} to a TEST sequence of "
                                    f"{len(test_sequences[where])} residues")
    report.leaking |= exact_items
    report.near |= near_items - report.leaking
    rule = "alignment identity" if align else f"{index.k}-mer identity estimate"
    report.sections["proteins"] = {
        "exact": len(exact_items), "exact_key": "sequence", "near": len(near_items - exact_items),
        "near_rule": f"{rule} >= {min_identity:g}", "examples": examples,
        "histogram": _histogram(best_scores), "test_sequences": len(test_sequences),
    }


def _check_questions(train: list[Item], test: list[Item], report: LeakageReport) -> None:
    test_questions = {item.question: item.id for item in test if item.question}
    exact = {item.index for item in train if item.question and item.question in test_questions}
    report.leaking |= exact
    report.sections["questions"] = {
        "exact": len(exact), "exact_key": "normalised question text", "near": 0, "near_rule": "not checked",
        "examples": [f"{train[i].id} = {test_questions[train[i].question]}" for i in sorted(exact)[:20]],
    }


def check_leakage(train: list[Item], test: list[Item], tanimoto: float = DEFAULT_TANIMOTO,
                  min_identity: float = DEFAULT_IDENTITY, align: bool = False) -> LeakageReport:
    """Compare TRAIN items with TEST items on every key both sides have. The report's indices are positions in
    `train` (items are re-numbered, so lists loaded from several files can be concatenated)."""
    train = [replace(item, index=position) for position, item in enumerate(train)]
    report = LeakageReport(train_items=len(train), test_items=len(test))
    if any(i.molecules for i in train) and any(i.molecules for i in test):
        _check_molecules(train, test, tanimoto, report)
    if any(i.proteins for i in train) and any(i.proteins for i in test):
        _check_proteins(train, test, min_identity, align, report)
    if any(i.question for i in train) and any(i.question for i in test):
        _check_questions(train, test, report)
    if not report.sections:
        raise UserError("TRAIN and TEST share no kind of content (molecules, proteins or questions) to compare")
    return report


def write_filtered(train_path: str | Path, output: str | Path, drop: set[int]) -> Counter:
    """Write TRAIN (a QA or multiple-choice JSONL) without the records at the `drop` indices."""
    kind = file_kind(train_path)
    if kind not in ("qa", "mcq"):
        raise UserError(f"{train_path}: a filtered copy can be written only for our JSONL files; build it first "
                        f"with `biomedgpt data molecule-qa/protein-qa/mcq`")
    reader = read_qa if kind == "qa" else read_mcq
    counts: Counter = Counter()

    def kept() -> Any:
        for index, record in enumerate(reader(train_path)):
            counts["dropped" if index in drop else "kept"] += 1
            if index not in drop:
                yield record

    write_jsonl(output, kept())
    return counts

