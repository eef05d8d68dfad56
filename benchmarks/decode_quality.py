"""What reduced-precision LM weights do to the small preset's LM (SmolLM2-135M-Instruct), vs its fp32 weights.

Used by `benchmarks/decode.py --parts quality`. Three measures, all against mode "none" (fp32):
- perplexity on biomedical abstracts (the last documents of ../shared/data/biomed-text-corpus, 256-token chunks);
- top-1 next-token agreement on the same tokens;
- greedy answers to the benchmark prompts: how many leading tokens equal the fp32 answer.
"""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

CORPUS = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "biomed-text-corpus" / "corpus.jsonl.gz"


def corpus_chunks(tokenizer, chunks: int, length: int) -> torch.Tensor:
    """`[chunks, length]` token ids from the corpus's last documents, concatenated (eos between documents)."""
    lines = gzip.open(CORPUS, "rt").read().splitlines()
    ids: list[int] = []
    for line in reversed(lines):
        ids += tokenizer(json.loads(line)["text"])["input_ids"] + [tokenizer.eos_token_id]
        if len(ids) >= chunks * length:
            break
    return torch.tensor(ids[: chunks * length]).view(chunks, length)


def quality_report(model, prompt_inputs: dict, modes=("none", "bf16", "int8", "int4"), chunks: int = 32,
                   length: int = 256, batch: int = 4, new_tokens: int = 64) -> dict:
    """Perplexity, next-token agreement and greedy-answer agreement of each mode against fp32 ("none")."""
    from biomedgpt.model.fast_decode import score_tokens

    tokens = corpus_chunks(model.tokenizer, chunks, length)
    reference_top1 = []
    results = {}
    for mode in modes:
        nll, agree = 0.0, 0
        for i, start in enumerate(range(0, chunks, batch)):
            ids = tokens[start : start + batch]
            logits = score_tokens(model.llm, ids, mode)[:, :-1]
            nll += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum").item()
            top1 = logits.argmax(-1)
            if mode == modes[0]:
                reference_top1.append(top1)
            agree += int((top1 == reference_top1[i]).sum())
        count = tokens[:, 1:].numel()
        answers = model.generate(**prompt_inputs, engine="fast", quantize=mode, max_new_tokens=new_tokens,
                                 do_sample=False)
        results[mode] = {"perplexity": round(math.exp(nll / count), 3), "top1_agreement": round(agree / count, 4),
                         "answers": answers}
    base = results[modes[0]]
    for mode in modes:
        r = results[mode]
        r["perplexity_change"] = round(r["perplexity"] / base["perplexity"] - 1, 4)
        width = min(r["answers"].shape[1], base["answers"].shape[1])
        same = (r["answers"][:, :width] == base["answers"][:, :width]).int().cumprod(dim=1).sum(dim=1)
        r["greedy_prefix_agreement"] = same.tolist()
    for mode in modes:
        results[mode]["answers"] = [model.tokenizer.decode(row, skip_special_tokens=True)
                                    for row in results[mode]["answers"]]
    results["setup"] = {"tokens_scored": tokens[:, 1:].numel(), "chunk_length": length,
                        "text": "last documents of biomed-text-corpus", "greedy_new_tokens": new_tokens}
    return results
