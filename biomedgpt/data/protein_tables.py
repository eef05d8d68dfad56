"""Protein QA records from the tabular sets: FAPM GO-name tables and InstructProtein GO / DeepLoc TSVs.

- FAPM (`*_exp_prompt_{mf,bp,cc}_new.csv`, pipe-separated `name|protein|function|GO_label|id|prompt`): one
  Swiss-Prot protein and the names of its experimentally supported GO terms for one aspect.
- InstructProtein GO test sets (`test_{mf,bp,cc}_with_names.tsv`: `idx, sequence, go_ids, go_names, …`).
- DeepLoc 1.0 (`deeploc_{test,valid}.tsv`: `idx, sequence, label_id, label_name`), 10 location classes; the
  question lists the classes so that a generative model can be scored by exact match (accuracy).

Rows repeating a (task, sequence) pair already written in the same build are skipped as duplicates.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

from biomedgpt.data.records import QARecord
from biomedgpt.data.streaming import Line, Rejects, read_lines
from biomedgpt.errors import InvalidSequenceError, UserError

TABLE_FORMATS = ("fapm", "go-tsv", "deeploc")
GO_QUESTIONS = {
    "mf": "What molecular functions does this protein have?",
    "bp": "Which biological processes is this protein involved in?",
    "cc": "In which cellular components is this protein located?",
}
# InstructProtein's label_dict for DeepLoc 1.0 (benchmarks/evaluations/subcellular_localization.py).
DEEPLOC_CLASSES = ("plasma membrane", "cytoplasm", "endoplasmic reticulum", "golgi", "vacuole", "mitochondrion",
                   "nucleus", "peroxisome", "chloroplast", "extracellular")
LOCATION_QUESTION = ("Where in the cell is this protein located? Answer with one of: "
                     + ", ".join(DEEPLOC_CLASSES) + ".")


def detect_format(path: str | Path) -> str:
    """Guess an input's format from its first non-empty line: uniprot | fapm | go-tsv | deeploc."""
    for line in read_lines(path):
        if not line.text.strip() and line.error is None:
            continue
        text = line.text
        if text.startswith("ID   "):
            return "uniprot"
        header = [h.strip().lower() for h in re.split(r"[|\t]", text)]
        if header[:3] == ["name", "protein", "function"]:
            return "fapm"
        if "sequence" in header and "go_names" in header:
            return "go-tsv"
        if "sequence" in header and "label_name" in header:
            return "deeploc"
        break
    else:
        return "uniprot"  # an empty file: no entries in any format, so read it as an (empty) flat file
    raise UserError(f"{path}: cannot tell the format (expected a UniProt flat file, a FAPM table, an "
                    f"InstructProtein GO TSV or a DeepLoc TSV); give it with --format")


def guess_aspect(path: Path, aspect: str | None) -> str:
    if aspect:
        if aspect not in GO_QUESTIONS:
            raise UserError(f"unknown GO aspect {aspect!r}; choose mf, bp or cc")
        return aspect
    found = re.findall(r"(?:^|[_.-])(mf|bp|cc)(?=[_.-])", path.name.lower())
    if not found:
        raise UserError(f"{path}: cannot tell the GO aspect from the file name; give --aspect mf|bp|cc")
    return found[0]


def _columns(path: Path, kind: str, header: list[str]) -> dict[str, int]:
    lowered = [h.strip().lower() for h in header]
    wanted = {"fapm": ("name", "protein", "function", "go_label", "prompt"),
              "go-tsv": ("idx", "sequence", "go_ids", "go_names"),
              "deeploc": ("idx", "sequence", "label_id", "label_name")}[kind]
    missing = [w for w in wanted if w not in lowered]
    if missing:
        raise UserError(f"{path}: the {kind} header lacks column(s) {missing} (header: {header})")
    return {w: lowered.index(w) for w in wanted}


def _row_record(kind: str, fields: list[str], col: dict[str, int], source: str, aspect: str | None,
                sequence: str) -> QARecord:
    if kind == "fapm":
        accession = fields[col["name"]].strip()
        return QARecord(id=f"{source}:{accession}:go_{aspect}", source=source, proteins=[sequence],
                        question=GO_QUESTIONS[aspect], answer=fields[col["function"]].strip(),
                        metadata={"accession": accession, "task": f"go_{aspect}",
                                  "go_ids": [g.strip() for g in fields[col["go_label"]].split(";") if g.strip()],
                                  "genus": fields[col["prompt"]].strip()})
    row_id = fields[col["idx"]].strip()
    if kind == "go-tsv":
        return QARecord(id=f"{source}:{row_id}", source=source, proteins=[sequence],
                        question=GO_QUESTIONS[aspect], answer=fields[col["go_names"]].strip(),
                        metadata={"task": f"go_{aspect}",
                                  "go_ids": [g.strip() for g in fields[col["go_ids"]].split(";") if g.strip()]})
    return QARecord(id=f"{source}:{row_id}", source=source, proteins=[sequence], question=LOCATION_QUESTION,
                    answer=fields[col["label_name"]].strip(),
                    metadata={"task": "location_class", "label_id": int(fields[col["label_id"]])})


def _check_row(kind: str, fields: list[str], col: dict[str, int]) -> str | None:
    """Why a row cannot be used, or None."""
    if len(fields) <= max(col.values()):
        return f"expected at least {max(col.values()) + 1} fields, got {len(fields)}"
    answer = fields[col["function" if kind == "fapm" else "go_names" if kind == "go-tsv" else "label_name"]]
    if not answer.strip():
        return "empty answer (no GO names / label)"
    if kind == "deeploc":
        label_id = fields[col["label_id"]].strip()
        if not label_id.isdigit() or int(label_id) >= len(DEEPLOC_CLASSES):
            return f"label_id {label_id!r} is not a DeepLoc class index 0-{len(DEEPLOC_CLASSES) - 1}"
        if DEEPLOC_CLASSES[int(label_id)] != fields[col["label_name"]].strip():
            return f"label_name {fields[col['label_name']]!r} does not match label_id {label_id}"
    return None


def table_records(path: str | Path, kind: str, rejects: Rejects, source: str, aspect: str | None = None,
                  exclude: frozenset[str] = frozenset(), seen: set[bytes] | None = None,
                  bar=None) -> Iterator[QARecord]:
    """Stream QA records from one table; every data row counts once (written, or skipped with a reason)."""
    from biomedgpt.modalities.protein import normalize_sequence

    if kind not in TABLE_FORMATS:
        raise UserError(f"unknown protein table format {kind!r}; choose from {', '.join(TABLE_FORMATS)}")
    path = Path(path)
    aspect = guess_aspect(path, aspect) if kind != "deeploc" else None
    delimiter = "|" if kind == "fapm" else "\t"
    seen = set() if seen is None else seen
    col: dict[str, int] | None = None
    summary = rejects.summary
    for line in read_lines(path):
        if not line.text.strip() and line.error is None:
            continue
        if col is None and line.error is None:
            col = _columns(path, kind, line.text.split(delimiter))
            continue
        summary.read += 1
        if bar is not None:
            bar.update(1)
        record = _table_row(line, kind, delimiter, col, path, rejects, source, aspect, exclude, seen,
                            normalize_sequence)
        if record is not None:
            summary.written += 1
            summary.records += 1
            yield record


def _table_row(line: Line, kind, delimiter, col, path, rejects: Rejects, source, aspect, exclude, seen,
               normalize_sequence) -> QARecord | None:
    where = (str(path), line.number)
    if line.error is not None or col is None:
        rejects.reject("unreadable line", where, line.text, detail=line.error or "no header line")
        return None
    fields = line.text.split(delimiter)
    problem = _check_row(kind, fields, col)
    if problem:
        rejects.reject("malformed row", where, line.text, detail=problem)
        return None
    try:
        sequence = normalize_sequence(fields[col["protein" if kind == "fapm" else "sequence"]],
                                      max_residues=1 << 40)
    except InvalidSequenceError as err:
        rejects.reject("invalid sequence", where, line.text, detail=str(err))
        return None
    if sequence in exclude:
        rejects.reject("sequence in an excluded set", where, line.text[:200])
        return None
    record = _row_record(kind, fields, col, source, aspect, sequence)
    key = hashlib.blake2b(f"{record.metadata['task']}\n{sequence}".encode(), digest_size=16).digest()
    if key in seen:
        rejects.reject("duplicate (same task and sequence)", where, line.text[:200])
        return None
    seen.add(key)
    return record
