"""The evaluation harness behind `biomedgpt eval`: batched, seeded, resumable, with a progress bar.

A run lives in one folder:
    run.json            what was evaluated (task, model, data + sha256, sample, protocol, settings)
    predictions.jsonl   one line per record, appended batch by batch (flushed and fsynced)
    metrics.json        the scores, written atomically at the end
    metrics.md          the same as a Markdown table

A killed run restarted with the same arguments skips every record already in predictions.jsonl (a torn last
line is dropped) and continues; different arguments on the same folder are refused, so one folder never mixes
two configurations. `--limit N` evaluates a fixed sample: N record indices drawn with the seed, in file order.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from biomedgpt.errors import UserError

logger = logging.getLogger(__name__)

TASKS = ("qa", "mcq")
PREDICTIONS = "predictions.jsonl"
RUN_SPEC = "run.json"
METRICS = "metrics.json"
METRICS_MD = "metrics.md"
# Settings that may change between a run and its resumption without changing any prediction (the files are
# identified by their sha256, so a moved checkout still resumes).
RESUMABLE_CHANGES = ("batch_size", "data", "train")


@dataclass
class RunSpec:
    """Everything that determines a run's predictions (saved as run.json, compared on resume)."""

    task: str
    model: str
    data: str
    data_sha256: str
    benchmark: str
    train: str | None = None
    train_sha256: str | None = None
    limit: int | None = None
    seed: int = 0
    protocol: str | None = None  # models: "generate" (qa), "logprob" or "generate" (mcq); baselines: None
    shots: int = 0
    generation: dict = field(default_factory=dict)
    batch_size: int = 8
    evidence: int | None = None  # retrieval-augmented prompts: k evidence items (None: the model's own setting)

    @property
    def system(self) -> str:
        """The name shown in reports: `baseline:nn (train: POOL)`, or the model folder name plus its protocol and
        any generation setting that changes the weights or the search (int8, beams), so that two runs of one
        benchmark never share a row name."""
        if self.model.startswith("baseline:"):
            return f"{self.model} (train: {Path(self.train).stem})" if self.train else self.model
        name = Path(self.model).name or self.model
        tags = [f"{self.protocol}, {self.shots}-shot"] if self.task == "mcq" else []
        if self.generation.get("quantize") not in (None, "none"):
            tags.append(self.generation["quantize"])
        if self.generation.get("num_beams", 1) > 1:
            tags.append(f"{self.generation['num_beams']} beams")
        if self.evidence is not None:
            tags.append(f"evidence {self.evidence}" if self.evidence else "no evidence")
        return f"{name} ({', '.join(tags)})" if tags else name


def load_records(task: str, path: str | Path) -> list:
    """All records of a QA or multiple-choice JSONL file; ids must be unique (they key resumption)."""
    from biomedgpt.data.records import read_mcq, read_qa

    if task not in TASKS:
        raise UserError(f"unknown task {task!r}; choose one of: {', '.join(TASKS)}")
    if not Path(path).is_file():
        raise UserError(f"data file not found: {path}")
    records = list(read_qa(path) if task == "qa" else read_mcq(path))
    if not records:
        raise UserError(f"{path}: no records")
    seen: set[str] = set()
    for record in records:
        if record.id in seen:
            raise UserError(f"{path}: duplicate record id {record.id!r} (ids must be unique to resume a run)")
        seen.add(record.id)
    return records


def select(records: Sequence, limit: int | None, seed: int) -> list:
    """The evaluated records: all of them, or `limit` drawn with `seed` (kept in file order)."""
    if limit is None or limit >= len(records):
        return list(records)
    if limit < 1:
        raise UserError(f"--limit must be >= 1, got {limit}")
    chosen = sorted(random.Random(seed).sample(range(len(records)), limit))
    return [records[i] for i in chosen]


def read_predictions(path: Path) -> dict[str, dict]:
    """Predictions already written, by id. A torn final line (a kill mid-write) is cut off the file."""
    if not path.is_file():
        return {}
    done: dict[str, dict] = {}
    good_bytes = 0
    with open(path, "rb") as handle:
        for raw in handle:
            try:
                row = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                break
            if not raw.endswith(b"\n"):
                break
            done[row["id"]] = row
            good_bytes += len(raw)
    if good_bytes != path.stat().st_size:
        logger.warning("%s: dropping a partial last line (the previous run was interrupted)", path)
        with open(path, "r+b") as handle:
            handle.truncate(good_bytes)
    return done


def prepare_run_dir(out: Path, spec: RunSpec, overwrite: bool) -> None:
    """Create the folder, or check that an existing one holds the same run (then it resumes)."""
    from biomedgpt.io import atomic_write_text

    spec_path = out / RUN_SPEC
    if spec_path.is_file() and not overwrite:
        old = json.loads(spec_path.read_text())
        new = asdict(spec)
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k) and k not in RESUMABLE_CHANGES)
        if changed:
            raise UserError(f"{out} holds a different run (differs in: {', '.join(changed)}); "
                            "use another --out or pass --overwrite")
    elif overwrite:
        for name in (PREDICTIONS, METRICS, METRICS_MD):
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(spec_path, json.dumps(asdict(spec), indent=2) + "\n")


def run_predictions(
    records: Sequence, predictor: Callable[[Sequence], list[dict]], out: Path, batch_size: int,
    description: str = "eval",
) -> tuple[dict[str, dict], int]:
    """Predict every record not yet in `out/predictions.jsonl`, `batch_size` at a time; return all by id and how
    many were predicted now."""
    from tqdm import tqdm

    from biomedgpt.modalities import count_cut_entities

    path = out / PREDICTIONS
    done = read_predictions(path)
    pending = [r for r in records if r.id not in done]
    with open(path, "a", encoding="utf-8") as handle, count_cut_entities(description), \
            tqdm(total=len(records), initial=len(records) - len(pending), desc=description, unit="item",
                 dynamic_ncols=True) as bar:
        for start in range(0, len(pending), batch_size):
            chunk = pending[start : start + batch_size]
            outputs = predictor(chunk)
            if len(outputs) != len(chunk):
                raise RuntimeError(f"predictor returned {len(outputs)} outputs for {len(chunk)} records")
            for record, output in zip(chunk, outputs):
                row = {"id": record.id, "reference": record.answer, **output}
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
                done[record.id] = row
            handle.flush()
            os.fsync(handle.fileno())
            bar.update(len(chunk))
    return done, len(pending)


def primary_metric(task: str, records: Sequence) -> str:
    """The headline metric: accuracy (multiple choice); exact match when every reference is a short label
    (at most 4 words, e.g. a subcellular location); else BLEU-4."""
    if task == "mcq":
        return "accuracy"
    return "exact_match" if all(len(r.answer.split()) <= 4 for r in records) else "bleu4"


def score(task: str, records: Sequence, predictions: dict[str, dict]) -> dict:
    """Metrics over `records` (in order) from their predictions: text metrics + exact match, or accuracy."""
    rows = [predictions[r.id] for r in records]
    errors = sum(1 for row in rows if row.get("error"))
    if task == "qa":
        from biomedgpt.evaluate.text_metrics import exact_match, text_metrics

        references = [r.answer for r in records]
        hypotheses = [row.get("prediction") or "" for row in rows]
        metrics = {**text_metrics(references, hypotheses), "exact_match": exact_match(references, hypotheses)}
    else:
        from biomedgpt.evaluate.multiple_choice import accuracy_metrics

        metrics = accuracy_metrics([r.answer for r in records], [row.get("prediction") for row in rows])
    return {**metrics, "n": len(records), "errors": errors}


def evaluate(spec: RunSpec, records: Sequence, predictor, out: Path, overwrite: bool = False,
             details: dict | None = None) -> dict:
    """Run (or resume) one evaluation and write its metrics; returns the metrics.json content."""
    from biomedgpt.evaluate.report import run_markdown
    from biomedgpt.io import atomic_write_text

    prepare_run_dir(out, spec, overwrite)
    start = time.perf_counter()
    predictions, predicted = run_predictions(records, predictor, out, spec.batch_size, description=spec.benchmark)
    elapsed = round(time.perf_counter() - start, 2)
    if not predicted and (out / METRICS).exists():
        # Re-running a finished evaluation predicts nothing: keep the time of the session that did the work.
        try:
            recorded = json.loads((out / METRICS).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            recorded = None
        if isinstance(recorded, dict) and isinstance(recorded.get("seconds_this_session"), (int, float)):
            elapsed = recorded["seconds_this_session"]
    result = {
        "benchmark": spec.benchmark, "task": spec.task, "system": spec.system, "model": spec.model,
        "protocol": spec.protocol,
        "primary_metric": primary_metric(spec.task, records), "metrics": score(spec.task, records, predictions),
        "details": details or {}, "seconds_this_session": elapsed,
    }
    atomic_write_text(out / METRICS, json.dumps(result, indent=2) + "\n")
    atomic_write_text(out / METRICS_MD, run_markdown(result))
    return result
