"""Biomedical multiple-choice benchmarks → the project's multiple-choice schema (`MCQRecord`).

- PubMedQA (PQA-L `ori_pqal.json`, the official `test_set.json`): a dict keyed by PMID; options yes/no/maybe,
  the abstract's sections (without its conclusion) as context — the "reasoning-required" setting.
- MedMCQA (`dev.json`, JSON lines): options opa…opd; `cop` is the answer index, **1-based** in the original
  release (1 = A) and 0-based in the Hugging Face copy (`index_base=0`).
- MedQA-USMLE 4-option (`*.jsonl`): options A–D and `answer_idx`; the answer text must match that option.

Each source question counts once: written, or skipped with a reason (read = written + skipped).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from biomedgpt.data.records import MCQRecord, write_jsonl
from biomedgpt.data.streaming import BuildSummary, Rejects, progress, read_lines
from biomedgpt.errors import UserError

DATASETS = ("pubmedqa", "medmcqa", "medqa")
PUBMEDQA_OPTIONS = {"A": "yes", "B": "no", "C": "maybe"}
LETTERS = "ABCDEFGHIJ"


class BadRecord(ValueError):
    """A source record that cannot be converted; the message is the reason."""


def _text(data: dict, key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value.strip():
        raise BadRecord(f"missing or empty {key!r}")
    return value.strip()


def pubmedqa_record(pmid: str, data: Any) -> MCQRecord:
    if not isinstance(data, dict):
        raise BadRecord(f"expected an object, got {type(data).__name__}")
    decision = data.get("final_decision")
    if decision not in PUBMEDQA_OPTIONS.values():
        raise BadRecord(f"final_decision {decision!r} is not yes, no or maybe")
    contexts, labels = data.get("CONTEXTS"), data.get("LABELS") or []
    if not isinstance(contexts, list) or not contexts or not all(isinstance(c, str) for c in contexts):
        raise BadRecord("missing or empty 'CONTEXTS'")
    if isinstance(labels, list) and len(labels) == len(contexts):
        context = "\n".join(f"{label}: {text}" for label, text in zip(labels, contexts))
    else:
        context = "\n".join(contexts)
    letter = next(k for k, v in PUBMEDQA_OPTIONS.items() if v == decision)
    return MCQRecord(id=f"pubmedqa:{pmid}", question=_text(data, "QUESTION"), options=dict(PUBMEDQA_OPTIONS),
                     answer=letter, context=context,
                     metadata={"pmid": str(pmid), "long_answer": data.get("LONG_ANSWER"), "year": data.get("YEAR"),
                               "meshes": data.get("MESHES")})


def medmcqa_record(data: Any, index_base: int = 1) -> MCQRecord:
    if not isinstance(data, dict):
        raise BadRecord(f"expected an object, got {type(data).__name__}")
    options = {letter: _text(data, key) for letter, key in zip("ABCD", ("opa", "opb", "opc", "opd"))}
    cop = data.get("cop")
    if isinstance(cop, bool) or not isinstance(cop, int) or not index_base <= cop < index_base + 4:
        raise BadRecord(f"cop {cop!r} is not an answer index {index_base}..{index_base + 3}")
    return MCQRecord(id=f"medmcqa:{data.get('id') or _text(data, 'question')[:40]}",
                     question=_text(data, "question"), options=options, answer="ABCD"[cop - index_base],
                     metadata={"subject": data.get("subject_name"), "topic": data.get("topic_name"),
                               "choice_type": data.get("choice_type"), "explanation": data.get("exp")})


def medqa_record(data: Any, line: int) -> MCQRecord:
    if not isinstance(data, dict):
        raise BadRecord(f"expected an object, got {type(data).__name__}")
    options = data.get("options")
    if not isinstance(options, dict) or len(options) < 2 or not all(
            isinstance(k, str) and isinstance(v, str) and v.strip() for k, v in options.items()):
        raise BadRecord("'options' must map letters to non-empty texts")
    answer = data.get("answer_idx")
    if answer not in options:
        raise BadRecord(f"answer_idx {answer!r} is not one of the options {sorted(options)}")
    if isinstance(data.get("answer"), str) and data["answer"].strip() != options[answer].strip():
        raise BadRecord(f"answer text {data['answer']!r} differs from option {answer} {options[answer]!r}")
    return MCQRecord(id=f"medqa:{data.get('id') or line}", question=_text(data, "question"),
                     options={k: v.strip() for k, v in options.items()}, answer=answer,
                     metadata={"meta_info": data.get("meta_info")})


def _jsonl_records(path: Path, convert: Callable[[Any, int], MCQRecord], rejects: Rejects) -> Iterator[MCQRecord]:
    for line in read_lines(path):
        if not line.text.strip() and line.error is None:
            continue
        rejects.summary.read += 1
        where = (str(path), line.number)
        if line.error:
            rejects.reject("unreadable line", where, line.text, detail=line.error)
            continue
        try:
            yield convert(json.loads(line.text), line.number)
        except json.JSONDecodeError as err:
            rejects.reject("invalid JSON", where, line.text, detail=f"{err.msg} at column {err.colno}")
        except BadRecord as err:
            rejects.reject("malformed record", where, line.text, detail=str(err))


def _pubmedqa_records(path: Path, rejects: Rejects) -> Iterator[MCQRecord]:
    """PubMedQA files are one JSON object (≤ 3 MB), read whole; each PMID is one record."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not valid UTF-8 ({err.reason} at byte {err.start})") from None
    except json.JSONDecodeError as err:
        raise UserError(f"{path}:{err.lineno}: invalid JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object keyed by PMID (PubMedQA format)")
    for pmid, value in data.items():
        rejects.summary.read += 1
        try:
            yield pubmedqa_record(pmid, value)
        except BadRecord as err:
            rejects.reject("malformed record", (str(path), 0), json.dumps({pmid: value})[:2000],
                           detail=f"PMID {pmid}: {err}")


def mcq_records(dataset: str, path: str | Path, rejects: Rejects, index_base: int = 1) -> Iterator[MCQRecord]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no such file: {path}")
    if dataset == "pubmedqa":
        return _pubmedqa_records(path, rejects)
    if dataset == "medmcqa":
        return _jsonl_records(path, lambda data, line: medmcqa_record(data, index_base), rejects)
    if dataset == "medqa":
        return _jsonl_records(path, medqa_record, rejects)
    raise UserError(f"unknown multiple-choice dataset {dataset!r}; choose from {', '.join(DATASETS)}")


def build_mcq(dataset: str, inputs: list[str | Path], output: str | Path, exclude: list[str | Path] = (),
              rejects_path: str | Path | None = None, index_base: int = 1,
              show_progress: bool | None = None) -> BuildSummary:
    """Convert one benchmark's files to one multiple-choice JSONL; `exclude` lists files (multiple-choice
    JSONL) whose questions (normalised text) must not appear — e.g. the PubMedQA test split when building its
    training pool. Returns the counts (read = written + skipped)."""
    from biomedgpt.data.leakage import load_items, normalise_question

    if index_base not in (0, 1):
        raise UserError("the MedMCQA answer index base must be 0 or 1")
    excluded = {item.question for path in exclude for item in load_items(path) if item.question}
    summary = BuildSummary()
    with Rejects(summary, rejects_path) as rejects, progress(f"mcq {dataset}", "questions", show_progress) as bar:
        def records() -> Iterator[MCQRecord]:
            seen_ids: set[str] = set()
            for path in inputs:
                for record in mcq_records(dataset, path, rejects, index_base):
                    bar.update(summary.read - bar.n)
                    if normalise_question(record.question) in excluded:
                        rejects.reject("question in an excluded set", (str(path), 0), record.id)
                    elif record.id in seen_ids:
                        rejects.reject("duplicate id", (str(path), 0), record.id)
                    else:
                        seen_ids.add(record.id)
                        summary.written += 1
                        summary.records += 1
                        yield record

        write_jsonl(output, records())
    return summary
