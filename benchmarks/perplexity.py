"""Language-model perplexity of one or more models on biomedical text (e.g. before / after a training stage).

    python benchmarks/perplexity.py --data ../shared/data/biomed-text-corpus/corpus.jsonl.gz --docs 200 \
        --model small --model models/biomedgpt-small --out benchmarks/results/default-model/perplexity.json

The documents are a fixed seeded sample (`--seed`), packed into blocks of `--block` tokens exactly as the `lm`
training stage packs them (`biomedgpt.train.datasets.PackedText`); the score is exp(mean next-token NLL).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch


def split_documents(path: Path, docs: int, seed: int, text_field: str = "text") -> tuple[list[str], list[str]]:
    """(the seeded sample of `docs` documents that is scored, every other document) — the second part is what an
    `lm` stage may train on without seeing the scored text."""
    from biomedgpt.train.datasets import read_documents

    documents = list(read_documents(path, text_field))
    order = list(range(len(documents)))
    random.Random(seed).shuffle(order)  # the same sample as shuffling the documents themselves
    held_out = set(order[:docs])
    return [documents[i] for i in order[:docs]], [d for i, d in enumerate(documents) if i not in held_out]


def sample_documents(path: Path, docs: int, seed: int, text_field: str = "text") -> list[str]:
    return split_documents(path, docs, seed, text_field)[0]


@torch.inference_mode()
def perplexity(model, documents: list[str], block: int, batch_size: int = 4) -> dict:
    """exp(mean NLL) over every predicted token of the packed blocks."""
    from biomedgpt.train.datasets import PackedText

    tokenizer = model.tokenizer
    ids: list[int] = []
    for tokens in tokenizer(documents, add_special_tokens=False)["input_ids"]:
        ids += tokens + [tokenizer.eos_token_id]
    blocks = PackedText(torch.tensor(ids[: len(ids) // block * block]).view(-1, block)).blocks
    total, count = 0.0, 0
    for start in range(0, len(blocks), batch_size):
        batch = blocks[start : start + batch_size].to(model.device)
        logits = model.llm(input_ids=batch).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1),
                                                reduction="sum")
        total, count = total + nll.item(), count + batch[:, 1:].numel()
    return {"perplexity": math.exp(total / count), "tokens": count, "blocks": len(blocks)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, type=Path, help="JSONL(.gz) documents with a 'text' field")
    parser.add_argument("--model", action="append", default=[], help="model folder or preset (repeatable)")
    parser.add_argument("--docs", type=int, default=200)
    parser.add_argument("--block", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--write-training-docs", type=Path, metavar="JSONL",
                        help="also write every document outside the scored sample (the `lm` stage's training file)")
    args = parser.parse_args()
    if not args.model and not args.write_training_docs:
        parser.error("give --model (repeatable) and/or --write-training-docs")

    from biomedgpt.inference import load_model

    documents, rest = split_documents(args.data, args.docs, args.seed)
    if args.write_training_docs:
        from biomedgpt.io import atomic_write_text

        args.write_training_docs.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.write_training_docs, "".join(json.dumps({"text": d}) + "\n" for d in rest))
        print(f"{args.write_training_docs}: {len(rest):,} training documents ({len(documents)} held out)")
    results = {"data": str(args.data), "docs": args.docs, "block": args.block, "seed": args.seed, "models": {}}
    for name in args.model:
        start = time.perf_counter()
        scores = perplexity(load_model(name), documents, args.block)
        results["models"][name] = {**scores, "seconds": round(time.perf_counter() - start, 1)}
        print(f"{name}: perplexity {scores['perplexity']:.2f} over {scores['tokens']:,} tokens", flush=True)
    if args.out and args.model:
        from biomedgpt.io import atomic_write_text

        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out, json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
