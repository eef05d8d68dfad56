"""Text metrics of `biomedgpt eval qa` runs restricted to the seeded sample of a smaller run.

A full-test run (e.g. all 3,300 ChEBI-20 test items with int8 weights) contains every item of the seeded
`--limit 500` sample, so its predictions on exactly those items can be scored beside a 500-item fp32 run:
the quantization drop is then measured on the same items without decoding them twice.

    python benchmarks/subset_metrics.py --data data/build/molecule_qa_test.jsonl --limit 500 --seed 0 \
        runs/default-model/chebi20-test-3300--biomedgpt-small-int8 runs/default-model/chebi20-test-500--biomedgpt-small
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from biomedgpt.evaluate.runner import load_records, read_predictions, select
from biomedgpt.evaluate.text_metrics import text_metrics


def subset_metrics(run: Path, ids: list[str]) -> dict[str, float]:
    """MolT5-protocol metrics of `run`'s predictions for `ids` (every id must have been predicted)."""
    predictions = read_predictions(run / "predictions.jsonl")
    missing = [i for i in ids if i not in predictions]
    if missing:
        raise SystemExit(f"{run}: {len(missing)} of the {len(ids)} sampled items were not predicted "
                         f"(e.g. {missing[0]}); finish the run first")
    rows = [predictions[i] for i in ids]
    return {"n": len(rows), **text_metrics([r["reference"] for r in rows], [r["prediction"] for r in rows])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="eval run folders (with predictions.jsonl)")
    parser.add_argument("--data", required=True, help="the runs' data file")
    parser.add_argument("--limit", type=int, required=True, help="the sample size to restrict to")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="also write the table as JSON here")
    args = parser.parse_args(argv)

    ids = [r.id for r in select(load_records("qa", args.data), args.limit, args.seed)]
    results = {str(run): subset_metrics(run, ids) for run in args.runs}
    keys = ["bleu2", "bleu4", "rougeL", "meteor"]
    print(f"| run (seeded {args.limit}, seed {args.seed}) | " + " | ".join(keys) + " |")
    print("|---|" + "---:|" * len(keys))
    for run, metrics in results.items():
        print(f"| {Path(run).name} | " + " | ".join(f"{metrics[k]:.3f}" for k in keys) + " |")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
