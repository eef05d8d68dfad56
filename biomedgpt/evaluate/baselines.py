"""Baselines reported beside every model, run by the same harness as the models (`--model baseline:NAME`).

- `nn`: nearest neighbour. A molecule question gets the answer of the training molecule with the highest
  Morgan-fingerprint Tanimoto similarity; a protein question the answer of the training sequence with the
  highest alignment identity (`biomedgpt.retrieval`). Every pool entity that also occurs in the evaluated set
  (same InChIKey / same sequence) is removed from the pool first, so the baseline cannot copy a test answer.
- `majority`: the most frequent training answer (QA) or answer letter (multiple choice).
- `random`: a seeded random training answer (QA) or a uniformly random option (multiple choice).

For QA, training records asked the same question as the evaluated record are used when there are any (a pool
may mix tasks, e.g. GO function and subcellular location questions about the same proteins); otherwise all.

Each predictor maps a batch of records to prediction dicts (`{"prediction": ..., **details}`), like the model
predictors in `biomedgpt.evaluate.runner`.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Sequence

from biomedgpt.constants import MOLECULE, PROTEIN
from biomedgpt.errors import UserError

logger = logging.getLogger(__name__)

BASELINES = ("nn", "majority", "random")
BASELINE_PREFIX = "baseline:"


def entity_key(record) -> str | None:
    """The InChIKey of a record's single molecule or its single (cleaned) protein sequence; None otherwise."""
    from biomedgpt.retrieval import clean_sequence, inchikey

    try:
        if len(record.molecules) == 1 and not record.proteins:
            return inchikey(record.molecules[0]) or None
        if len(record.proteins) == 1 and not record.molecules:
            return clean_sequence(record.proteins[0])
    except UserError:
        return None
    return None


class NearestNeighbor:
    """Copy the answer of the most similar training entity (QA records with one molecule or one protein)."""

    name = "nn"

    def __init__(self, train: Sequence, evaluated: Sequence, candidates: int = 10) -> None:
        from biomedgpt.retrieval import RetrievalIndex

        pool = RetrievalIndex.from_records(train, candidates=candidates)
        keys = {key for key in map(entity_key, evaluated) if key is not None}
        self.index, removed = pool.without(keys)
        self.details = {"pool_molecules": len(self.index.molecules), "pool_proteins": len(self.index.proteins),
                        "pool_removed_overlap": removed}
        logger.info("nearest-neighbour pool: %s", self.details)

    def __call__(self, records: Sequence) -> list[dict]:
        return [self._one(record) for record in records]

    def _one(self, record) -> dict:
        try:
            if len(record.molecules) == 1 and not record.proteins:
                question = record.question if self.index.has_question(MOLECULE, record.question) else None
                hits = self.index.query_molecule(record.molecules[0], k=1, question=question)
            elif len(record.proteins) == 1 and not record.molecules:
                question = record.question if self.index.has_question(PROTEIN, record.question) else None
                hits = self.index.query_protein(record.proteins[0], k=1, question=question)
            else:
                return {"prediction": "", "error": "not exactly one molecule or protein"}
        except UserError as err:
            return {"prediction": "", "error": str(err)}
        if not hits:
            return {"prediction": "", "error": "empty pool for this modality"}
        best = hits[0]
        return {"prediction": best.annotation, "neighbor": best.id, "similarity": round(best.similarity, 6)}


class Majority:
    """The most frequent answer in the training records (ties: the earliest seen). For multiple choice without
    training records the evaluated set's own labels are used, and the run says so (`oracle_labels`)."""

    name = "majority"

    def __init__(self, train: Sequence, evaluated: Sequence, multiple_choice: bool) -> None:
        source = train if train else evaluated
        if not source:
            raise UserError("the majority baseline needs training records (--train)")
        if not train and not multiple_choice:
            raise UserError("the majority baseline for free-text QA needs --train")
        self.answer = Counter(record.answer for record in source).most_common(1)[0][0]
        self.by_question: dict[str, str] = {}
        if not multiple_choice:  # per question, for pools that mix tasks
            per_question: dict[str, Counter] = {}
            for record in source:
                per_question.setdefault(record.question, Counter())[record.answer] += 1
            self.by_question = {q: counts.most_common(1)[0][0] for q, counts in per_question.items()}
        self.details = {"majority_answer": self.answer, "oracle_labels": not train}

    def __call__(self, records: Sequence) -> list[dict]:
        return [{"prediction": self.by_question.get(record.question, self.answer)} for record in records]


class RandomGuess:
    """Uniformly random option (multiple choice) or a random training answer (QA), seeded per record id so the
    result does not depend on batching, resuming or `--limit`."""

    name = "random"

    def __init__(self, train: Sequence, multiple_choice: bool, seed: int) -> None:
        if not multiple_choice and not train:
            raise UserError("the random baseline for free-text QA needs --train")
        self.answers = [record.answer for record in train]
        self.by_question: dict[str, list[str]] = {}
        for record in train:
            self.by_question.setdefault(record.question, []).append(record.answer)
        self.multiple_choice, self.seed = multiple_choice, seed
        self.details = {"seed": seed}

    def __call__(self, records: Sequence) -> list[dict]:
        out = []
        for record in records:
            rng = random.Random(f"{self.seed}:{record.id}")
            if self.multiple_choice:
                choices = sorted(record.options)
            else:
                choices = self.by_question.get(record.question, self.answers)
            out.append({"prediction": rng.choice(choices)})
        return out


def make_baseline(name: str, train: Sequence, evaluated: Sequence, multiple_choice: bool, seed: int):
    """Build the predictor for `baseline:NAME`; raises `UserError` when it does not apply."""
    if name not in BASELINES:
        raise UserError(f"unknown baseline {name!r}; choose one of: {', '.join(BASELINES)}")
    if name == "nn":
        if multiple_choice:
            raise UserError("the nearest-neighbour baseline applies to molecule/protein QA, not multiple choice")
        if not train:
            raise UserError("the nearest-neighbour baseline needs a pool of known entities: --train FILE")
        return NearestNeighbor(train, evaluated)
    if name == "majority":
        return Majority(train, evaluated, multiple_choice)
    return RandomGuess(train, multiple_choice, seed)
