"""Can the model's own likelihood choose between its answer and its nearest neighbour's description?

The default model edits the description of the most similar known molecule (its top evidence), and on ChEBI-20
those edits cost a little more than they gain (docs/default-model.md). This measures a decoding idea before it is
built: for every record where the two differ, score both texts as answers to the same prompt (evidence included,
as `eval` builds it) with the model's mean token log-probability (the length-normalised score beam search ranks
its hypotheses by, `length_penalty` 1) and keep the more probable one. Also reported: the summed log-probability
and the oracle (per record, the candidate with the higher sentence BLEU-4 against the reference: an upper bound).

    .venv/bin/python benchmarks/answer_selection.py --model models/biomedgpt-small \
        --data data/build/molecule_qa_test.jsonl \
        --model-predictions benchmarks/results/session9/chebi20-test-500--biomedgpt-small.predictions.jsonl \
        --baseline-predictions benchmarks/results/session9/chebi20-test-500--nn.predictions.jsonl \
        --out benchmarks/results/session9/answer_selection

Scores are cached in `<out>.scores.jsonl` (one line per scored record), so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch


def read_jsonl(path: str | Path) -> dict[str, dict]:
    with open(path, encoding="utf-8") as handle:
        return {row["id"]: row for row in (json.loads(line) for line in handle if line.strip())}


@torch.no_grad()
def answer_logprobs(model, record: dict, answers: list[str]) -> list[tuple[float, int]]:
    """(summed log-probability, token count) of each answer (+ the end-of-turn token) after the record's prompt."""
    from biomedgpt.data.collate import collate, end_of_turn
    from biomedgpt.inference import Message, build_example

    message = Message("user", record["question"], list(record["molecules"]), list(record.get("proteins") or []))
    examples = [build_example(model, [message], answer=answer + end_of_turn(model.tokenizer)) for answer in answers]
    batch = collate(examples, model.tokenizer.pad_token_id, "right")
    logits = model(**batch.model_inputs()).logits.float()
    logprobs = torch.log_softmax(logits[:, :-1], dim=-1)
    labels = batch.labels[:, 1:]
    scored = labels != -100
    token = logprobs.gather(-1, labels.clamp(min=0)[..., None])[..., 0] * scored
    return list(zip(token.sum(1).tolist(), scored.sum(1).tolist()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True, help="the QA records the predictions answer")
    parser.add_argument("--model-predictions", required=True, help="predictions.jsonl of the model's eval run")
    parser.add_argument("--baseline-predictions", required=True, help="predictions.jsonl of baseline:nn")
    parser.add_argument("--out", required=True, help="output stem: <out>.json, <out>.md, <out>.scores.jsonl")
    args = parser.parse_args(argv)

    from tqdm import tqdm

    from biomedgpt.evaluate import text_metrics
    from biomedgpt.inference import load_model

    ours, theirs = read_jsonl(args.model_predictions), read_jsonl(args.baseline_predictions)
    ids = sorted(ours)
    if set(ids) != set(theirs):
        sys.exit("the two prediction files cover different records")
    records = {rid: row for rid, row in read_jsonl(args.data).items() if rid in ours}
    differ = [rid for rid in ids if ours[rid]["prediction"].strip() != theirs[rid]["prediction"].strip()]

    cache = Path(f"{args.out}.scores.jsonl")
    cache.parent.mkdir(parents=True, exist_ok=True)
    scores = read_jsonl(cache) if cache.is_file() else {}
    stale = [rid for rid, row in scores.items() if (row.get("model"), row.get("data")) != (args.model, args.data)]
    if stale:
        sys.exit(f"{cache} holds scores of another model or data file ({stale[0]}): delete it or choose another --out")
    todo = [rid for rid in differ if rid not in scores]
    start = time.perf_counter()
    if todo:
        model = load_model(args.model).eval()
        with open(cache, "a", encoding="utf-8") as handle:
            for rid in tqdm(todo, desc="scoring", unit="record"):
                pair = answer_logprobs(model, records[rid], [ours[rid]["prediction"], theirs[rid]["prediction"]])
                scores[rid] = {"id": rid, "model": args.model, "data": args.data, "ours": pair[0], "theirs": pair[1]}
                handle.write(json.dumps(scores[rid]) + "\n")
                handle.flush()

    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    references = [ours[rid]["reference"] for rid in ids]
    tokens = {name: text_metrics.tokenize([rows[rid]["prediction"] for rid in ids])
              for name, rows in (("model", ours), ("baseline", theirs))}
    reference_tokens = text_metrics.tokenize(references)
    smooth = SmoothingFunction().method1
    sentence = {name: [sentence_bleu([r], p, smoothing_function=smooth) for r, p in zip(reference_tokens, toks)]
                for name, toks in tokens.items()}

    def pick(rule) -> list[str]:
        chosen = []
        for i, rid in enumerate(ids):
            use_baseline = rid in scores and rule(i, scores[rid])
            chosen.append(theirs[rid]["prediction"] if use_baseline else ours[rid]["prediction"])
        return chosen

    systems = {
        "model": [ours[rid]["prediction"] for rid in ids],
        "baseline:nn": [theirs[rid]["prediction"] for rid in ids],
        "pick by mean log-probability": pick(lambda i, s: s["theirs"][0] / s["theirs"][1]
                                             > s["ours"][0] / s["ours"][1]),
        "pick by summed log-probability": pick(lambda i, s: s["theirs"][0] > s["ours"][0]),
        "oracle (higher sentence BLEU-4)": pick(lambda i, s: sentence["baseline"][i] > sentence["model"][i]),
    }
    results = {"records": len(ids), "differ": len(differ), "model": args.model, "data": args.data,
               "model_predictions": args.model_predictions, "baseline_predictions": args.baseline_predictions,
               "scoring_seconds_this_run": round(time.perf_counter() - start, 1), "systems": {}}
    for name, predictions in systems.items():
        metrics = text_metrics.text_metrics(references, predictions)
        chose = sum(p != ours[rid]["prediction"] for p, rid in zip(predictions, ids))
        results["systems"][name] = {**{k: round(v, 4) for k, v in metrics.items()}, "baseline_answers": chose}
    Path(f"{args.out}.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [f"# Answer selection: {len(ids)} records, {len(differ)} where the model's answer differs from the "
             "neighbour's", "", "| system | BLEU-2 | BLEU-4 | ROUGE-1 | ROUGE-2 | ROUGE-L | METEOR | neighbour's "
             "answer kept |", "|---|---|---|---|---|---|---|---|"]
    for name, m in results["systems"].items():
        lines.append(f"| {name} | {m['bleu2']:.3f} | {m['bleu4']:.3f} | {m['rouge1']:.3f} | {m['rouge2']:.3f} | "
                     f"{m['rougeL']:.3f} | {m['meteor']:.3f} | {m['baseline_answers']} |")
    Path(f"{args.out}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
