"""A lean generation loop for Llama-family LMs on CPU: the same tokens as Hugging Face greedy `generate`, with
less work per token.

Where HF `generate` spends its time at batch 1 on a small model is not the matmuls but the machinery around
them (cache objects, mask building, logits processors, stopping criteria, hooks): hundreds of small Python
calls per token. This module keeps only what a decode step needs:

- a preallocated KV cache per layer, `[B, kv_heads, max_len, head_dim]`, written in place and read through a
  view of the filled length (no reallocation, no concatenation);
- fused projections (q|k|v and gate|up as one matmul each) and RoPE applied once to q and k together;
- grouped-query attention without copying K/V (query heads packed per KV head at decode time);
- optional weight-only int8/int4/bf16 weights (`biomedgpt.model.quantize`);
- greedy / temperature / top-k / top-p sampling, repetition penalty, EOS and stop strings per row, on tensors;
- every decode step in one compiled C call (`biomedgpt.model.native`): for one prompt near the memory-bandwidth
  bound, for batches and beams near the cores' FMA rate; the PyTorch step below is the reference and the fallback;
- on CPUs without bf16 instructions, prompts of the reduced-precision modes run through the float32 weights
  (`PackedLM.prefill`), where PyTorch's bf16 products would be several times slower.

The prefill runs on `inputs_embeds` (the spliced prompt: text embeddings with molecule/protein rows written in),
later steps on token ids, exactly like `BioMedGPT.generate` with HF. With `quantize="none"` the weights are the
LM's own tensors (no copy) and the results equal HF greedy decoding token for token (tested).
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F

from biomedgpt.model.quantize import QUANT_MODES, PackedLinear, check_mode, compute_dtype

logger = logging.getLogger(__name__)

__all__ = ["QUANT_MODES", "ENGINES", "generate", "try_generate", "packed_lm", "PackedLM"]

SUPPORTED_MODEL_TYPES = ("llama",)
# generate() kwargs the fast loop implements; anything else (beam search, min_new_tokens, ...) goes to HF.
SUPPORTED_KWARGS = frozenset({
    "max_new_tokens", "do_sample", "temperature", "top_p", "top_k", "repetition_penalty", "pad_token_id",
    "eos_token_id", "stop_strings", "tokenizer", "streamer", "stopping_criteria",
    "num_beams", "length_penalty", "early_stopping",
})
# With num_beams > 1 the loop does HF's beam search; these options then go to HF generate instead.
BEAM_UNSUPPORTED = ("do_sample", "stop_strings", "streamer", "stopping_criteria")
ENGINES = ("fast", "hf")
DEFAULT_ENGINE = "fast"  # measured faster than HF generate at every batch size (docs/performance.md)
DEFAULT_QUANTIZE = "none"  # reduced precision changes answers; opt in with quantize="int8" (docs/performance.md)


def unsupported_reason(llm, generate_kwargs: dict) -> str | None:
    """Why the fast loop cannot run this LM with these generate() kwargs, or None when it can."""
    config = llm.config
    if getattr(config, "model_type", None) not in SUPPORTED_MODEL_TYPES:
        return f"model type {getattr(config, 'model_type', None)!r} (supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        return "linear layers with bias"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"activation {config.hidden_act!r}"
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        return f"rope type {rope.get('rope_type')!r}"
    if llm.device.type != "cpu":
        return f"device {llm.device.type} (the fast loop targets CPU; HF generate is already good on GPUs)"
    extra = sorted(k for k, v in generate_kwargs.items() if k not in SUPPORTED_KWARGS and v is not None)
    if extra:
        return f"generate options {extra}"
    if generate_kwargs.get("stop_strings") and generate_kwargs.get("tokenizer") is None:
        return "stop_strings without a tokenizer"
    if (generate_kwargs.get("num_beams") or 1) > 1:
        extra = [k for k in BEAM_UNSUPPORTED if generate_kwargs.get(k)]
        if (generate_kwargs.get("repetition_penalty") or 1.0) != 1.0:
            extra.append("repetition_penalty")
        if extra:
            return f"beam search with {extra}"
    return None


@dataclass
class SamplingOptions:
    """What HF's generation config would say, resolved once. `eos_token_ids` may be empty."""

    max_new_tokens: int
    eos_token_ids: tuple[int, ...]
    pad_token_id: int
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    stop_strings: tuple[str, ...] = ()
    tokenizer: object = None
    stopping_criteria: object = None  # HF StoppingCriteria(List): called as criteria(new_tokens, scores) -> [B] bool
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: bool | str = False

    @classmethod
    def from_generate_kwargs(cls, llm, kwargs: dict) -> SamplingOptions:
        """Resolve kwargs against the LM's generation_config, the way HF `generate` does."""
        gen = llm.generation_config

        def pick(name, default=None):
            value = kwargs.get(name)
            if value is None:
                value = getattr(gen, name, None)
            return default if value is None else value

        eos = pick("eos_token_id", getattr(llm.config, "eos_token_id", None))
        eos_ids = () if eos is None else tuple([eos] if isinstance(eos, int) else eos)
        pad = pick("pad_token_id", eos_ids[0] if eos_ids else 0)
        do_sample = bool(pick("do_sample", False))
        max_new = kwargs.get("max_new_tokens") or getattr(gen, "max_new_tokens", None) or 20
        return cls(
            max_new_tokens=int(max_new), eos_token_ids=eos_ids, pad_token_id=int(pad), do_sample=do_sample,
            temperature=float(pick("temperature", 1.0)) if do_sample else 1.0,
            top_k=int(pick("top_k", 50)) if do_sample and pick("top_k", 50) else None,
            top_p=float(pick("top_p", 1.0)) if do_sample else 1.0,
            repetition_penalty=float(pick("repetition_penalty", 1.0)),
            stop_strings=tuple([kwargs["stop_strings"]] if isinstance(kwargs.get("stop_strings"), str)
                               else kwargs.get("stop_strings") or ()),
            tokenizer=kwargs.get("tokenizer"),
            stopping_criteria=kwargs.get("stopping_criteria") or None,
            num_beams=int(pick("num_beams", 1)), length_penalty=float(pick("length_penalty", 1.0)),
            early_stopping=pick("early_stopping", False),
        )


class _Layer:
    """One decoder layer's weights in decode layout."""

    def __init__(self, layer, mode: str):
        attn, mlp = layer.self_attn, layer.mlp
        fused = mode != "none"  # fusing copies the weights; with mode "none" the LM's own tensors are used as is
        if fused:
            def fuse(*linears) -> PackedLinear:
                weights = [m.weight for m in linears]
                if mode != "bf16":
                    return PackedLinear(torch.cat(weights), mode)
                # bf16: each weight converted straight into its rows of the fused matrix, so the new memory is
                # written (and page-faulted) once; converting and then concatenating wrote it twice (SmolLM2-135M:
                # 0.19 -> 0.10 s, most of it page faults)
                # (`torch.cat(..., out=)` converts on a slow path: 0.21 s)
                sizes = [w.shape[0] for w in weights]
                out = torch.empty(sum(sizes), weights[0].shape[1], dtype=torch.bfloat16, device=weights[0].device)
                for rows, weight in zip(out.split(sizes), weights):
                    rows.copy_(weight)
                return PackedLinear(out, mode)

            self.projections = [fuse(attn.q_proj, attn.k_proj, attn.v_proj)]
            self.mlp_in = [fuse(mlp.gate_proj, mlp.up_proj)]
        else:
            self.projections = [PackedLinear(p.weight) for p in (attn.q_proj, attn.k_proj, attn.v_proj)]
            self.mlp_in = [PackedLinear(mlp.gate_proj.weight), PackedLinear(mlp.up_proj.weight)]
        self.o_proj = PackedLinear(attn.o_proj.weight, mode)
        self.down_proj = PackedLinear(mlp.down_proj.weight, mode)
        self.input_norm = layer.input_layernorm.weight.detach()
        self.post_norm = layer.post_attention_layernorm.weight.detach()
        self.qkv_rows = (attn.q_proj.weight.shape[0], attn.k_proj.weight.shape[0], attn.v_proj.weight.shape[0])

    @property
    def linears(self) -> list[PackedLinear]:
        return [*self.projections, *self.mlp_in, self.o_proj, self.down_proj]

    def split_linears(self) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """(weight, int8 scales or None) of q, k, v, o, gate, up, down, as views into the fused matrices (for the
        native step, which reads them in place)."""

        def parts(linears: list[PackedLinear], sizes: tuple[int, ...]) -> list[tuple[torch.Tensor, Any]]:
            if len(linears) == len(sizes):
                return [(p.weight, getattr(p, "scales", None)) for p in linears]
            (fused,) = linears
            scales = fused.scales.split(sizes) if hasattr(fused, "scales") else [None] * len(sizes)
            return list(zip(fused.weight.split(sizes), scales))

        inter = self.down_proj.in_features
        return [*parts(self.projections, self.qkv_rows), (self.o_proj.weight, getattr(self.o_proj, "scales", None)),
                *parts(self.mlp_in, (inter, inter)),
                (self.down_proj.weight, getattr(self.down_proj, "scales", None))]

    def qkv(self, h: torch.Tensor) -> torch.Tensor:
        return self.projections[0](h) if len(self.projections) == 1 else torch.cat([p(h) for p in self.projections], -1)

    def gate_up(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if len(self.mlp_in) == 1:
            return self.mlp_in[0](h).chunk(2, dim=-1)
        return self.mlp_in[0](h), self.mlp_in[1](h)

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.linears)


class PackedLM:
    """A Llama-family causal LM's weights laid out for decoding, plus its forward over a static KV cache.

    Built once per (model, mode) by `packed_lm`; holds references to (mode "none") or quantized copies of the LM's
    weights, so it must be rebuilt when the LM's weights change (the cache key tracks parameter versions).
    """

    def __init__(self, llm, mode: str = "none"):
        check_mode(mode)
        config = llm.config
        self.mode = mode
        base = llm.model
        # The residual stream (and norms) stay in the LM's dtype; matmuls, attention and the KV cache run in
        # `dtype` (bf16 for the reduced-precision modes), so the precision loss is confined to the weights.
        self.residual_dtype = base.embed_tokens.weight.dtype
        self.dtype = compute_dtype(mode, self.residual_dtype)
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = getattr(config, "num_key_value_heads", None) or self.num_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.num_heads
        self.eps = config.rms_norm_eps
        self.embed = base.embed_tokens.weight.detach()  # row lookups only: kept in the LM's dtype, never copied
        self.layers = [_Layer(layer, mode) for layer in base.layers]
        self.final_norm = base.norm.weight.detach()
        # The LM head (often tied to the embeddings) is the most precision-sensitive matrix: at most 8 bits, as
        # llama.cpp keeps it (SmolLM2's GGUF: Q8_0 embeddings, Q4_1 layers). int4 there cost +8% perplexity.
        self.lm_head = PackedLinear(llm.lm_head.weight, "int8" if mode == "int4" else mode)
        rope = getattr(config, "rope_parameters", None) or {}
        theta = rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))
        # Same formula and dtypes as HF's default rotary embedding, so positions give bit-identical cos/sin.
        self.inv_freq = 1.0 / (theta ** (torch.arange(0, self.head_dim, 2, dtype=torch.float) / self.head_dim))
        # Where prompts run (`_Prefilled`): these weights, or the LM's own float32 ones when this CPU multiplies
        # bf16 slowly (set by `packed_lm`; the KV cache stays in this model's dtype either way).
        self.prefill: PackedLM | None = None

    @property
    def nbytes_per_token(self) -> int:
        """Weight bytes one decode step reads (all layers + the LM head; embedding lookups read one row)."""
        return sum(layer.nbytes for layer in self.layers) + self.lm_head.nbytes

    def new_cache(self, batch: int, max_len: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        shape = (batch, self.num_kv_heads, max_len, self.head_dim)
        return [(torch.empty(shape, dtype=self.dtype), torch.empty(shape, dtype=self.dtype)) for _ in self.layers]

    def rope_tables(self, positions: torch.Tensor,
                    dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin for `positions: [B, T]` → `[B, 1, T, head_dim]` each, in `dtype` (default: the compute dtype);
        sin carries rotate_half's sign so that rope(x) = x * cos + swap_halves(x) * sin (one flip instead of
        slice/negate/concatenate)."""
        dtype = self.dtype if dtype is None else dtype
        freqs = positions[..., None].float() * self.inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        half = self.head_dim // 2
        sin = emb.sin()
        sin = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)
        return emb.cos().to(dtype)[:, None], sin.to(dtype)[:, None]

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], cache, start: int,
                mask: torch.Tensor | None, all_positions: bool = False, prefix: SharedPrefix | None = None,
                ) -> torch.Tensor:
        """Run all layers on `x: [B, T, hidden]` whose positions are `start..start+T-1` in the cache; returns the
        logits of the last position, `[B, vocab]` in float32 (`all_positions`: of every position, `[B, T, vocab]`).

        `mask`: bool `[B, 1, T, start+T]` (True = attend) or None for plain causal attention without padding.
        `prefix` (decode steps only, T = 1): keys and values that every group of `B / prefix batch` consecutive
        rows shares and attends to before its own `cache` (beam search: a prompt's beams share its prefill).
        """
        batch, steps, _ = x.shape
        cos, sin = rope
        heads, kv_heads, dim = self.num_heads, self.num_kv_heads, self.head_dim
        end = start + steps
        hidden = x.shape[-1:]
        for i, (layer, (k_cache, v_cache)) in enumerate(zip(self.layers, cache)):
            h = F.rms_norm(x, hidden, layer.input_norm, self.eps).to(self.dtype)
            qkv = layer.qkv(h).view(batch, steps, heads + 2 * kv_heads, dim).transpose(1, 2)  # [B, H+2KV, T, D]
            qk, v = qkv[:, : heads + kv_heads], qkv[:, heads + kv_heads :]
            swapped = qk.unflatten(-1, (2, dim // 2)).flip(-2).flatten(-2)  # [x1, x2] -> [x2, x1]
            qk = qk * cos + swapped * sin
            q, k = qk[:, :heads], qk[:, heads:]
            k_cache[:, :, start:end] = k
            v_cache[:, :, start:end] = v
            if prefix is None:
                attn = _attention(q, k_cache[:, :, :end], v_cache[:, :, :end], mask)  # [B, H, T, D]
            else:
                attn = prefix.attention(i, q, k_cache[:, :, :end], v_cache[:, :, :end])
            x = x + layer.o_proj(attn.transpose(1, 2).reshape(batch, steps, heads * dim))
            h = F.rms_norm(x, hidden, layer.post_norm, self.eps).to(self.dtype)
            gate, up = layer.gate_up(h)
            x = x + layer.down_proj(F.silu(gate) * up)
        last = x if all_positions else x[:, -1]
        return self.lm_head(F.rms_norm(last, hidden, self.final_norm, self.eps).to(self.dtype)).float()


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Grouped-query attention. q: [B, H, T, D]; k, v: [B, KV, S, D] (views into the cache, not copied)."""
    batch, heads, steps, dim = q.shape
    kv_heads = k.shape[1]
    if steps == 1 and heads != kv_heads:
        # Decode: the G = H/KV query heads sharing a KV head become G "positions" of that head (HF's pack_gqa).
        packed = q.reshape(batch, kv_heads, heads // kv_heads, dim)
        out = F.scaled_dot_product_attention(packed, k, v, attn_mask=mask)
        return out.view(batch, heads, 1, dim)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None and steps > 1,
                                          enable_gqa=heads != kv_heads)


def resolve_engine(engine: str | None, quantize: str | None) -> tuple[str, str]:
    """Fill in the defaults and validate: returns (engine, quantize)."""
    engine = DEFAULT_ENGINE if engine is None else engine
    quantize = DEFAULT_QUANTIZE if quantize is None else quantize
    if engine not in ENGINES:
        raise ValueError(f"unknown generation engine {engine!r}; choose one of {', '.join(ENGINES)}")
    check_mode(quantize)
    return engine, quantize


def try_generate(llm, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, engine: str | None = None,
                 quantize: str | None = None, **generate_kwargs) -> torch.Tensor | None:
    """The fast loop's output, or None when the caller should use HF `generate` (engine "hf", or options or a
    model the fast loop does not support; quantization needs the fast loop, so it is then dropped with a warning)."""
    engine, quantize = resolve_engine(engine, quantize)
    reason = "engine='hf' was asked for" if engine == "hf" else unsupported_reason(llm, generate_kwargs)
    if reason is None:
        return generate(llm, inputs_embeds, attention_mask, quantize=quantize, **generate_kwargs)
    log = logger.warning if quantize != "none" else logger.debug
    log("using HF generate (%s)%s", reason, f"; quantize={quantize!r} ignored" if quantize != "none" else "")
    return None


# ---------------------------------------------------------------------------------------------- the loop
_PACKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # llm -> {mode: (weights version, PackedLM)}


def _weights_version(llm) -> int:
    """Changes whenever any LM parameter is replaced or modified in place (optimizer step, load_state_dict)."""
    return hash(tuple((p.data_ptr(), p._version) for p in llm.parameters()))


def packed_lm(llm, mode: str = "none") -> PackedLM:
    """The `PackedLM` for `llm` in `mode`, built on first use (int8: 0.4 s for SmolLM2-135M) and reused until
    the LM's weights change."""
    check_mode(mode)
    version = _weights_version(llm)
    per_mode = _PACKED.setdefault(llm, {})
    if mode not in per_mode or per_mode[mode][0] != version:
        with torch.no_grad():
            packed = PackedLM(llm, mode)
        reduced = packed.dtype != packed.residual_dtype and packed.residual_dtype == torch.float32
        if reduced and not bf16_matmul_is_fast():
            packed.prefill = packed_lm(llm, "none")
        per_mode[mode] = (version, packed)
    return per_mode[mode][1]


@lru_cache(maxsize=1)
def bf16_matmul_is_fast() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (x86 AVX512-BF16 or AMX, Arm BF16). Without it,
    PyTorch's bf16 (and int8-weight) products run several times slower than float32 ones (measured on an AMD Zen 3:
    10 vs 72 GFLOP/s for a 3,200 x 576 by 576 x 1,536 product), so prompts are then run through the float32 weights
    (`PackedLM.prefill`); the compiled decode steps widen the weights themselves and do not care. Unknown (no
    /proc/cpuinfo): assumed fast, PyTorch's own choice."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            flags = next((line for line in info if line.startswith(("flags", "Features"))), None)
    except OSError:
        return True
    if flags is None:
        return True
    words = set(flags.split(":", 1)[-1].split())
    return bool(words & {"avx512_bf16", "amx_bf16", "bf16"})


@torch.inference_mode()
def generate(llm, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None = None, quantize: str = "none",
             **generate_kwargs) -> torch.Tensor:
    """Decode from a (left-padded) prompt given as embeddings; returns only the new tokens, `[B, new]`.

    inputs_embeds: [B, T, hidden]; attention_mask: [B, T] (1 = token, 0 = left padding). Rows stop on their own
    (EOS or a stop string) and are then filled with `pad_token_id`; the loop ends when every row has stopped or
    after `max_new_tokens`, as HF `generate` does. `generate_kwargs`: see `SUPPORTED_KWARGS`.
    """
    reason = unsupported_reason(llm, generate_kwargs)
    if reason is not None:
        raise ValueError(f"the fast decode loop does not support {reason}")
    options = SamplingOptions.from_generate_kwargs(llm, generate_kwargs)
    model = packed_lm(llm, quantize)
    state = _Prefilled(model, inputs_embeds, attention_mask, options.max_new_tokens)
    if options.num_beams > 1:
        return _beam_search(state, options)
    if options.max_new_tokens > 1:  # one token needs no decode step
        state.use_native()
    streamer = generate_kwargs.get("streamer")
    logits = state.logits
    decoder = _TokenChooser(options, state.batch, logits.shape[-1])
    produced: list[torch.Tensor] = []
    for step in range(options.max_new_tokens):
        tokens = decoder.choose(logits)
        produced.append(tokens)
        if options.stopping_criteria is not None:
            decoder.apply_criteria(torch.stack(produced, dim=1), logits)
        if streamer is not None:
            streamer.put(tokens)
        if not decoder.any_unfinished() or step == options.max_new_tokens - 1:
            break
        logits = state.step(tokens, step)
    if streamer is not None:
        streamer.end()
    return torch.stack(produced, dim=1)


class SharedPrefix:
    """Keys and values of prompts that several decode rows continue (a prompt's beams), stored once per prompt.

    With 4 beams and ChEBI-20's evidence prompts (~400 tokens) the prompt is most of every row's keys: reading it
    once per prompt instead of once per beam cut the attention's memory traffic (at 8 x 4 rows it read more bytes
    per step than the weights). `layers[i]` is `(k, v)`, each `[P, KV, S, D]` for P prompts; `mask` is bool
    `[P, 1, 1, S]` (True = a real token) or None.
    """

    def __init__(self, layers: list[tuple[torch.Tensor, torch.Tensor]], mask: torch.Tensor | None) -> None:
        self.layers = layers
        self.valid = mask
        dtype = layers[0][0].dtype
        # PyTorch's CPU flash kernel takes an additive mask in the query's dtype.
        self.bias = None if mask is None else torch.zeros(mask.shape, dtype=dtype).masked_fill(~mask, float("-inf"))
        # A prompt without a real token: the kernel returns 0 with a log-sum-exp of 0 (not -inf) for it, which
        # would take weight from the row's own keys; give it -inf so that only they count.
        self.empty = None if mask is None or bool(mask.any(-1).all()) else ~mask.any(-1).view(-1, 1, 1)

    def select(self, prompts: torch.Tensor) -> SharedPrefix:
        """The same prefix restricted to `prompts` (indices, in order)."""
        kept = SharedPrefix.__new__(SharedPrefix)
        kept.layers = [(k[prompts], v[prompts]) for k, v in self.layers]
        kept.valid = None if self.valid is None else self.valid[prompts]
        kept.bias = None if self.bias is None else self.bias[prompts]
        kept.empty = None if self.empty is None else self.empty[prompts]
        return kept

    def attention(self, i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Decode-step attention of `q: [N, H, 1, D]` over layer i's prefix (rows r*R..r*R+R-1 share prompt r)
        followed by each row's own keys `k, v: [N, KV, T, D]`.

        Each part runs PyTorch's fused CPU attention, which also returns its softmax normaliser (log-sum-exp);
        the two partial results are then combined exactly (as flash attention combines blocks), in float32.
        """
        pk, pv = self.layers[i]
        prompts, kv_heads, _, dim = pk.shape
        rows, heads = q.shape[0], q.shape[1]
        per_prompt, group = rows // prompts, heads // kv_heads
        # A prompt's R rows x G query heads of one KV head become R*G "positions" of that head (as pack_gqa).
        shared_q = q.reshape(prompts, per_prompt, kv_heads, group, dim).transpose(1, 2)
        shared_q = shared_q.reshape(prompts, kv_heads, per_prompt * group, dim)
        shared, shared_lse = _attention_lse(shared_q, pk, pv, self.bias)  # [P, KV, R*G, D], [P, KV, R*G]
        if self.empty is not None:
            shared_lse = shared_lse.masked_fill(self.empty, float("-inf"))
        shared = shared.view(prompts, kv_heads, per_prompt, group, dim).transpose(1, 2)
        shared = shared.reshape(rows, kv_heads, group, dim)
        shared_lse = shared_lse.view(prompts, kv_heads, per_prompt, group).transpose(1, 2)
        shared_lse = shared_lse.reshape(rows, kv_heads, group)
        own, own_lse = _attention_lse(q.reshape(rows, kv_heads, group, dim), k, v, None)  # [N, KV, G, D]
        lse = torch.logaddexp(shared_lse, own_lse)
        out = shared.float() * (shared_lse - lse).exp()[..., None] + own.float() * (own_lse - lse).exp()[..., None]
        return out.to(q.dtype).reshape(rows, heads, 1, dim)


def _attention_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q k^T / sqrt(D) + bias) v and the float32 log-sum-exp of each query's scores (CPU flash kernel)."""
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, False, attn_mask=bias)


class _Prefilled:
    """A (left-padded) prompt run through the LM once: its KV cache, masks and positions, ready to decode
    `max_new` tokens one step at a time (`step`)."""

    def __init__(self, model: PackedLM, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None,
                 max_new: int):
        self.model = model
        batch, prompt_len, _ = inputs_embeds.shape
        if attention_mask is None:
            attention_mask = torch.ones(batch, prompt_len, dtype=torch.long)
        valid = attention_mask.bool()
        self.batch, self.prompt_len = batch, prompt_len
        self.padded = not bool(valid.all())
        max_len = prompt_len + max_new
        # HF's position rule for left padding: each row counts from 0 at its first real token.
        positions = (attention_mask.long().cumsum(-1) - 1).masked_fill(~valid, 0)
        self.cos_all, self.sin_all = model.rope_tables(torch.arange(int(positions.max()) + max_new + 1)[None])
        self.key_valid = torch.ones(batch, 1, 1, max_len, dtype=torch.bool)
        self.key_valid[:, 0, 0, :prompt_len] = valid
        prefill_mask = None
        if self.padded:
            causal = torch.ones(prompt_len, prompt_len, dtype=torch.bool).tril()
            # A padding query attends to itself only, so no row of the softmax is empty (that would give NaN).
            prefill_mask = (causal & self.key_valid[..., :prompt_len]) | torch.eye(prompt_len, dtype=torch.bool)
        self.cache = model.new_cache(batch, max_len)
        runner = model.prefill or model
        if runner is model:
            self.logits = model.forward(inputs_embeds.to(model.residual_dtype),
                                        _rope_at(self.cos_all, self.sin_all, positions), self.cache, 0, prefill_mask)
        else:  # the prompt through the LM's own float32 weights, its keys and values then stored in `model`'s cache
            prompt_cache = runner.new_cache(batch, prompt_len)
            cos, sin = runner.rope_tables(torch.arange(int(positions.max()) + 1)[None])
            self.logits = runner.forward(inputs_embeds.to(runner.residual_dtype), _rope_at(cos, sin, positions),
                                         prompt_cache, 0, prefill_mask)
            for (k, v), (prompt_k, prompt_v) in zip(self.cache, prompt_cache):
                k[:, :, :prompt_len] = prompt_k
                v[:, :, :prompt_len] = prompt_v
        self.next_position = positions[:, -1:] + 1  # [B, 1]
        self.prefix: SharedPrefix | None = None  # set by `expand`
        self.native = None  # set by `use_native`
        self.native_rope: tuple[torch.Tensor, torch.Tensor] | None = None  # float32 cos/sin of every position

    def use_native(self) -> bool:
        """Run the decode steps through the compiled step (`biomedgpt.model.native`) when it is available and
        supports the weights: the batch-1 step for one prompt, the batched one for several rows or beams (call it
        again after `expand` and `keep`, which replace the caches; they do). Returns whether it will."""
        from biomedgpt.model import native

        self.native = None
        lib = native.load()
        if lib is None:
            return False
        try:  # the steps check the weights and the caches (native.unsupported_reason)
            if self.batch == 1 and self.prefix is None:
                self.native = native.NativeStep(lib, self.model, self.cache)
            elif self.prefix is None:
                self.native = native.NativeBatchStep(lib, self.model, self.cache)
            else:
                valid = self.prefix.valid
                valid = None if valid is None else valid[:, 0, 0].to(torch.uint8).contiguous()
                self.native = native.NativeBatchStep(lib, self.model, self.cache, self.prefix.layers, valid)
        except ValueError as err:
            logger.debug("decode steps in PyTorch: %s", err)
            return False
        if self.native_rope is None:  # (the same for every rebinding after `expand` / `keep`)
            cos, sin = self.model.rope_tables(torch.arange(self.cos_all.shape[2])[None], dtype=torch.float32)
            self.native_rope = cos[0, 0], sin[0, 0]
        self.native_valid = None
        if self.padded and self.prefix is None:
            valid = self.key_valid[:, 0, 0].to(torch.uint8)
            self.native_valid = (valid[0] if self.batch == 1 else valid).contiguous()
        return True

    def step(self, tokens: torch.Tensor, step: int) -> torch.Tensor:
        """Feed the tokens chosen at decode step `step` (0-based), `[B]`; return the next logits `[B, vocab]`."""
        model = self.model
        # The position in the cache: after the prompt, or (beams) in caches that hold the generated tokens only.
        pos = step if self.prefix is not None else self.prompt_len + step
        if self.native is not None:
            cos, sin = self.native_rope
            positions = self.next_position[:, 0]
            self.next_position = self.next_position + 1
            if self.batch == 1 and self.prefix is None:
                position = int(positions[0])
                return self.native(int(tokens[0]), pos, cos[position], sin[position], self.native_valid)
            return self.native(tokens, pos, cos[positions], sin[positions], self.native_valid)
        x = model.embed[tokens][:, None].to(model.residual_dtype)  # [B, 1, hidden]
        rope = _rope_at(self.cos_all, self.sin_all, self.next_position)
        if self.prefix is not None:  # every generated position is real
            logits = model.forward(x, rope, self.cache, pos, None, prefix=self.prefix)
        else:
            mask = self.key_valid[..., : pos + 1] if self.padded else None
            logits = model.forward(x, rope, self.cache, pos, mask)
        self.next_position = self.next_position + 1
        return logits

    def expand(self, times: int) -> None:
        """Continue every row as `times` rows (row r becomes rows r*times .. r*times+times-1; beam search): they
        share the prompt's keys and values (`SharedPrefix`, stored once) and get caches of their own for the
        generated tokens."""
        prompt = [(k[:, :, : self.prompt_len].contiguous(), v[:, :, : self.prompt_len].contiguous())
                  for k, v in self.cache]  # (copies, so that the prefill cache's unused tail is freed)
        self.prefix = SharedPrefix(prompt, self.key_valid[..., : self.prompt_len] if self.padded else None)
        max_new = self.cache[0][0].shape[2] - self.prompt_len
        self.next_position = self.next_position.repeat_interleave(times, 0)
        self.logits = self.logits.repeat_interleave(times, 0)
        self.batch *= times
        self.cache = self.model.new_cache(self.batch, max_new)
        if self.native is not None:
            self.use_native()

    def keep(self, rows: torch.Tensor, prompts: torch.Tensor, filled: int) -> None:
        """Continue with fewer rows (beam search, once some prompts' results are final): row i becomes old row
        `rows[i]` (its first `filled` generated positions are copied); `prompts`: the shared-prefix prompts kept, in
        order (every row in `rows` continues one of them). The caches shrink to views of their first rows."""
        count = len(rows)
        self.reorder(rows, filled, keep=count)
        self.prefix = self.prefix.select(prompts)
        self.next_position = self.next_position[rows]
        self.batch = count
        if self.native is not None:
            self.use_native()

    def reorder(self, rows: torch.Tensor, filled: int, keep: int | None = None) -> None:
        """Make row i continue from row `rows[i]` (beam search): copy its first `filled` generated positions (the
        prompt is shared: `rows[i]` is always a beam of row i's own prompt). `keep`: shrink the caches to views of
        their first `keep` rows (see `keep`)."""
        for i, (k, v) in enumerate(self.cache):
            moved_k, moved_v = k[rows, :, :filled], v[rows, :, :filled]  # copies, taken before any row is written
            if keep is not None:
                k, v = k[:keep], v[:keep]
                self.cache[i] = (k, v)
            k[:, :, :filled] = moved_k
            v[:, :, :filled] = moved_v


def _beam_search(state: _Prefilled, options: SamplingOptions) -> torch.Tensor:
    """HF's beam search (transformers 5 `_beam_search`, greedy, one returned sequence per prompt) over the fast
    loop's cache: same scores, length penalty, early-stopping heuristic and output padding, so the same tokens.
    Returns the best finished hypothesis per prompt, `[B, new]` (new = the longest of them)."""
    beams, batch, max_new = options.num_beams, state.batch, options.max_new_tokens
    eos = torch.tensor(options.eos_token_ids, dtype=torch.long)
    keep = max(2, 1 + len(options.eos_token_ids)) * beams  # candidates per prompt and step, as HF
    top_beams = torch.arange(keep) < beams  # only the best `beams` candidates may finish
    # HF's filler for unused positions (note its `pad or eos` rule: a pad id of 0 gives the EOS id).
    fill = (options.pad_token_id or options.eos_token_ids[0]) if options.eos_token_ids else -1
    state.expand(beams)
    if max_new > 1:  # one token needs no decode step
        state.use_native()
    logits = state.logits
    running = torch.full((batch, beams, max_new), fill, dtype=torch.long)
    running_scores = torch.zeros(batch, beams)
    running_scores[:, 1:] = -1e9  # all beams start equal: only the first one may expand at step 0
    finished = torch.full((batch, beams, max_new), fill, dtype=torch.long)
    finished_scores = torch.full((batch, beams), -1e9)
    finished_lengths = torch.zeros(batch, beams, dtype=torch.long)
    is_finished = torch.zeros(batch, beams, dtype=torch.bool)
    improvable = torch.ones(batch, 1, dtype=torch.bool)
    offsets = torch.arange(batch)[:, None] * beams
    active = torch.arange(batch)  # the prompts still decoded, by their index in the input
    results = torch.full((batch, max_new), fill, dtype=torch.long)  # each prompt's best hypothesis, once final
    result_lengths = torch.zeros(batch, dtype=torch.long)
    for step in range(max_new):
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        vocab = log_probs.shape[-1]
        scores = (log_probs.view(batch, beams, vocab) + running_scores[:, :, None]).view(batch, -1)
        top_scores, top_index = torch.topk(scores, keep)
        source, tokens = top_index // vocab, top_index % vocab  # [B, keep]: the beam each candidate extends
        candidates = torch.gather(running, 1, source[:, :, None].expand(-1, -1, max_new)).clone()
        candidates[:, :, step] = tokens
        hits = torch.isin(tokens, eos) | (step + 1 >= max_new)
        # The best `beams` candidates that did not stop keep running.
        open_scores = top_scores - hits.float() * 1e9
        alive = torch.topk(open_scores, beams).indices
        running = torch.gather(candidates, 1, alive[:, :, None].expand(-1, -1, max_new))
        running_scores = torch.gather(open_scores, 1, alive)
        rows = (torch.gather(source, 1, alive) + offsets).flatten()
        # Candidates among the best `beams` that stopped become finished hypotheses (score / length ** penalty).
        done_now = hits & top_beams[None, :]
        penalised = top_scores / ((step + 1) ** options.length_penalty)
        if options.early_stopping is True:
            penalised = penalised - is_finished.all(-1, keepdim=True).float() * 1e9
        penalised = penalised - (~improvable).float() * 1e9 - (~done_now).float() * 1e9
        merged_scores = torch.cat([finished_scores, penalised], 1)
        best = torch.topk(merged_scores, beams).indices
        finished = torch.gather(torch.cat([finished, candidates], 1), 1, best[:, :, None].expand(-1, -1, max_new))
        finished_scores = torch.gather(merged_scores, 1, best)
        finished_lengths = torch.gather(
            torch.cat([finished_lengths, torch.full((batch, keep), step + 1)], 1), 1, best)
        is_finished = torch.gather(torch.cat([is_finished, done_now], 1), 1, best)
        # HF's early-stopping heuristic: can the best running beam still beat the worst finished one?
        length = max_new if options.early_stopping == "never" and options.length_penalty > 0 else step + 1
        best_running = running_scores[:, :1] / (length ** options.length_penalty)
        worst_finished = torch.where(is_finished, finished_scores.min(1, keepdim=True).values, -1e9)
        improvable = improvable & (best_running > worst_finished).any(-1, keepdim=True)
        all_done = options.early_stopping is True and bool(is_finished.all())
        if not bool(improvable.any()) or all_done or bool(hits.all()) or step + 1 >= max_new:
            break
        # A prompt that cannot improve (or, with early_stopping=True, has all its beams finished) keeps its
        # finished hypotheses from now on, as in HF, where it is still computed: set its result aside and drop
        # its rows, so that long answers in a batch do not make the short ones' beams run on.
        final = ~improvable[:, 0]
        if options.early_stopping is True:
            final |= is_finished.all(-1)
        if bool(final.any()):
            done_ids = active[final]
            results[done_ids], result_lengths[done_ids] = finished[final, 0], finished_lengths[final, 0]
            kept = (~final).nonzero().flatten()
            active, batch = active[kept], len(kept)
            running, running_scores, finished = running[kept], running_scores[kept], finished[kept]
            finished_scores, finished_lengths = finished_scores[kept], finished_lengths[kept]
            is_finished, improvable = is_finished[kept], improvable[kept]
            rows = rows.view(-1, beams)[kept].flatten()
            offsets = torch.arange(batch)[:, None] * beams
            state.keep(rows, kept, step)
        elif step:
            state.reorder(rows, step)
        logits = state.step(running[:, :, step].flatten(), step)
    results[active], result_lengths[active] = finished[:, 0], finished_lengths[:, 0]
    return results[:, : int(result_lengths.max())]


@torch.inference_mode()
def score_tokens(llm, token_ids: torch.Tensor, quantize: str = "none") -> torch.Tensor:
    """Logits of every position for unpadded `token_ids: [B, T]` → `[B, T, vocab]` float32, with the weights of
    `quantize` (for measuring what quantization does to perplexity and next-token choices)."""
    model = packed_lm(llm, quantize)
    batch, steps = token_ids.shape
    tables = model.rope_tables(torch.arange(steps)[None])
    x = model.embed[token_ids].to(model.residual_dtype)
    return model.forward(x, _rope_at(*tables, torch.arange(steps).expand(batch, steps)),
                         model.new_cache(batch, steps), 0, None, all_positions=True)


def _rope_at(cos_all: torch.Tensor, sin_all: torch.Tensor, positions: torch.Tensor):
    """Gather precomputed `[1, 1, S, D]` tables at `positions: [B, T]` → `[B, 1, T, D]` each."""
    return cos_all[0, 0][positions][:, None], sin_all[0, 0][positions][:, None]


class _TokenChooser:
    """Per-step token choice with HF's logits-processor order (repetition penalty, temperature, top-k, top-p),
    EOS / stop-string stopping per row, and padding of rows that have stopped."""

    def __init__(self, options: SamplingOptions, batch: int, vocab: int):
        self.options = options
        self.unfinished = torch.ones(batch, dtype=torch.bool)
        self.eos = torch.tensor(options.eos_token_ids, dtype=torch.long)
        self.seen = torch.zeros(batch, vocab, dtype=torch.bool) if options.repetition_penalty != 1.0 else None
        self.history: list[list[int]] = [[] for _ in range(batch)] if options.stop_strings else []
        self.window = max((len(s) for s in options.stop_strings), default=0) + 8

    def choose(self, logits: torch.Tensor) -> torch.Tensor:
        """logits: [B, vocab] float32 → next tokens [B] (pad for rows that stopped before)."""
        opts = self.options
        if self.seen is not None:
            penalty = opts.repetition_penalty
            logits = torch.where(self.seen, torch.where(logits < 0, logits * penalty, logits / penalty), logits)
        tokens = _sample(logits, opts) if opts.do_sample else logits.argmax(dim=-1)
        tokens = torch.where(self.unfinished, tokens, opts.pad_token_id)
        if self.seen is not None:
            self.seen[torch.arange(tokens.shape[0]), tokens] = True
        if self.eos.numel():
            self.unfinished &= ~torch.isin(tokens, self.eos)
        if opts.stop_strings:
            self._check_stop_strings(tokens)
        return tokens

    def _check_stop_strings(self, tokens: torch.Tensor) -> None:
        for row, token in enumerate(tokens.tolist()):
            if not self.unfinished[row]:
                continue
            self.history[row].append(token)
            tail = self.options.tokenizer.decode(self.history[row][-self.window:], skip_special_tokens=False)
            if any(stop in tail for stop in self.options.stop_strings):
                self.unfinished[row] = False

    def apply_criteria(self, new_tokens: torch.Tensor, scores: torch.Tensor) -> None:
        """HF-style stopping criteria see the tokens generated so far, `[B, n]` (as HF passes them when the prompt
        was given as embeddings), and the step's scores."""
        done = self.options.stopping_criteria(new_tokens, scores)
        self.unfinished &= ~torch.as_tensor(done, dtype=torch.bool).expand_as(self.unfinished)

    def any_unfinished(self) -> bool:
        return bool(self.unfinished.any())


def _sample(logits: torch.Tensor, opts: SamplingOptions) -> torch.Tensor:
    """Temperature, top-k and top-p (nucleus) filtering as HF's warpers do it, then one multinomial draw."""
    if opts.temperature != 1.0:
        logits = logits / opts.temperature
    if opts.top_k is not None and opts.top_k < logits.shape[-1]:
        kth = torch.topk(logits, opts.top_k).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if opts.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=False)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        remove = cumulative <= (1 - opts.top_p)
        remove[..., -1:] = False  # always keep the most likely token
        logits = logits.masked_fill(remove.scatter(1, order, remove), float("-inf"))
    return torch.multinomial(logits.softmax(dim=-1), num_samples=1).squeeze(1)
