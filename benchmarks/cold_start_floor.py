"""The floor of a cold `biomedgpt ask` on this machine: the work any inference path must do before its first token
once transformers' model classes are out of the way. Each repeat is a fresh process that imports torch,
tokenizers, safetensors, RDKit and our retrieval module; parses the SMILES; loads the evidence index, the default
model's encoder/adapter weights, the base LM and its LoRA adapter from safetensors (merging the adapter, casting
the linear weights to bf16 as the recommended decoding does); tokenizes a prompt of the length the default model
reads (question + two evidence descriptions); and runs one Llama prefill over it (a plain forward written below
over the loaded tensors). It is a measurement of the floor, not an inference path: no GIN, no chat template.

    python benchmarks/cold_start_floor.py --repeats 3

Compare with `time biomedgpt ask --max-new-tokens 1 ...` (README, docs/performance.md) measured the same day.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ASPIRIN = "CC(=O)Oc1ccccc1C(=O)O"
PROMPT = (  # what the default model reads before the aspirin question: two neighbours' descriptions + question
    "Known similar molecules: (1) The molecule is an acetate ester obtained by the formal condensation of phenol "
    "with acetic acid. It is a member of phenyl acetates and a member of benzenes. It derives from a phenol. (2) The "
    "molecule is an acetate ester that is phenyl acetate substituted by methoxy groups at positions 2 and 6 "
    "respectively. It is a dimethoxybenzene and a member of phenyl acetates. What is this molecule used for?"
)


def child() -> dict:
    """One cold start, timed from the interpreter's first line of this function (imports included)."""
    start = time.perf_counter()
    import torch
    import torch.nn.functional as F
    from rdkit import Chem
    from safetensors.torch import load_file
    from tokenizers import Tokenizer

    from biomedgpt.model.lm import converted_path
    from biomedgpt.retrieval import load_index, model_index_path

    torch.set_num_threads(2)
    imported = time.perf_counter()
    model_dir = REPO / "models" / "biomedgpt-small"
    mol = Chem.MolFromSmiles(ASPIRIN)
    index = load_index(model_index_path(model_dir))
    encoders = load_file(model_dir / "model.safetensors")
    lm_dir = converted_path(json.loads((model_dir / "config.json").read_text())["lm"]["name_or_path"])
    config = json.loads((lm_dir / "config.json").read_text())
    weights = load_file(lm_dir / "model.safetensors")
    adapter = load_file(model_dir / "lora" / "adapter_model.safetensors")
    lora = json.loads((model_dir / "lora" / "adapter_config.json").read_text())
    scale = lora["lora_alpha"] / lora["r"]
    for key in [k for k in adapter if k.endswith("lora_A.weight")]:
        name = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight") + ".weight"
        weights[name] += scale * (adapter[key.replace("lora_A", "lora_B")] @ adapter[key])
    linear = {k: v.to(torch.bfloat16) for k, v in weights.items() if k.endswith("proj.weight")}
    tokenizer = Tokenizer.from_file(str(lm_dir / "tokenizer.json"))
    ids = tokenizer.encode(PROMPT).ids + [0] * mol.GetNumAtoms()  # placeholder rows stand for the atoms
    loaded = time.perf_counter()
    with torch.inference_mode():
        logits = _prefill(weights, linear, config, torch.tensor([ids]), F)
    first = time.perf_counter()
    assert torch.isfinite(logits).all() and index is not None and encoders
    return {"imports_s": imported - start, "load_s": loaded - imported, "prefill_s": first - loaded,
            "prompt_tokens": len(ids)}


def _prefill(weights: dict, linear: dict, config: dict, ids, F):
    """A Llama forward over `ids: [1, T]` → the last position's logits (bf16 matmuls, fp32 residual)."""
    import torch

    heads, kv_heads, dim = config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]
    eps, steps = config["rms_norm_eps"], ids.shape[1]
    theta = config["rope_parameters"]["rope_theta"]
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float) / dim))
    freqs = torch.arange(steps, dtype=torch.float)[:, None] * inv_freq
    emb = torch.cat((freqs, freqs), -1)
    cos, sin = emb.cos().to(torch.bfloat16), emb.sin().to(torch.bfloat16)

    def norm(x, weight):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight

    def rope(x):
        half = x.shape[-1] // 2
        return x * cos + torch.cat((-x[..., half:], x[..., :half]), -1) * sin

    x = weights["model.embed_tokens.weight"][ids]
    for layer in range(config["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        h = norm(x, weights[p + "input_layernorm.weight"]).to(torch.bfloat16)
        q = (h @ linear[p + "self_attn.q_proj.weight"].T).view(1, steps, heads, dim).transpose(1, 2)
        k = (h @ linear[p + "self_attn.k_proj.weight"].T).view(1, steps, kv_heads, dim).transpose(1, 2)
        v = (h @ linear[p + "self_attn.v_proj.weight"].T).view(1, steps, kv_heads, dim).transpose(1, 2)
        attn = F.scaled_dot_product_attention(rope(q), rope(k), v, is_causal=True, enable_gqa=True)
        x = x + (attn.transpose(1, 2).reshape(1, steps, -1) @ linear[p + "self_attn.o_proj.weight"].T).float()
        h = norm(x, weights[p + "post_attention_layernorm.weight"]).to(torch.bfloat16)
        gate = F.silu(h @ linear[p + "mlp.gate_proj.weight"].T) * (h @ linear[p + "mlp.up_proj.weight"].T)
        x = x + (gate @ linear[p + "mlp.down_proj.weight"].T).float()
    x = norm(x[:, -1], weights["model.norm.weight"])
    return x @ weights["model.embed_tokens.weight"].T  # tied LM head


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child()))
        return
    runs = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        out = subprocess.run([sys.executable, __file__, "--child"], capture_output=True, text=True, check=True,
                             cwd=REPO)
        runs.append({**json.loads(out.stdout.strip().splitlines()[-1]), "wall_s": time.perf_counter() - start})
    for key in ("wall_s", "imports_s", "load_s", "prefill_s"):
        values = [r[key] for r in runs]
        print(f"{key:10s} median {statistics.median(values):.2f} s  (runs: {', '.join(f'{v:.2f}' for v in values)})")
    print(f"prompt: {runs[0]['prompt_tokens']} tokens")


if __name__ == "__main__":
    main()
