"""GPU memory of stage 2 (alignment) of the published BioMedGPT-10B shapes, from exact parameter counts.

The models are built on the meta device (no weights, no memory), so the counts are those of the real
architectures: BioMedGPT-LM-7B (Llama-2-7B shapes), ESM-2 3B, the GraphMVP GIN and the two adapters.
Activation sizes follow Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer
Models"): 34·s·b·h bytes per layer in 16-bit with a fused (flash / SDPA) attention that keeps no s² scores, and
2·s·b·h bytes per layer (the layer input) with full activation checkpointing.
"""

from __future__ import annotations

from typing import Any

import torch

GIB = 1024**3


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def parameter_counts() -> dict[str, int]:
    from transformers import EsmConfig, EsmModel, LlamaConfig, LlamaForCausalLM

    from biomedgpt.model.gin import GIN, GINConfig

    llama = LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                        num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                        tie_word_embeddings=False)
    esm = EsmConfig(vocab_size=33, hidden_size=2560, num_hidden_layers=36, num_attention_heads=40,
                    intermediate_size=10240, max_position_embeddings=1026, position_embedding_type="rotary",
                    token_dropout=True, emb_layer_norm_before=False, pad_token_id=1, mask_token_id=32)
    with torch.device("meta"):
        counts = {"lm": _count(LlamaForCausalLM(llama)), "esm2_3b": _count(EsmModel(esm, add_pooling_layer=False)),
                  "gin": _count(GIN(GINConfig(num_layer=5, emb_dim=300)))}
    counts["adapters"] = (300 * 4096 + 4096) + (2560 * 4096 + 4096)
    return counts


def stage2_estimate(
    batch: int = 4, seq_len: int = 1024, gpus: int = 8, answer_fraction: float = 0.25
) -> dict[str, Any]:
    """Per-GPU memory for DDP stage 2: LM + encoders frozen in bf16, adapters trained in fp32 with AdamW."""
    n = parameter_counts()
    hidden, layers, vocab, esm_hidden = 4096, 32, 32000, 2560
    tokens = batch * seq_len
    frozen = 2 * (n["lm"] + n["esm2_3b"] + n["gin"])
    trainable = 16 * n["adapters"]  # fp32 weights 4 + grads 4 + AdamW m, v 8
    ddp_buckets = 4 * n["adapters"]
    activations_full = 34 * tokens * hidden * layers
    activations_ckpt = 2 * tokens * hidden * layers + 34 * tokens * hidden
    logits = int(tokens * answer_fraction) * vocab * (2 + 4 + 4)  # bf16 logits, fp32 copy, fp32 grad
    esm_forward = batch * 1024 * 4 * esm_hidden * 2 * 2  # no-grad forward: two live MLP-width tensors
    rows = {
        "frozen weights (LM + ESM-2 3B + GIN, bf16)": frozen,
        "adapters: fp32 weights + grads + AdamW states": trainable,
        "DDP gradient buckets": ddp_buckets,
        "LM activations kept for backward (no checkpointing)": activations_full,
        "LM activations with gradient checkpointing": activations_ckpt,
        "logits at answer positions": logits,
        "ESM-2 forward (no grad; 0 with the encoder-output cache)": esm_forward,
    }
    no_ckpt = frozen + trainable + ddp_buckets + activations_full + logits + esm_forward
    ckpt = frozen + trainable + ddp_buckets + activations_ckpt + logits + esm_forward
    cache_per_residue = 2 * esm_hidden
    result = {"parameters": n, "batch_per_gpu": batch, "seq_len": seq_len, "gpus": gpus,
              "bytes": rows, "total_no_checkpointing_gib": no_ckpt / GIB, "total_checkpointing_gib": ckpt / GIB,
              "esm_cache_bytes_per_residue_bf16": cache_per_residue}
    md = [f"# Stage 2 of BioMedGPT-10B on {gpus} GPUs (DDP): memory per GPU\n",
          "Parameter counts (meta-device models, exact): " + ", ".join(f"{k} {v:,}" for k, v in n.items()) + ".\n",
          f"Per GPU: micro-batch {batch} x {seq_len} tokens; global batch {batch * gpus} sequences per step.\n",
          "| item | GiB |", "|---|---|"]
    md += [f"| {name} | {value / GIB:.2f} |" for name, value in rows.items()]
    md += [f"| **total, no checkpointing** | **{no_ckpt / GIB:.1f}** |",
           f"| **total, gradient checkpointing** | **{ckpt / GIB:.1f}** |", "",
           "Plus the CUDA context and allocator slack (typically 1-3 GiB). Activations assume a fused attention "
           "kernel (SDPA/flash); the frozen LM still stores activations because gradients flow through it to the "
           "spliced adapter outputs.",
           f"The per-residue ESM-2 3B output cache costs {cache_per_residue:,} bytes per residue in bf16 (x residues "
           "per protein x proteins): size it before enabling `cache_encoder_outputs` for large protein sets.\n",
           "Command: `.venv/bin/python benchmarks/train_throughput.py memory`\n"]
    result["markdown"] = "\n".join(md)
    return result
