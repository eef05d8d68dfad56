"""Multiple-choice accuracy (PubMedQA, MedMCQA, MedQA) with two protocols, each named in every result:

- `logprob`: one forward pass per question; the answer is the option letter whose first token has the highest
  log-probability at the answer position (the first position after the prompt), among the record's letters
  only. The letter is tokenised on its own, as the collator tokenises answers in training, so a model
  fine-tuned to answer "B" is scored on exactly the token it learned.
- `generate`: greedy generation of a short answer, parsed into a letter (a standalone letter, "(B)",
  "Answer: B", or the text of exactly one option such as "yes"); unparseable answers count as wrong.

Prompts are zero-shot or few-shot: k solved training questions as earlier conversation turns, drawn once per
run with the run's seed, so every question sees the same examples.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

import torch

from biomedgpt.errors import UserError

PROTOCOLS = ("logprob", "generate")
INSTRUCTION = "Answer with the letter of the correct option."


def format_question(record) -> str:
    """The user turn for one multiple-choice record: context (if any), question, lettered options."""
    parts = []
    if record.context:
        parts.append(f"Context: {record.context}")
    parts.append(f"Question: {record.question}")
    parts.append("Options:\n" + "\n".join(f"{letter}. {text}" for letter, text in sorted(record.options.items())))
    parts.append(INSTRUCTION)
    return "\n".join(parts)


def pick_shots(train: Sequence, shots: int, seed: int, evaluated: Sequence = ()) -> list:
    """`shots` training records drawn with `seed` (the same for the whole run), never one whose question
    (case- and space-insensitive) is also among the `evaluated` records."""
    if shots <= 0:
        return []
    seen = {" ".join(r.question.lower().split()) for r in evaluated}
    train = [r for r in train if " ".join(r.question.lower().split()) not in seen]
    if len(train) < shots:
        raise UserError(f"{shots}-shot prompts need at least {shots} training records (--train) whose question "
                        f"is not evaluated, got {len(train)}")
    return random.Random(seed).sample(list(train), shots)


def conversation(record, shots: Sequence = ()) -> list:
    """Messages for one question: each shot as a user turn answered by its letter, then the question."""
    from biomedgpt.inference import Message

    messages = []
    for shot in shots:
        messages += [Message("user", format_question(shot)), Message("assistant", shot.answer)]
    messages.append(Message("user", format_question(record)))
    return messages


def letter_token_id(tokenizer, letter: str) -> int:
    """The first token of `letter` tokenised alone (as answers are tokenised by the collator)."""
    ids = tokenizer(letter, add_special_tokens=False)["input_ids"]
    if not ids:
        raise UserError(f"the tokenizer maps option letter {letter!r} to no token")
    return ids[0]


@torch.no_grad()
def score_letters(model, records: Sequence, shots: Sequence = ()) -> list[dict[str, float]]:
    """Log-probabilities (full-vocabulary softmax) of each record's option letters at the answer position.

    One right-padded forward pass for the batch (right padding keeps every row's positions as if it were
    alone); the logits of row b are read at its last prompt token. Only those positions go through the LM
    head (`logits_to_keep`): the full [B, T, vocab] logits would cost more than the rest of the pass.
    Returns one `{letter: logprob}` per record.
    """
    from biomedgpt.data.collate import collate
    from biomedgpt.inference import build_example

    examples = [build_example(model, conversation(record, shots)) for record in records]
    batch = collate(examples, model.tokenizer.pad_token_id, "right")
    last = batch.attention_mask.sum(dim=1) - 1  # [B] index of each row's final prompt token
    keep = torch.unique(last)  # sorted distinct positions, [K <= B]
    logits = model(**batch.model_inputs(), logits_to_keep=keep).logits  # [B, K, V]
    column = torch.searchsorted(keep, last)  # [B] where each row's position sits in `keep`
    rows = logits[torch.arange(len(examples)), column.to(logits.device)]  # [B, V]
    logprobs = torch.log_softmax(rows.float(), dim=-1)
    results = []
    for row, record in enumerate(records):
        letters = sorted(record.options)
        ids = [letter_token_id(model.tokenizer, letter) for letter in letters]
        results.append({letter: float(logprobs[row, i]) for letter, i in zip(letters, ids)})
    return results


def best_letter(scores: dict[str, float]) -> str:
    """Highest-scoring letter; ties go to the alphabetically first."""
    return max(sorted(scores), key=lambda letter: scores[letter])


def parse_answer(text: str, options: dict[str, str]) -> str | None:
    """Map a generated answer to an option letter, or None when it names no single option."""
    letters = "".join(sorted(re.escape(k) for k in options))
    stripped = text.strip()
    patterns = (
        rf"^\(?([{letters}])\)?(?:[.):,\s]|$)",  # "B", "B.", "(B)", "B) ..."
        rf"\b(?i:answer|option)(?:\s+(?i:is))?\s*:?\s*\(?([{letters}])\)?(?:[.):,\s]|$)",  # "The answer is B"
    )
    for pattern in patterns:
        match = re.search(pattern, stripped)
        if match:
            return match.group(1)
    lowered = stripped.lower().strip(" .")
    exact = [k for k, v in options.items() if v.lower().strip(" .") == lowered]
    if len(exact) == 1:
        return exact[0]
    named = [k for k, v in options.items() if re.search(rf"\b{re.escape(v.lower())}\b", lowered)]
    return named[0] if len(named) == 1 else None


def accuracy_metrics(answers: Sequence[str], predictions: Sequence[str | None]) -> dict[str, float]:
    """Accuracy, macro-F1 over the gold labels present, and the fraction of unparsed (None) predictions."""
    if len(answers) != len(predictions):
        raise ValueError(f"{len(answers)} answers but {len(predictions)} predictions")
    if not answers:
        raise ValueError("no answers to score")
    correct = sum(a == p for a, p in zip(answers, predictions))
    f1s = []
    for label in sorted(set(answers)):
        tp = sum(a == label and p == label for a, p in zip(answers, predictions))
        predicted = sum(p == label for p in predictions)
        actual = sum(a == label for a in answers)
        f1s.append(0.0 if tp == 0 else 2 * tp / (predicted + actual))
    return {"accuracy": correct / len(answers), "macro_f1": sum(f1s) / len(f1s),
            "unparsed": sum(p is None for p in predictions) / len(answers)}
