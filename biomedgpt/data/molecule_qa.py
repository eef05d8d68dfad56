"""PubChemQA-style molecule QA records from molecule–description tables (ChEBI-20, PCdes, any SMILES TSV/CSV).

Each input row (an id, a SMILES, a free-text description) becomes one QA record: the molecule attached, a fixed
"describe this molecule" question, the description as the answer. SMILES are canonicalised with RDKit; rows that
RDKit rejects are skipped with its reason. Molecules are identified by InChIKey (not by PubChem CID, which misses
most duplicates: 45 PCdes rows share a CID with ChEBI-20 test but 274 share an InChIKey), so that duplicates within
a build and molecules of an excluded (test) set are removed.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from biomedgpt.data.records import QARecord, write_jsonl
from biomedgpt.data.streaming import BuildSummary, Line, Rejects, progress, read_lines
from biomedgpt.errors import InvalidSmilesError, UserError

DEFAULT_QUESTION = "Please describe this molecule."
SMILES_COLUMNS = ("smiles", "canonical_smiles", "isomeric_smiles")
TEXT_COLUMNS = ("description", "text", "caption", "answer")
ID_COLUMNS = ("cid", "id", "chebi_id", "idx")


@dataclass
class MoleculeRow:
    """One molecule–description row of an input table, with where it came from (for errors and rejects)."""

    id: str
    smiles: str
    description: str
    file: str
    line: int


@dataclass
class Columns:
    """Positions of the id / SMILES / description columns, found from the header or given by the user."""

    smiles: int
    text: int
    id: int | None


def _delimiter(path: Path, fmt: str) -> str:
    if fmt == "auto":
        fmt = "csv" if path.name.lower().removesuffix(".gz").endswith(".csv") else "tsv"
    if fmt not in ("tsv", "csv"):
        raise UserError(f"unknown molecule table format {fmt!r} (use tsv, csv or auto)")
    return "," if fmt == "csv" else "\t"


def _split(text: str, delimiter: str) -> list[str]:
    return next(csv.reader([text], delimiter=delimiter)) if delimiter == "," else text.split("\t")


def _find(header: list[str], wanted: str | None, candidates: tuple[str, ...], path: Path) -> int | None:
    lowered = [h.strip().lower() for h in header]
    if wanted:
        if wanted.lower() not in lowered:
            raise UserError(f"{path}: no column named {wanted!r} (columns: {', '.join(header)})")
        return lowered.index(wanted.lower())
    return next((lowered.index(c) for c in candidates if c in lowered), None)


def _columns(first: list[str], path: Path, smiles_column: str | None, text_column: str | None,
             id_column: str | None) -> tuple[Columns, bool]:
    """Columns from the header line; a header-less 3-column file is read as ChEBI-20 (id, SMILES, description).
    Returns the columns and whether the first line was a header."""
    smiles = _find(first, smiles_column, SMILES_COLUMNS, path)
    text = _find(first, text_column, TEXT_COLUMNS, path)
    if smiles is not None and text is not None:
        return Columns(smiles, text, _find(first, id_column, ID_COLUMNS, path)), True
    if len(first) == 3 and not (smiles_column or text_column):
        return Columns(smiles=1, text=2, id=0), False
    raise UserError(f"{path}: cannot find the SMILES and description columns in the header "
                    f"{first!r}; name them with --smiles-column and --text-column")


def read_molecule_table(path: str | Path, rejects: Rejects, fmt: str = "auto", smiles_column: str | None = None,
                        text_column: str | None = None, id_column: str | None = None) -> Iterator[MoleculeRow]:
    """Stream the rows of a molecule–description table. Unreadable or short rows are counted in `rejects`
    (and counted as read); good rows are yielded with their file and line number."""
    path = Path(path)
    delimiter = _delimiter(path, fmt)
    columns: Columns | None = None
    for line in read_lines(path):
        if not line.text.strip() and line.error is None:
            continue
        if columns is None and line.error is None:
            columns, is_header = _columns(_split(line.text, delimiter), path, smiles_column, text_column, id_column)
            if is_header:
                continue
        rejects.summary.read += 1
        row = _parse_row(line, delimiter, columns, path, rejects)
        if row is not None:
            yield row


def _parse_row(line: Line, delimiter: str, columns: Columns | None, path: Path, rejects: Rejects) -> MoleculeRow | None:
    where = (str(path), line.number)
    if line.error is not None:
        rejects.reject("unreadable line", where, line.text, detail=line.error)
        return None
    fields = _split(line.text, delimiter)
    needed = max(columns.smiles, columns.text, columns.id or 0) + 1
    if len(fields) < needed:
        rejects.reject("malformed row", where, line.text, detail=f"expected {needed} fields, got {len(fields)}")
        return None
    smiles, text = fields[columns.smiles].strip(), " ".join(fields[columns.text].split())
    if not smiles:
        rejects.reject("missing SMILES", where, line.text)
        return None
    if not text:
        rejects.reject("missing description", where, line.text)
        return None
    row_id = fields[columns.id].strip() if columns.id is not None else ""
    return MoleculeRow(row_id or f"line{line.number}", smiles, text, str(path), line.number)


def unescape_smiles(smiles: str) -> str:
    """ChEBI-20 (MolT5's files) writes some backslash bond directions doubled (`\\\\`); undo that."""
    return smiles.replace("\\\\", "\\")


def molecule_identity(smiles: str) -> tuple[str, str]:
    """(canonical SMILES, InChIKey) of a SMILES; the key falls back to `smiles:<canonical>` when RDKit cannot
    make an InChI. Raises `InvalidSmilesError` with RDKit's reason."""
    from rdkit import Chem

    from biomedgpt.modalities.molecule import parse_smiles

    mol = parse_smiles(unescape_smiles(smiles))
    # parse_smiles sanitizes separately from parsing, which skips stereo perception; without it the InChIKey
    # silently loses E/Z double-bond stereo (and would merge stereoisomers), so perceive it as MolFromSmiles does.
    Chem.AssignStereochemistry(mol, cleanIt=True, force=True)
    canonical = Chem.MolToSmiles(mol)
    key = _inchikey(mol)
    return canonical, key or f"smiles:{canonical}"


def _inchikey(mol) -> str:
    from rdkit import RDLogger
    from rdkit.Chem import MolToInchiKey

    # InChI warnings ("Omitted undefined stereo", ...) are not errors here and would flood the terminal.
    RDLogger.DisableLog("rdApp.warning")
    RDLogger.DisableLog("rdApp.error")
    try:
        return MolToInchiKey(mol)
    except Exception:  # the InChI library rejects a few valid RDKit molecules (e.g. some organometallics)
        return ""
    finally:
        RDLogger.EnableLog("rdApp.warning")
        RDLogger.EnableLog("rdApp.error")


_PRONOUN_SUBJECT = re.compile(r"it\b", re.IGNORECASE)


def describe_answer(description: str) -> str:
    """One style for every description. PCdes replaced the molecule's name with 'it' ('it is a trimethoxyflavone
    that …') where ChEBI-20, built the same way from PubChem text, wrote 'The molecule' ('The molecule is a
    trimethoxyflavone that …'); a model trained on both would not know which to write, and the ChEBI-20 test
    references use the latter. So a leading 'it' becomes 'The molecule'; any other first letter is capitalised.
    The rest of the text is kept as written."""
    if _PRONOUN_SUBJECT.match(description):
        return "The molecule" + description[2:]
    return description[:1].upper() + description[1:]


def molecule_qa_records(rows: Iterable[MoleculeRow], source: str, rejects: Rejects, question: str = DEFAULT_QUESTION,
                        exclude_keys: set[str] | frozenset[str] = frozenset(),
                        seen: set[str] | None = None, keep_duplicates: bool = False) -> Iterator[QARecord]:
    """Turn rows into QA records, skipping invalid SMILES, excluded molecules and (unless `keep_duplicates`,
    which an evaluation set that must keep its published size needs) repeated InChIKeys."""
    seen = set() if seen is None else seen
    for row in rows:
        where = (row.file, row.line)
        try:
            canonical, key = molecule_identity(row.smiles)
        except InvalidSmilesError as err:
            rejects.reject("invalid SMILES", where, f"{row.id}\t{row.smiles}\t{row.description}", detail=str(err))
            continue
        if key in exclude_keys:
            rejects.reject("molecule in an excluded set (same InChIKey)", where, f"{row.id}\t{row.smiles}")
            continue
        if key in seen and not keep_duplicates:
            rejects.reject("duplicate molecule (same InChIKey)", where, f"{row.id}\t{row.smiles}")
            continue
        seen.add(key)
        rejects.summary.written += 1
        rejects.summary.records += 1
        yield QARecord(id=f"{source}:{row.id}", source=source, molecules=[canonical], question=question,
                       answer=describe_answer(row.description), metadata={"cid": row.id, "inchikey": key})


def build_molecule_qa(inputs: list[str | Path], output: str | Path, sources: list[str] | None = None,
                      question: str = DEFAULT_QUESTION, exclude: list[str | Path] = (),
                      rejects_path: str | Path | None = None, fmt: str = "auto", smiles_column: str | None = None,
                      text_column: str | None = None, id_column: str | None = None,
                      keep_duplicates: bool = False, show_progress: bool | None = None) -> BuildSummary:
    """Build one QA JSONL from one or more molecule tables; returns the counts (read = written + skipped).

    `sources` names each input (default: the file name without extension); duplicates are removed across all
    inputs of the build, keeping the first (unless `keep_duplicates`); `exclude` lists files (tables or QA
    JSONL) whose molecules must not appear in the output (the evaluation set)."""
    from biomedgpt.data.leakage import load_molecule_keys

    inputs = [Path(p) for p in inputs]
    if sources and len(sources) not in (1, len(inputs)):
        raise UserError(f"give one --source for all inputs or one per input ({len(inputs)}), not {len(sources)}")
    names = [(sources[0] if len(sources) == 1 else sources[i]) if sources else p.name.split(".")[0]
             for i, p in enumerate(inputs)]
    for path in [*inputs, *map(Path, exclude)]:
        if not path.is_file():
            raise UserError(f"no such file: {path}")
    exclude_keys: set[str] = set()
    for path in exclude:
        exclude_keys |= load_molecule_keys(path)
    summary = BuildSummary()
    seen: set[str] = set()
    with Rejects(summary, rejects_path) as rejects, progress("molecule-qa", "rows", show_progress) as bar:
        def records() -> Iterator[QARecord]:
            for path, source in zip(inputs, names):
                rows = read_molecule_table(path, rejects, fmt, smiles_column, text_column, id_column)
                for record in molecule_qa_records(rows, source, rejects, question, exclude_keys, seen,
                                                  keep_duplicates):
                    bar.update(summary.read - bar.n)
                    yield record
            bar.update(summary.read - bar.n)

        write_jsonl(output, records())
    return summary
