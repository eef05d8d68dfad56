"""The two record schemas of the project and their JSONL reading/writing, validated with file:line errors.

QA record (molecule / protein / text question answering), one JSON object per line:
    {"id": str, "source": str, "molecules": [SMILES, ...], "proteins": [SEQUENCE, ...],
     "question": str, "answer": str, "metadata": {...}}           (molecules, proteins, metadata optional)
Multiple-choice record:
    {"id": str, "question": str, "context": str | null, "options": {"A": str, ...}, "answer": "A",
     "metadata": {...}}                                            (context, metadata optional)
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from biomedgpt.errors import UserError


class RecordError(UserError):
    """A malformed record; the message starts with `file:line:`."""


@dataclass
class QARecord:
    id: str
    question: str
    answer: str
    source: str = ""
    molecules: list[str] = field(default_factory=list)
    proteins: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        # vars() gives the same JSON as dataclasses.asdict (fields in order, values are plain JSON types)
        # without asdict's recursive deep copy, which dominated the time of writing a large build.
        return json.dumps(vars(self), ensure_ascii=False)


@dataclass
class MCQRecord:
    id: str
    question: str
    options: dict[str, str]
    answer: str
    context: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        # vars() gives the same JSON as dataclasses.asdict (fields in order, values are plain JSON types)
        # without asdict's recursive deep copy, which dominated the time of writing a large build.
        return json.dumps(vars(self), ensure_ascii=False)


def _require(data: dict, key: str, kind: type | tuple, where: str, optional: bool = False):
    if key not in data or data[key] is None:
        if optional:
            return None
        raise RecordError(f"{where}: missing field {key!r}")
    value = data[key]
    if not isinstance(value, kind):
        raise RecordError(f"{where}: field {key!r} must be {getattr(kind, '__name__', kind)}, "
                          f"got {type(value).__name__}")
    return value


def _string_list(data: dict, key: str, where: str) -> list[str]:
    values = _require(data, key, list, where, optional=True) or []
    if not all(isinstance(v, str) and v.strip() for v in values):
        raise RecordError(f"{where}: field {key!r} must be a list of non-empty strings")
    return values


def parse_qa(data: Any, where: str = "<record>") -> QARecord:
    if not isinstance(data, dict):
        raise RecordError(f"{where}: expected a JSON object, got {type(data).__name__}")
    record = QARecord(
        id=str(_require(data, "id", (str, int), where)),
        question=_require(data, "question", str, where),
        answer=_require(data, "answer", str, where),
        source=_require(data, "source", str, where, optional=True) or "",
        molecules=_string_list(data, "molecules", where),
        proteins=_string_list(data, "proteins", where),
        metadata=_require(data, "metadata", dict, where, optional=True) or {},
    )
    if not record.question.strip():
        raise RecordError(f"{where}: empty question")
    return record


def parse_mcq(data: Any, where: str = "<record>") -> MCQRecord:
    if not isinstance(data, dict):
        raise RecordError(f"{where}: expected a JSON object, got {type(data).__name__}")
    options = _require(data, "options", dict, where)
    if len(options) < 2 or not all(isinstance(k, str) and isinstance(v, str) for k, v in options.items()):
        raise RecordError(f"{where}: 'options' must map at least two letters to option texts")
    answer = _require(data, "answer", str, where)
    if answer not in options:
        raise RecordError(f"{where}: answer {answer!r} is not one of the options {sorted(options)}")
    return MCQRecord(
        id=str(_require(data, "id", (str, int), where)),
        question=_require(data, "question", str, where),
        options=options,
        answer=answer,
        context=_require(data, "context", str, where, optional=True),
        metadata=_require(data, "metadata", dict, where, optional=True) or {},
    )


def _read_jsonl(path: str | Path, parse) -> Iterator:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no such file: {path}")
    with open(path, encoding="utf-8", errors="strict") as handle:
        line_number = 0
        while True:
            where = f"{path}:{line_number + 1}"
            try:
                line = handle.readline()
            except UnicodeDecodeError as err:
                raise RecordError(f"{where}: not valid UTF-8 ({err.reason})") from None
            if not line:
                return
            line_number += 1
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as err:
                raise RecordError(f"{where}: invalid JSON ({err.msg} at column {err.colno})") from None
            yield parse(data, where)


def read_qa(path: str | Path) -> Iterator[QARecord]:
    """Stream QA records from a JSONL file; raises `RecordError` with file:line on the first bad one."""
    return _read_jsonl(path, parse_qa)


def read_mcq(path: str | Path) -> Iterator[MCQRecord]:
    """Stream multiple-choice records from a JSONL file; raises `RecordError` with file:line."""
    return _read_jsonl(path, parse_mcq)


def write_jsonl(path: str | Path, records: Iterable[QARecord | MCQRecord]) -> int:
    """Write records atomically (all or nothing); returns how many were written."""
    from biomedgpt.io import atomic_path

    count = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(record.to_json() + "\n")
            count += 1
    return count


def read_lenient(path: str | Path, kind: str = "qa", errors: list[RecordError] | None = None) -> Iterator:
    """Stream QA (`kind="qa"`) or multiple-choice (`kind="mcq"`) records like `read_qa` / `read_mcq`, but a
    malformed line (bad JSON, bad UTF-8, a failed validation) is skipped and appended to `errors` as a
    `RecordError` naming file:line, instead of stopping the run. Blank lines are skipped silently."""
    parse = {"qa": parse_qa, "mcq": parse_mcq}.get(kind)
    if parse is None:
        raise UserError(f"unknown record kind {kind!r}; use 'qa' or 'mcq'")
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no such file: {path}")
    errors = [] if errors is None else errors
    with open(path, "rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            where = f"{path}:{line_number}"
            try:
                line = raw.decode("utf-8")
                if not line.strip():
                    continue
                yield parse(json.loads(line), where)
            except UnicodeDecodeError as err:
                errors.append(RecordError(f"{where}: not valid UTF-8 ({err.reason})"))
            except json.JSONDecodeError as err:
                errors.append(RecordError(f"{where}: invalid JSON ({err.msg} at column {err.colno})"))
            except RecordError as err:
                errors.append(err)
