"""Batch inference over a CSV or JSONL file of questions, resumable, with one output row per input row.

Input (one question per row; `molecules` / `proteins` optional):
- JSONL: `{"id": "q1", "question": "...", "molecules": ["CCO"], "proteins": ["MKT..."], "system": "..."}`
  (a string is accepted for molecules / proteins; `smiles` and `protein` are accepted as aliases).
- CSV with a header: `id,question,molecules,proteins`; several entities in a cell are separated by `;`.
Output (JSONL, input order): `{"row": 1, "id": "q1", "question": "...", "answer": "..."}`, or, for a row that
cannot be answered (bad JSON, bad SMILES, missing question), `{"row": 1, "id": "q1", "error": "..."}`; the run
goes on.

Resuming: answers are appended (and fsynced) batch by batch to `OUTPUT.partial`, each with a hash of its input
row. Re-running the same command skips the rows already answered; a partial file from a different input is
refused rather than mixed in. The output itself is written once, atomically, when every row is done, so a
reader never sees a half-written file.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from biomedgpt.errors import UserError
from biomedgpt.inference import GenerationSettings, Message, build_example, generate_batch
from biomedgpt.io import atomic_path

logger = logging.getLogger(__name__)

ENTITY_SEPARATOR = ";"


@dataclass
class InputRow:
    row: int  # 1-based position among the input's records
    id: str
    key: str  # sha256 of the raw record: detects a partial file that belongs to another input
    question: str = ""
    messages: list[Message] = field(default_factory=list)
    error: str | None = None


@dataclass
class BatchSummary:
    rows: int
    answered: int
    errors: int
    resumed: int  # rows taken from an earlier, interrupted run


def _key(raw: str) -> str:
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()[:16]


def _entities(record: dict, names: Sequence[str], split: bool) -> list[str]:
    for name in names:
        value = record.get(name)
        if value in (None, ""):
            continue
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise UserError(f"field {name!r} must be a string or a list of strings")
        if split:
            values = [part for v in values for part in v.split(ENTITY_SEPARATOR)]
        return [v.strip() for v in values if v.strip()]
    return []


def _to_row(position: int, raw: str, record, split: bool) -> InputRow:
    """Turn one parsed record into an InputRow; problems become the row's error (never an exception)."""
    row = InputRow(row=position, id=str(position), key=_key(raw))
    if not isinstance(record, dict):
        row.error = f"expected a JSON object, got {type(record).__name__}"
        return row
    if isinstance(record.get("id"), (str, int)) and str(record["id"]).strip():
        row.id = str(record["id"])
    try:
        question = record.get("question")
        if not isinstance(question, str) or not question.strip():
            raise UserError("missing or empty 'question'")
        system = record.get("system")
        if system is not None and not isinstance(system, str):
            raise UserError("'system' must be a string")
        smiles = _entities(record, ("molecules", "smiles"), split)
        proteins = _entities(record, ("proteins", "protein"), split)
        row.question = question
        row.messages = ([Message("system", system)] if system else []) + [Message("user", question, smiles, proteins)]
    except UserError as err:
        row.error = str(err)
    return row


def read_rows(path: str | Path) -> list[InputRow]:
    """Read a .jsonl or .csv input; a malformed record becomes an error row, a malformed file a UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"input file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = []
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    rows.append(InputRow(len(rows) + 1, str(len(rows) + 1), _key(line), error=f"invalid JSON: {err}"))
                    continue
                rows.append(_to_row(len(rows) + 1, line, record, split=False))
        return rows
    if suffix == ".csv":
        with open(path, encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            if not reader.fieldnames or "question" not in reader.fieldnames:
                raise UserError(f"{path}: the CSV header needs a 'question' column (got {reader.fieldnames})")
            return [_to_row(i, json.dumps(record, sort_keys=True), record, split=True)
                    for i, record in enumerate(reader, start=1)]
    raise UserError(f"{path}: unsupported input type {suffix or '(none)'}; use .jsonl or .csv")


def _load_partial(partial: Path, rows: list[InputRow]) -> dict[int, dict]:
    """Finished records of an interrupted run, keyed by row; refuses a partial file from another input."""
    if not partial.is_file():
        return {}
    keys = {row.row: row.key for row in rows}
    done: dict[int, dict] = {}
    with open(partial, encoding="utf-8") as handle:
        for line in handle:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by the interruption: that row is simply answered again
            if keys.get(record.get("row")) != record.get("key"):
                raise UserError(f"{partial} belongs to a different input (row {record.get('row')} differs); "
                                "delete it or pass --restart to start over")
            done[record["row"]] = record
    return done


def _generate(model, rows: list[InputRow], settings: GenerationSettings) -> list[str | Exception]:
    """Answers for checked rows in one batch; if the batch fails, each row alone, so one cannot sink the rest."""
    try:
        return generate_batch(model, [row.messages for row in rows], settings, batch_size=len(rows))
    except (UserError, ValueError, RuntimeError) as err:
        if len(rows) == 1:
            return [err]
        return [_generate(model, [row], settings)[0] for row in rows]


def _answer(model, rows: list[InputRow], settings: GenerationSettings) -> list[dict]:
    """Output records (with their resume key) for a chunk of rows, in row order."""
    ready = []
    for row in rows:
        if row.error is None:
            try:
                build_example(model, row.messages)  # the same checks generation makes, row by row
                ready.append(row)
            except (UserError, ValueError) as err:
                row.error = str(err)
    outcomes = {row.row: {"error": row.error} for row in rows if row.error is not None}
    if ready:
        for row, answer in zip(ready, _generate(model, ready, settings)):
            outcomes[row.row] = {"error": str(answer)} if isinstance(answer, Exception) else {"answer": answer}
    records = []
    for row in rows:
        question = {"question": row.question} if row.question else {}
        records.append({"row": row.row, "id": row.id, "key": row.key, **question, **outcomes[row.row]})
    return records


def run_batch(model, input_path: str | Path, output_path: str | Path, settings: GenerationSettings | None = None,
              batch_size: int = 8, restart: bool = False, progress: bool = True) -> BatchSummary:
    """Answer every row of `input_path` into `output_path` (JSONL), resuming from `OUTPUT.partial`."""
    from tqdm import tqdm

    from biomedgpt.modalities import count_cut_entities

    if batch_size < 1:
        raise UserError(f"batch size must be >= 1, got {batch_size}")
    settings = settings or GenerationSettings.for_model(model)
    output = Path(output_path)
    partial = output.with_name(output.name + ".partial")
    rows = read_rows(input_path)
    if restart and partial.exists():
        partial.unlink()
    done = _load_partial(partial, rows)
    resumed = len(done)
    todo = [row for row in rows if row.row not in done]
    output.parent.mkdir(parents=True, exist_ok=True)
    with open(partial, "a", encoding="utf-8") as sink, count_cut_entities("batch"), \
            tqdm(total=len(rows), initial=resumed, unit="row", disable=not progress, desc="batch") as bar:
        for start in range(0, len(todo), batch_size):
            records = _answer(model, todo[start : start + batch_size], settings)
            sink.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
            sink.flush()
            os.fsync(sink.fileno())
            done.update((r["row"], r) for r in records)
            bar.update(len(records))
    with atomic_path(output) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        for row in rows:
            record = {k: v for k, v in done[row.row].items() if k != "key"}
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    partial.unlink()
    errors = sum("error" in done[row.row] for row in rows)
    return BatchSummary(rows=len(rows), answered=len(rows) - errors, errors=errors, resumed=resumed)
