"""What a model is made of and how much accelerator memory each use of it needs, before loading any weight.

`summarize` builds the model on the meta device (or reads checkpoint headers) to count parameters per part and
their dtypes; `estimate_inference` / `estimate_training` turn that and the LM's shape into byte counts with the
accounting below, so a user knows which GPU a stage needs before starting it.

Accounting (per GPU, single process, no sharding; add ~1 GB for the CUDA context and allocator slack):
- weights: every parameter at its dtype's size (2 bytes for bf16);
- trainable parameters: 16 bytes each (ZeRO paper accounting for mixed precision with AdamW: 16-bit weight and
  gradient + fp32 master weight + two fp32 Adam moments), replacing their 2 bytes above;
- activations kept for backward, per token and decoder layer: 4·H + 2·Hq + 2·Hkv + 4·I elements (norm inputs and
  outputs, q/k/v, attention output, the SwiGLU gate/up/activation/product) at the compute dtype's size, with
  memory-efficient (SDPA/flash) attention; with gradient checkpointing only each layer's input (H) is kept plus
  one layer's activations during recomputation; plus the logits: tokens × vocab × 10 bytes (16-bit logits, fp32
  upcast and its gradient for the loss);
- inference: weights + KV cache (2 × layers × Hkv × tokens at the weights' dtype size) + last-position logits.
The frozen encoders run without gradients, so their activations are transient and small next to the LM's.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from biomedgpt.errors import ModelNotFoundError, UserError

PARTS = ("llm", "mol_structure_encoder", "proj_mol", "prot_structure_encoder", "proj_prot")
ADAPTERS = ("proj_mol", "proj_prot")
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
BYTES_PER_TRAINABLE = 16
LOGIT_BYTES = 10
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "int8": 1}
# Which parts each training stage updates (the paper's three stages; see PRODUCT.md).
STAGES = {
    "stage1-pretrain": {"trains_lm": True, "trains": (), "what": "continued LM pretraining on text"},
    "stage2-align": {"trains_lm": False, "trains": ADAPTERS, "what": "adapters only; LM and encoders frozen"},
    "stage3-finetune": {"trains_lm": True, "trains": ADAPTERS, "what": "LM + adapters on QA"},
}


@dataclass
class LMShape:
    layers: int
    hidden: int
    q_hidden: int
    kv_hidden: int
    intermediate: int
    vocab: int

    @classmethod
    def from_config(cls, config) -> LMShape:
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        return cls(config.num_hidden_layers, config.hidden_size, heads * head_dim, kv_heads * head_dim,
                   config.intermediate_size, config.vocab_size)

    def lora_parameters(self, rank: int) -> int:
        """rank × (in + out) for each of q, k, v, o, gate, up, down in every layer."""
        h, q, kv, inter = self.hidden, self.q_hidden, self.kv_hidden, self.intermediate
        per_layer = (h + q) + 2 * (h + kv) + (q + h) + 3 * (h + inter)
        return rank * per_layer * self.layers

    def activation_elements_per_token_layer(self) -> int:
        return 4 * self.hidden + 2 * self.q_hidden + 2 * self.kv_hidden + 4 * self.intermediate


@dataclass
class ModelSummary:
    name: str
    parameters: dict[str, int]  # part → count
    dtypes: dict[str, str]  # part → dtype name(s), e.g. "bfloat16" or "float32+int64"
    lm: LMShape
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.parameters.values())


@dataclass
class Workload:
    batch_size: int = 1
    seq_len: int = 2048
    lora_rank: int = 16
    dtype: str = "bfloat16"  # the weights' and compute dtype

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.seq_len < 1 or self.lora_rank < 1:
            raise UserError("batch size, sequence length and LoRA rank must be >= 1")
        if self.dtype not in DTYPE_BYTES:
            raise UserError(f"unknown dtype {self.dtype!r}; choose one of {', '.join(DTYPE_BYTES)}")

    @property
    def tokens(self) -> int:
        return self.batch_size * self.seq_len


# ---------------------------------------------------------------------------------------------- estimates
def estimate_inference(summary: ModelSummary, work: Workload) -> dict[str, int]:
    size = DTYPE_BYTES[work.dtype]
    weights = summary.total * size
    kv_cache = 2 * summary.lm.layers * summary.lm.kv_hidden * work.tokens * size
    logits = work.batch_size * summary.lm.vocab * 4
    return {"weights": weights, "kv_cache": kv_cache, "logits": logits, "total": weights + kv_cache + logits}


def estimate_training(summary: ModelSummary, work: Workload, stage: str, lora: bool, checkpointing: bool) -> dict:
    """Bytes for one training step of `stage` (see the module docstring for the accounting)."""
    if stage not in STAGES:
        raise UserError(f"unknown stage {stage!r}; choose one of {', '.join(STAGES)}")
    spec, lm, size = STAGES[stage], summary.lm, DTYPE_BYTES[work.dtype]
    loaded = {p: n for p, n in summary.parameters.items() if stage != "stage1-pretrain" or p == "llm"}
    trainable = sum(loaded.get(p, 0) for p in spec["trains"])
    lora_params = lm.lora_parameters(work.lora_rank) if lora else 0
    if spec["trains_lm"] and not lora:
        trainable += loaded["llm"]
    frozen = sum(loaded.values()) - trainable
    per_layer = lm.activation_elements_per_token_layer() * work.tokens * size
    if checkpointing:
        activations = lm.layers * lm.hidden * work.tokens * size + per_layer
    else:
        activations = lm.layers * per_layer
    logits = work.tokens * lm.vocab * LOGIT_BYTES
    parts = {
        "frozen_weights": frozen * size,
        "trainable_states": (trainable + lora_params) * BYTES_PER_TRAINABLE,
        "activations": activations + logits,
    }
    return {"trainable_parameters": trainable + lora_params, **parts, "total": sum(parts.values())}


def estimate_all(summary: ModelSummary, work: Workload) -> dict[str, Any]:
    rows = []
    for stage in STAGES:
        for lora in (False, True):
            for checkpointing in (False, True):
                rows.append({"stage": stage, "lora": lora, "gradient_checkpointing": checkpointing,
                             **estimate_training(summary, work, stage, lora, checkpointing)})
    return {"inference": estimate_inference(summary, work), "training": rows}


# ---------------------------------------------------------------------------------------------- summaries
def summarize(target: str, lm_dir: str | None = None) -> ModelSummary:
    """Summarise a preset name, one of our model folders, an HF LM folder, or an OpenBioMed `.pth` file."""
    path = Path(target).expanduser()
    from biomedgpt.config import PRESETS

    if target in PRESETS and not path.exists():
        from biomedgpt.config import preset

        return _from_config(target, preset(target), None)
    if path.is_file():
        return _from_openbiomed_file(path, lm_dir)
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(f"{target}: not a preset ({', '.join(PRESETS)}), a model folder or a checkpoint file")
    data = json.loads((path / "config.json").read_text())
    if "lm" in data:
        from biomedgpt.config import BioMedGPTConfig

        return _from_config(str(path), BioMedGPTConfig.from_dict(data), path)
    return _from_hf_lm_folder(path)


def _count(module) -> tuple[int, str]:
    params = list(module.parameters())
    dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in params})
    return sum(p.numel() for p in params), "+".join(dtypes)


def _from_config(name: str, config, base_dir: Path | None) -> ModelSummary:
    from biomedgpt.model.published import build_skeleton, empty_lm, hf_config, parse_dtype

    if config.lm.arch is not None:
        from transformers import AutoConfig

        lm_config = AutoConfig.for_model(**config.lm.arch)
    else:
        lm_config = hf_config(config.lm.name_or_path, base_dir)
    model = build_skeleton(config, empty_lm(lm_config, parse_dtype(config.lm.dtype)), tokenizer=None)
    counts = {part: _count(getattr(model, part)) for part in PARTS if getattr(model, part) is not None}
    summary = ModelSummary(name, {p: c[0] for p, c in counts.items()}, {p: c[1] for p, c in counts.items()},
                           LMShape.from_config(lm_config))
    if base_dir is not None:
        summary.dtypes.update(_stored_dtypes(base_dir))
    return summary


def _stored_dtypes(directory: Path) -> dict[str, str]:
    """dtypes as stored in a model folder's files (headers only)."""
    from biomedgpt.model.checkpoint import checkpoint_files, read_shapes

    files = [directory / "model.safetensors"] if (directory / "model.safetensors").is_file() else []
    if (directory / "lm").is_dir():
        files += [f if f.is_absolute() else directory / f for f in checkpoint_files(directory / "lm")]
    found: dict[str, set[str]] = {}
    for key, (_, dtype) in read_shapes(files).items():
        part = "llm" if str(key).startswith(("model.", "lm_head.")) else key.split(".")[0]
        found.setdefault(part, set()).add(str(dtype).removeprefix("torch."))
    return {part: "+".join(sorted(d)) + " (stored)" for part, d in found.items() if part in PARTS}


def _from_hf_lm_folder(folder: Path) -> ModelSummary:
    from biomedgpt.model.published import empty_lm, hf_config

    config = hf_config(folder)
    if not hasattr(config, "num_hidden_layers") or getattr(config, "model_type", "") == "esm":
        raise UserError(f"{folder}: not a causal LM folder (model_type {getattr(config, 'model_type', None)!r})")
    count, dtype = _count(empty_lm(config, torch.float32))
    stored = _hf_stored_dtype(folder)
    return ModelSummary(str(folder), {"llm": count}, {"llm": stored or dtype}, LMShape.from_config(config))


def _hf_stored_dtype(folder: Path) -> str | None:
    from biomedgpt.model.checkpoint import checkpoint_files, read_shapes

    try:
        files = checkpoint_files(folder)
    except ModelNotFoundError:
        return None
    dtypes = {str(d).removeprefix("torch.") for _, d in read_shapes(files[:1]).values()}
    return "+".join(sorted(dtypes)) + " (stored)"


def _from_openbiomed_file(path: Path, lm_dir: str | None) -> ModelSummary:
    """Count the parameters in the file itself (headers / mmap only), grouped by the five published prefixes."""
    from biomedgpt.model.checkpoint import COMPUTED_BUFFERS, read_shapes
    from biomedgpt.model.published import OPENBIOMED_DROP, hf_config

    skip = [re.compile(p) for p in (*OPENBIOMED_DROP, *COMPUTED_BUFFERS, r"running_(mean|var)$",
                                    r"num_batches_tracked$")]
    counts: dict[str, int] = {}
    dtypes: dict[str, set[str]] = {}
    shapes = read_shapes([path])
    for key, (shape, dtype) in shapes.items():
        part = key.split(".")[0]
        if part not in PARTS:
            raise UserError(f"{path}: key {key!r} is not under one of the published prefixes {PARTS}")
        if any(p.search(key) for p in skip):
            continue
        counts[part] = counts.get(part, 0) + int(torch.Size(shape).numel())
        dtypes.setdefault(part, set()).add(str(dtype).removeprefix("torch."))
    lm_config = hf_config(lm_dir or "PharMolix/BioMedGPT-LM-7B")
    if "llm.model.embed_tokens.weight" in shapes:
        lm_config.vocab_size = shapes["llm.model.embed_tokens.weight"][0][0]
    notes = [] if lm_dir else ["LM shape from the published BioMedGPT-LM-7B config (give --lm-dir to override)"]
    return ModelSummary(str(path), counts, {p: "+".join(sorted(d)) for p, d in dtypes.items()},
                        LMShape.from_config(lm_config), notes)


# ---------------------------------------------------------------------------------------------- report
def _gb(n: int) -> str:
    return f"{n / 1e9:8.2f} GB"


def render(summary: ModelSummary, work: Workload, estimates: dict[str, Any]) -> str:
    lines = [f"model: {summary.name}", "", f"{'part':<24}{'parameters':>16}  dtype"]
    for part, count in summary.parameters.items():
        lines.append(f"{part:<24}{count:>16,}  {summary.dtypes.get(part, '?')}")
    lines.append(f"{'total':<24}{summary.total:>16,}")
    lm = summary.lm
    lines += ["", f"LM: {lm.layers} layers, hidden {lm.hidden}, KV width {lm.kv_hidden}, "
                  f"MLP {lm.intermediate}, vocabulary {lm.vocab}"]
    lines += summary.notes
    inf = estimates["inference"]
    lines += ["", f"estimated memory, {work.dtype} weights, batch {work.batch_size} × {work.seq_len} tokens "
                  f"(+ ~1 GB CUDA context; see docs/published-weights.md for the accounting):",
              f"  inference: {_gb(inf['total'])}  (weights {_gb(inf['weights']).strip()}, "
              f"KV cache {_gb(inf['kv_cache']).strip()})", "",
              f"  {'training stage':<18}{'LoRA':<6}{'grad ckpt':<11}{'trainable':>15}{'frozen':>12}"
              f"{'trained':>12}{'activations':>13}{'total':>12}"]
    for row in estimates["training"]:
        lines.append(
            f"  {row['stage']:<18}{'yes' if row['lora'] else 'no':<6}"
            f"{'yes' if row['gradient_checkpointing'] else 'no':<11}{row['trainable_parameters']:>15,}"
            f"{_gb(row['frozen_weights']):>12}{_gb(row['trainable_states']):>12}{_gb(row['activations']):>13}"
            f"{_gb(row['total']):>12}")
    lines += ["", "  stages: " + "; ".join(f"{k}: {v['what']}" for k, v in STAGES.items()),
              f"  LoRA: rank {work.lora_rank} on {', '.join(LORA_TARGETS)}",
              f"  frozen = frozen weights at {work.dtype}; trained = trainable parameters × {BYTES_PER_TRAINABLE} "
              f"bytes (weight + gradient + fp32 master + AdamW moments)"]
    return "\n".join(lines)


def inspect_model(target: str, work: Workload, lm_dir: str | None = None) -> dict:
    """Everything `biomedgpt inspect` prints, as a dict (the `--json` output)."""
    summary = summarize(target, lm_dir)
    estimates = estimate_all(summary, work)
    return {"summary": asdict(summary) | {"total": summary.total}, "workload": asdict(work), **estimates,
            "text": render(summary, work, estimates)}
