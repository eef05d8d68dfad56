"""Transformers-free stand-ins for the Llama LM and the ESM-2 encoder, for a fast cold start on a CPU.

Importing transformers' model classes costs ~1.7 s on the 2-core development machine, more than half of what a
cold `biomedgpt ask` may take (docs/performance.md, `benchmarks/cold_start_floor.py`). Inference on a CPU does not
need them: the fast decode loop (`fast_decode.PackedLM`) reads the LM's weight tensors directly, and the ESM-2
encoder is a small bidirectional transformer. So `BioMedGPT.from_pretrained(..., lite=True)` (what `biomedgpt
ask` and `chat` use) builds these two modules instead:

- `LiteLlama`: the weights of a `LlamaForCausalLM` under exactly the same parameter names (so the LoRA merge, the
  packed decode layout and `state_dict` work unchanged), plus its config and generation config as plain
  namespaces. It has no forward of its own: the first call that needs one (`forward`, `generate`, i.e. scoring,
  an option the fast loop does not implement, a GPU) builds the transformers model over the same tensors, once.
- `LiteEsm`: ESM-2 (`EsmModel`, rotary positions, pre-LayerNorm, ESM's erf GELU and token-dropout scaling), same
  parameter names and, tested, the same hidden states as transformers' implementation.

`lite_lm_reason` / `lite_esm_reason` say why a model cannot take the lite path (the caller then builds the
transformers classes as always). Training always uses transformers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from biomedgpt.model.checkpoint import checkpoint_files, iter_tensors

_GENERATION_FROM_CONFIG = ("bos_token_id", "eos_token_id", "pad_token_id")
# LM model types LiteLlama (and the fast decode loop) implement; others are loaded with transformers.
_LLAMA_TYPES = ("llama",)


# ---------------------------------------------------------------------------------------------- the LM
def lite_lm_reason(lm_dir: Path) -> str | None:
    """Why the LM in `lm_dir` cannot be loaded as a `LiteLlama` (None: it can)."""
    config_file = lm_dir / "config.json"
    if not config_file.is_file():
        return f"no config.json in {lm_dir}"
    config = json.loads(config_file.read_text())
    if config.get("model_type") not in _LLAMA_TYPES:
        return f"model type {config.get('model_type')!r}"
    if config.get("attention_bias") or config.get("mlp_bias") or config.get("hidden_act", "silu") != "silu":
        return "a Llama variant with biases or another activation"
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        return f"rope type {rope.get('rope_type')!r}"
    if config.get("quantization_config"):
        return "quantized weights"
    try:
        files = checkpoint_files(lm_dir)
    except Exception as err:  # noqa: BLE001 (any reason is a reason to use transformers)
        return str(err)
    if any(f.suffix != ".safetensors" for f in files):
        return "weights are not in safetensors"
    return None


# The LM's modules hold uninitialised tensors until `from_folder` assigns the checkpoint's: random init of 135M+
# parameters would be wasted work, and building on the meta device imports torch._dynamo (~1 s).
class _RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(size))
        self.eps = eps


class _Linear(nn.Module):
    """`nn.Linear` without bias or initialisation."""

    def __init__(self, inputs: int, outputs: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(outputs, inputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)




class _Attention(nn.Module):
    def __init__(self, c: SimpleNamespace, head_dim: int):
        super().__init__()
        kv = c.num_key_value_heads * head_dim
        self.q_proj = _Linear(c.hidden_size, c.num_attention_heads * head_dim)
        self.k_proj, self.v_proj = _Linear(c.hidden_size, kv), _Linear(c.hidden_size, kv)
        self.o_proj = _Linear(c.num_attention_heads * head_dim, c.hidden_size)


class _MLP(nn.Module):
    def __init__(self, c: SimpleNamespace):
        super().__init__()
        self.gate_proj = _Linear(c.hidden_size, c.intermediate_size)
        self.up_proj = _Linear(c.hidden_size, c.intermediate_size)
        self.down_proj = _Linear(c.intermediate_size, c.hidden_size)


class _DecoderLayer(nn.Module):
    def __init__(self, c: SimpleNamespace, head_dim: int):
        super().__init__()
        self.self_attn = _Attention(c, head_dim)
        self.mlp = _MLP(c)
        self.input_layernorm = _RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.post_attention_layernorm = _RMSNorm(c.hidden_size, c.rms_norm_eps)


class _Body(nn.Module):
    def __init__(self, c: SimpleNamespace, head_dim: int):
        super().__init__()
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size, _weight=torch.empty(c.vocab_size, c.hidden_size))
        self.layers = nn.ModuleList(_DecoderLayer(c, head_dim) for _ in range(c.num_hidden_layers))
        self.norm = _RMSNorm(c.hidden_size, c.rms_norm_eps)


class LiteLlama(nn.Module):
    """A Llama causal LM's weights, named as in transformers' `LlamaForCausalLM`, without transformers.

    `config` and `generation_config` are namespaces over the folder's JSON files (what the fast decode loop
    reads). `forward` and `generate` run transformers' model built over the same tensors (`hf()`).
    """

    def __init__(self, config: dict[str, Any], generation_config: dict[str, Any] | None = None):
        super().__init__()
        self.config_dict = dict(config)
        # LlamaConfig's defaults for keys older config.json files leave out
        defaults = {"num_key_value_heads": config["num_attention_heads"], "rms_norm_eps": 1e-6,
                    "tie_word_embeddings": False}
        self.config = SimpleNamespace(**{**defaults, **config})
        if generation_config is None:  # as transformers derives it from the model config
            generation_config = {k: config[k] for k in _GENERATION_FROM_CONFIG if config.get(k) is not None}
        self.generation_config = SimpleNamespace(**generation_config)
        c = self.config
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        self.model = _Body(c, head_dim)
        self.lm_head = _Linear(c.hidden_size, c.vocab_size)
        self._hf: list = []  # [tensor pointers, transformers model over them] once built (not a submodule)

    @classmethod
    def from_folder(cls, lm_dir: str | Path, dtype: torch.dtype = torch.float32) -> LiteLlama:
        """Read an HF Llama folder (config.json, safetensors weights, generation_config.json if present)."""
        lm_dir = Path(lm_dir)
        generation_file = lm_dir / "generation_config.json"
        generation = json.loads(generation_file.read_text()) if generation_file.is_file() else None
        model = cls(json.loads((lm_dir / "config.json").read_text()), generation)
        state = {}
        for path in checkpoint_files(lm_dir):
            for key, tensor in iter_tensors(path):
                state[key] = tensor.to(dtype) if tensor.is_floating_point() else tensor
        tied = model.config.tie_word_embeddings
        if tied:
            state.pop("lm_head.weight", None)
        missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
        missing = [k for k in missing if not (tied and k == "lm_head.weight")]
        unexpected = [k for k in unexpected if not k.endswith("rotary_emb.inv_freq")]
        if missing or unexpected:
            raise ValueError(f"{lm_dir}: not a Llama checkpoint for this config (missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]})")
        if tied:
            model.lm_head.weight = model.model.embed_tokens.weight
        return model.eval()

    @property
    def device(self) -> torch.device:
        return self.model.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.embed_tokens.weight.dtype

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def hf(self) -> nn.Module:
        """transformers' `LlamaForCausalLM` sharing this module's tensors (built on first call, ~2 s; built again
        if this module's tensors were replaced since, e.g. by `.to(dtype)`)."""
        tensors = [p.data_ptr() for p in self.parameters()]
        if not self._hf or self._hf[0] != tensors:
            from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

            config = AutoConfig.for_model(**self.config_dict)
            model = AutoModelForCausalLM.from_config(config, dtype=self.dtype)
            model.load_state_dict(self.state_dict(), assign=True)
            model.tie_weights()
            model.generation_config = GenerationConfig(**vars(self.generation_config))
            self._hf[:] = [tensors, model.to(self.device).eval()]
        return self._hf[1]

    def train(self, mode: bool = True) -> LiteLlama:
        """Inference only: gradients of `forward` would reach the transformers copy's parameters, not these."""
        if mode:
            raise RuntimeError("a lite LM is for inference; load the model with lite=False to train it")
        return super().train(False)

    def forward(self, *args, **kwargs):
        return self.hf()(*args, **kwargs)

    def generate(self, *args, **kwargs):
        return self.hf().generate(*args, **kwargs)


# ---------------------------------------------------------------------------------------------- ESM-2
def lite_esm_reason(arch: dict[str, Any] | None) -> str | None:
    """Why an ESM config (EsmConfig kwargs) cannot be run as a `LiteEsm` (None: it can)."""
    if arch is None:
        return "the encoder is a named folder, not an inline config"
    if arch.get("position_embedding_type", "absolute") != "rotary":
        return f"position embedding {arch.get('position_embedding_type')!r} (ESM-2 uses rotary)"
    if arch.get("emb_layer_norm_before") or arch.get("is_decoder") or arch.get("add_cross_attention"):
        return "an ESM variant (embedding layer norm, decoder or cross-attention)"
    return None


class _EsmSelf(nn.Module):
    def __init__(self, size: int):
        super().__init__()
        self.query, self.key, self.value = nn.Linear(size, size), nn.Linear(size, size), nn.Linear(size, size)


class _Dense(nn.Module):
    def __init__(self, inputs: int, outputs: int):
        super().__init__()
        self.dense = nn.Linear(inputs, outputs)


class _EsmAttention(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.self = _EsmSelf(size)
        self.output = _Dense(size, size)
        self.LayerNorm = nn.LayerNorm(size, eps=eps)


class _EsmLayer(nn.Module):
    def __init__(self, c: SimpleNamespace):
        super().__init__()
        self.attention = _EsmAttention(c.hidden_size, c.layer_norm_eps)
        self.intermediate = _Dense(c.hidden_size, c.intermediate_size)
        self.output = _Dense(c.intermediate_size, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)


class _EsmEncoder(nn.Module):
    def __init__(self, c: SimpleNamespace):
        super().__init__()
        self.layer = nn.ModuleList(_EsmLayer(c) for _ in range(c.num_hidden_layers))
        self.emb_layer_norm_after = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)


class _EsmEmbeddings(nn.Module):
    def __init__(self, c: SimpleNamespace):
        super().__init__()
        self.word_embeddings = nn.Embedding(c.vocab_size, c.hidden_size, padding_idx=c.pad_token_id)


class _Rotary(nn.Module):
    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        self.register_buffer("inv_freq", 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim)))


class _ContactHead(nn.Module):  # unused at inference; kept so that the checkpoint's keys have their places
    def __init__(self, features: int):
        super().__init__()
        self.regression = nn.Linear(features, 1)


# The masked-token fraction of ESM's pre-training, by which `token_dropout` rescales embeddings (as ESM does).
_ESM_MASK_RATIO_TRAIN = 0.15 * 0.8


class LiteEsm(nn.Module):
    """ESM-2 as transformers' `EsmModel(add_pooling_layer=False)` computes it, under the same parameter names.

    Call as `encoder(input_ids=..., attention_mask=...)`; returns a namespace with `last_hidden_state`
    `[B, L, hidden]`."""

    def __init__(self, arch: dict[str, Any]):
        super().__init__()
        reason = lite_esm_reason(arch)
        if reason is not None:
            raise ValueError(f"LiteEsm cannot run this encoder: {reason}")
        defaults = {"layer_norm_eps": 1e-12, "token_dropout": False, "rope_theta": 10000.0, "mask_token_id": None}
        self.config = c = SimpleNamespace(**{**defaults, **arch})
        self.head_dim = c.hidden_size // c.num_attention_heads
        self.embeddings = _EsmEmbeddings(c)
        self.rotary_embeddings = _Rotary(self.head_dim, c.rope_theta)
        self.encoder = _EsmEncoder(c)
        self.contact_head = _ContactHead(c.num_hidden_layers * c.num_attention_heads)
        self.register_load_state_dict_pre_hook(_legacy_rotary_keys)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> SimpleNamespace:
        c = self.config
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        x = self.embeddings.word_embeddings(input_ids)
        if c.token_dropout:
            masked = input_ids == c.mask_token_id
            x = x.masked_fill(masked[..., None], 0.0)
            observed = masked.sum(-1).float() / attention_mask.sum(-1)
            x = (x * (1 - _ESM_MASK_RATIO_TRAIN) / (1 - observed)[:, None, None]).to(x.dtype)
        x = (x * attention_mask[..., None]).to(x.dtype)
        batch, length, _ = x.shape
        freqs = torch.arange(length, device=x.device).float()[:, None] * self.rotary_embeddings.inv_freq.float()
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
        keys_valid = attention_mask.bool()[:, None, None, :]  # [B, 1, 1, L]: padding is never attended to
        heads = c.num_attention_heads
        for layer in self.encoder.layer:
            attention = layer.attention
            h = attention.LayerNorm(x)

            def split(t: torch.Tensor) -> torch.Tensor:
                return t.view(batch, length, heads, self.head_dim).transpose(1, 2)

            q = split(attention.self.query(h)) * self.head_dim**-0.5  # ESM scales q before the rotation
            k, v = split(attention.self.key(h)), split(attention.self.value(h))
            q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=keys_valid, scale=1.0)
            x = x + attention.output.dense(out.transpose(1, 2).reshape(batch, length, -1))
            h = _esm_gelu(layer.intermediate.dense(layer.LayerNorm(x)))
            x = x + layer.output.dense(h)
        return SimpleNamespace(last_hidden_state=self.encoder.emb_layer_norm_after(x))


def _legacy_rotary_keys(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
    """Checkpoints from transformers 4 keep one rotary `inv_freq` per layer; now there is one per model (as
    `EsmModel.load_hook` maps them)."""
    new_key = f"{prefix}rotary_embeddings.inv_freq"
    old_keys = sorted(k for k in state_dict
                      if k.startswith(prefix) and k.endswith(".attention.self.rotary_embeddings.inv_freq"))
    if old_keys and new_key not in state_dict:
        state_dict[new_key] = state_dict[old_keys[0]]
    for key in old_keys:
        del state_dict[key]


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE as ESM applies it (in float32, back to x's dtype)."""
    half = x.shape[-1] // 2
    xf = x.float()
    rotated = torch.cat((-xf[..., half:], xf[..., :half]), dim=-1)
    return (xf * cos.float() + rotated * sin.float()).to(x.dtype)


def _esm_gelu(x: torch.Tensor) -> torch.Tensor:
    """ESM's erf GELU, written as ESM writes it (F.gelu differs in the last bits)."""
    return x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))
