"""How much signal PubMedQA's labelled training half holds for a shallow model: a bag-of-words (unigrams + bigrams)
logistic regression trained on the 500 PQA-L questions outside the test split, scored on the official 500 test
questions, for a few L2 strengths. A reference point for the default model's PubMedQA numbers
(docs/default-model.md), not a baseline of the evaluation harness.

    .venv/bin/python benchmarks/pubmedqa_bow.py     # data/build/pubmedqa_{train,test}.jsonl (--train, --test)
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import sys

import torch
import torch.nn.functional as F


def features(record: dict) -> set[str]:
    words = re.findall(r"[a-z]+", f"{record['question']} {record.get('context') or ''}".lower())
    return set(words) | {f"{a}_{b}" for a, b in zip(words, words[1:])}


def fit(x: torch.Tensor, y: torch.Tensor, classes: int, l2: float):
    """Multinomial logistic regression with an L2 penalty (L-BFGS); returns the logits function."""
    weight = torch.zeros(x.shape[1], classes, requires_grad=True)
    bias = torch.zeros(classes, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=200)

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight + bias, y) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return lambda inputs: (inputs @ weight + bias).detach()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", default="data/build/pubmedqa_train.jsonl")
    parser.add_argument("--test", default="data/build/pubmedqa_test.jsonl")
    parser.add_argument("--min-count", type=int, default=3,
                        help="features seen in fewer training questions are dropped")
    args = parser.parse_args()
    train = [json.loads(line) for line in open(args.train, encoding="utf-8")]
    test = [json.loads(line) for line in open(args.test, encoding="utf-8")]
    counts = collections.Counter(f for r in train for f in features(r))
    vocab = {f: i for i, f in enumerate(sorted(f for f, c in counts.items() if c >= args.min_count))}
    letters = sorted({r["answer"] for r in train})

    def matrix(records):
        x = torch.zeros(len(records), len(vocab))
        for row, record in enumerate(records):
            for f in features(record) & vocab.keys():
                x[row, vocab[f]] = 1.0
        return x, torch.tensor([letters.index(r["answer"]) for r in records])

    (x_train, y_train), (x_test, y_test) = matrix(train), matrix(test)
    majority = max(letters, key=[r["answer"] for r in train].count)
    print(f"{len(train)} training / {len(test)} test questions, {len(vocab)} features; majority class "
          f"{majority}: {sum(r['answer'] == majority for r in test) / len(test):.3f} on the test")
    for l2 in (1e-3, 3e-3, 1e-2, 3e-2):
        predicted = fit(x_train, y_train, len(letters), l2)(x_test).argmax(1)
        print(f"L2 {l2:g}: test accuracy {(predicted == y_test).float().mean():.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
