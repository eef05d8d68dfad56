"""Model predictors for the evaluation harness: each maps a batch of records to prediction dicts.

They batch through the inference API (`generate_batch`, or `BioMedGPT.forward` for letter scores). A record
that the model cannot take (a bad SMILES, an entity the model has no encoder for) gets an empty prediction
with an `error` and is scored as wrong; it never stops the run or loses the rest of its batch.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence

from biomedgpt.errors import UserError

logger = logging.getLogger(__name__)


def _isolating(batch_fn: Callable[[Sequence], list[dict]], records: Sequence) -> list[dict]:
    """Run the batch; if a record in it is bad, rerun record by record so only that one gets an error."""
    try:
        return batch_fn(records)
    except UserError as err:
        if len(records) == 1:
            logger.warning("record %s: %s", records[0].id, err)
            return [{"prediction": None, "error": str(err)}]
    return [output for record in records for output in _isolating(batch_fn, [record])]


class GenerateAnswers:
    """Free-text QA: the user turn is the question with the record's molecules and proteins attached."""

    def __init__(self, model, settings) -> None:
        self.model, self.settings = model, settings
        self.predict = functools.partial(_isolating, self._batch)

    def _batch(self, records: Sequence) -> list[dict]:
        from biomedgpt.inference import Message, generate_batch

        conversations = [[Message("user", r.question, list(r.molecules), list(r.proteins))] for r in records]
        answers = generate_batch(self.model, conversations, self.settings, batch_size=len(records))
        return [{"prediction": answer} for answer in answers]

    def __call__(self, records: Sequence) -> list[dict]:
        return [{**out, "prediction": out["prediction"] or ""} for out in self.predict(records)]


class LetterLogprob:
    """Multiple choice, `logprob` protocol: the most probable option letter at the answer position."""

    def __init__(self, model, shots: Sequence = ()) -> None:
        self.model, self.shots = model, list(shots)
        self.predict = functools.partial(_isolating, self._batch)

    def _batch(self, records: Sequence) -> list[dict]:
        from biomedgpt.evaluate.multiple_choice import best_letter, score_letters

        scores = score_letters(self.model, records, self.shots)
        return [{"prediction": best_letter(s), "logprobs": {k: round(v, 5) for k, v in s.items()}} for s in scores]

    def __call__(self, records: Sequence) -> list[dict]:
        return self.predict(records)


class GenerateLetters:
    """Multiple choice, `generate` protocol: generate a short answer, parse it into a letter (None if it names
    no single option)."""

    def __init__(self, model, settings, shots: Sequence = ()) -> None:
        self.model, self.settings, self.shots = model, settings, list(shots)
        self.predict = functools.partial(_isolating, self._batch)

    def _batch(self, records: Sequence) -> list[dict]:
        from biomedgpt.evaluate.multiple_choice import conversation, parse_answer
        from biomedgpt.inference import generate_batch

        conversations = [conversation(record, self.shots) for record in records]
        texts = generate_batch(self.model, conversations, self.settings, batch_size=len(records))
        return [{"prediction": parse_answer(text, record.options), "generated": text}
                for text, record in zip(texts, records)]

    def __call__(self, records: Sequence) -> list[dict]:
        return self.predict(records)
