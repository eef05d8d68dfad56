"""The 10B stage-2 memory estimate rests on exact parameter counts of the published shapes."""

from __future__ import annotations

from biomedgpt.train.memory_estimate import GIB, stage2_estimate


def test_parameter_counts_match_the_published_models():
    result = stage2_estimate(batch=4, seq_len=1024)
    counts = result["parameters"]
    assert counts["lm"] == 6_738_415_616  # Llama-2-7B, as its model card states
    assert 2.83e9 < counts["esm2_3b"] < 2.85e9  # ESM-2 3B without its MLM head
    assert counts["adapters"] == 300 * 4096 + 4096 + 2560 * 4096 + 4096
    frozen = result["bytes"]["frozen weights (LM + ESM-2 3B + GIN, bf16)"]
    assert frozen == 2 * (counts["lm"] + counts["esm2_3b"] + counts["gin"])
    assert result["total_checkpointing_gib"] < result["total_no_checkpointing_gib"] < 80
    assert abs(result["total_no_checkpointing_gib"] * GIB - sum(
        v for k, v in result["bytes"].items() if "with gradient checkpointing" not in k)) < 1
