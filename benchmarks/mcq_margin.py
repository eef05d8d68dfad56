"""Is there signal under an always-the-same-letter multiple-choice answer? (a diagnostic, not a baseline)

A model that answers "yes" to every PubMedQA question may still rank the questions: its yes-minus-no
log-probability margin could be larger on the questions whose answer is yes. If it were, recalibrating the letter
scores (e.g. contextual calibration, a threshold) could lift accuracy above the majority class. This reads the
per-letter log-probabilities (and the reference letter) that `biomedgpt eval mcq` writes to predictions.jsonl and
reports, for one letter
against another, the AUC of the margin and the accuracy of the best threshold *chosen on the evaluated records
themselves* (an upper bound for any such recalibration, not a result to report as the model's accuracy).

    .venv/bin/python benchmarks/mcq_margin.py \
        --predictions benchmarks/results/session9/pubmedqa-test-500--biomedgpt-small.predictions.jsonl \
        --positive A --negative B
"""

from __future__ import annotations

import argparse
import collections
import json


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--predictions", required=True, help="predictions.jsonl of an `eval mcq` logprob run")
    parser.add_argument("--positive", default="A", help="letter on the high side of the margin (default A)")
    parser.add_argument("--negative", default="B", help="letter on the low side (default B)")
    args = parser.parse_args(argv)

    with open(args.predictions, encoding="utf-8") as handle:
        rows = [row for row in map(json.loads, handle) if row.get("logprobs")]
    if not rows:
        raise SystemExit(f"{args.predictions}: no rows with per-letter log-probabilities (an `eval mcq` logprob run)")
    gold = [row["reference"] for row in rows]
    margin = [row["logprobs"][args.positive] - row["logprobs"][args.negative] for row in rows]
    counts = collections.Counter(gold)
    print(f"{len(rows)} records; answers: " + ", ".join(f"{k} {v / len(rows):.3f}" for k, v in sorted(counts.items())))
    print("predicted: " + ", ".join(f"{k} {v}" for k, v in sorted(collections.Counter(r["prediction"] for r in rows)
                                                                   .items())))
    accuracy = sum(r["prediction"] == g for r, g in zip(rows, gold)) / len(rows)
    print(f"accuracy as evaluated: {accuracy:.3f}; majority class: {max(counts.values()) / len(rows):.3f}")

    pos = [m for m, g in zip(margin, gold) if g == args.positive]
    neg = [m for m, g in zip(margin, gold) if g == args.negative]
    if not pos or not neg:
        raise SystemExit(f"no records answered {args.positive if not pos else args.negative}: the AUC is undefined")
    pairs = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    print(f"AUC of the {args.positive}-minus-{args.negative} margin ({len(pos)} vs {len(neg)} records): "
          f"{pairs / (len(pos) * len(neg)):.3f}")
    best = max((sum((args.positive if m > t else args.negative) == g for m, g in zip(margin, gold)) / len(rows), t)
               for t in sorted(set(margin)) + [min(margin) - 1])
    print(f"best threshold on these records (an upper bound): accuracy {best[0]:.3f} at margin > {best[1]:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
