"""Model configuration: small dataclasses composed into one `BioMedGPTConfig`, validated on construction,
saved as JSON next to every checkpoint and rebuilt from it. Named presets: `tiny` (tests), `small` (the
default model) and `biomedgpt-10b` (the published shapes)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from biomedgpt.constants import DEFAULT_BASE_LM
from biomedgpt.modalities.protein import DEFAULT_MAX_RESIDUES, ESM_VOCAB_SIZE, MASK_ID, PAD_ID
from biomedgpt.model.gin import GINConfig
from biomedgpt.model.lm import BYTE_TOKENIZER, BYTE_VOCAB_SIZE

DTYPES = ("float32", "bfloat16", "float16")
CONFIG_FORMAT = 1
# Decoding settings a model folder may recommend (`BioMedGPTConfig.generation`).
GENERATION_KEYS = ("max_new_tokens", "temperature", "top_p", "repetition_penalty", "num_beams", "quantize")
# What `ask`, `chat`, `batch`, `eval` and `serve` use where neither the caller nor the model says otherwise
# (a repetition penalty > 1 discourages loops in small models).
FALLBACK_GENERATION = {"max_new_tokens": 128, "repetition_penalty": 1.1}


@dataclass
class LMConfig:
    """The causal LM. Either `name_or_path` (a folder, relative to the checkpoint or absolute, or a hub id) or
    `arch` (kwargs for `transformers.AutoConfig.for_model`, e.g. `{"model_type": "llama", ...}`) to build a
    randomly initialised LM."""

    name_or_path: str | None = DEFAULT_BASE_LM
    arch: dict[str, Any] | None = None
    tokenizer: str | None = None  # None: the tokenizer stored with the LM; "bytes": the built-in byte tokenizer
    dtype: str = "float32"
    use_chat_template: bool = True  # False: the reference `### Human: … ### Assistant:` template
    # A LoRA adapter (peft format; a folder relative to the checkpoint) merged into the base LM at load: how a
    # fine-tuned model ships a few MB instead of a full LM copy.
    lora: str | None = None

    def __post_init__(self) -> None:
        if (self.name_or_path is None) == (self.arch is None):
            raise ValueError("LMConfig needs exactly one of name_or_path or arch")
        if self.arch is not None and "model_type" not in self.arch:
            raise ValueError("LMConfig.arch must contain 'model_type' (e.g. 'llama')")
        if self.dtype not in DTYPES:
            raise ValueError(f"LMConfig.dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.arch is not None and self.tokenizer is None:
            raise ValueError("LMConfig with arch (random LM) needs a tokenizer, e.g. tokenizer='bytes'")


@dataclass
class ProteinEncoderConfig:
    """The ESM-2 protein encoder: `name_or_path` of an HF `EsmModel` folder/id, or `arch` (EsmConfig kwargs)."""

    name_or_path: str | None = None
    arch: dict[str, Any] | None = None
    max_residues: int = DEFAULT_MAX_RESIDUES

    def __post_init__(self) -> None:
        if (self.name_or_path is None) == (self.arch is None):
            raise ValueError("ProteinEncoderConfig needs exactly one of name_or_path or arch")
        if not 1 <= self.max_residues <= DEFAULT_MAX_RESIDUES:
            raise ValueError(f"ProteinEncoderConfig.max_residues must be in [1, 1022], got {self.max_residues}")


@dataclass
class BioMedGPTConfig:
    """The whole model. A missing encoder (None) means the model does not accept that modality."""

    lm: LMConfig = field(default_factory=LMConfig)
    molecule: GINConfig | None = field(default_factory=GINConfig)
    protein: ProteinEncoderConfig | None = None
    system_prompt: str | None = None  # None: the LM's own default (or the reference system prompt)
    seed: int = 0  # initialisation seed for the parts that start random (encoders, adapters)
    # Retrieval-augmented prompts: the k most similar known molecules / proteins (the model folder's evidence
    # index) and their annotations go before each user question that carries an entity; 0 = none. Training
    # builds the same prompts (leaving each record's own entity out), so a model trained with k needs k here.
    evidence_in_prompt: int = 0
    # The decoding this model was evaluated with, e.g. {"num_beams": 4, "repetition_penalty": 1.0} (the idea of
    # HF's generation_config.json): `ask`, `chat`, `batch` and `eval` start from it, and their flags override it.
    # Keys: GENERATION_KEYS (fields of `biomedgpt.inference.GenerationSettings`).
    generation: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.generation) - set(GENERATION_KEYS))
        if unknown:
            raise ValueError(f"unknown generation settings {unknown} in the model config (known: "
                             f"{', '.join(GENERATION_KEYS)})")
        # Accept plain dicts (from JSON) for the sub-configs.
        if isinstance(self.lm, dict):
            self.lm = LMConfig(**self.lm)
        if isinstance(self.molecule, dict):
            self.molecule = GINConfig(**self.molecule)
        if isinstance(self.protein, dict):
            self.protein = ProteinEncoderConfig(**self.protein)

    def to_dict(self) -> dict[str, Any]:
        return {"format": CONFIG_FORMAT, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BioMedGPTConfig:
        data = dict(data)
        data.pop("format", None)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown BioMedGPTConfig keys: {unknown}")
        return cls(**data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> BioMedGPTConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))


def _esm_arch(layers: int, hidden: int, heads: int) -> dict[str, Any]:
    """EsmConfig kwargs in the ESM-2 layout (rotary positions, token dropout, final layer norm)."""
    return {
        "vocab_size": ESM_VOCAB_SIZE,
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "intermediate_size": 4 * hidden,
        "max_position_embeddings": 1026,
        "position_embedding_type": "rotary",
        "pad_token_id": PAD_ID,
        "mask_token_id": MASK_ID,
        "token_dropout": True,
        "emb_layer_norm_before": False,
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
    }


def tiny_config() -> BioMedGPTConfig:
    """A few-hundred-kB model with every moving part, for tests: random 2-layer Llama + byte tokenizer."""
    lm_arch = {
        "model_type": "llama",
        "vocab_size": BYTE_VOCAB_SIZE,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "tie_word_embeddings": True,
    }
    return BioMedGPTConfig(
        lm=LMConfig(name_or_path=None, arch=lm_arch, tokenizer=BYTE_TOKENIZER, use_chat_template=False),
        molecule=GINConfig(num_layer=2, emb_dim=32),
        protein=ProteinEncoderConfig(arch=_esm_arch(layers=2, hidden=32, heads=2)),
    )


def small_config() -> BioMedGPTConfig:
    """The default model's shapes: SmolLM2-135M-Instruct + GIN 5×300 + an ESM-2 8M-shaped encoder (6×320)."""
    return BioMedGPTConfig(
        lm=LMConfig(name_or_path=DEFAULT_BASE_LM),
        molecule=GINConfig(num_layer=5, emb_dim=300),
        protein=ProteinEncoderConfig(arch=_esm_arch(layers=6, hidden=320, heads=20)),
    )


def biomedgpt_10b_config() -> BioMedGPTConfig:
    """The published BioMedGPT-10B shapes: BioMedGPT-LM-7B + GraphMVP GIN + ESM-2 3B, reference template."""
    return BioMedGPTConfig(
        lm=LMConfig(name_or_path="PharMolix/BioMedGPT-LM-7B", dtype="bfloat16", use_chat_template=False),
        molecule=GINConfig(num_layer=5, emb_dim=300),
        protein=ProteinEncoderConfig(name_or_path="facebook/esm2_t36_3B_UR50D"),
    )


PRESETS = {"tiny": tiny_config, "small": small_config, "biomedgpt-10b": biomedgpt_10b_config}


def preset(name: str) -> BioMedGPTConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]()


def resolve_generation(fallback: dict[str, Any], recommended: dict[str, Any], explicit: dict[str, Any]) -> dict:
    """Decoding settings from, in increasing priority: the caller's defaults, a model's recommendation
    (`BioMedGPTConfig.generation`) and explicit choices (command-line flags; None = not given). Asking for
    sampling (temperature > 0) turns off a recommended beam search, which is greedy by definition."""
    chosen = {key: value for key, value in explicit.items() if value is not None}
    merged = {**fallback, **recommended, **chosen}
    if merged.get("temperature", 0) > 0 and "num_beams" not in chosen:
        merged.pop("num_beams", None)
    return merged


def generation_for_device(generation: dict[str, Any], device_type: str) -> dict[str, Any]:
    """A recommended decoding for where the model runs: `quantize` is a weight format of the CPU fast loop, so
    elsewhere (a GPU, where HF generate runs the model in its loaded dtype) it is left out."""
    if device_type == "cpu":
        return dict(generation)
    return {key: value for key, value in generation.items() if key != "quantize"}


def recommended_generation(name_or_path: str | Path | None) -> dict[str, Any]:
    """A model folder's recommended decoding (its config.json `generation`), read without loading the model;
    {} for presets, baselines and folders without one."""
    if name_or_path is None:
        return {}
    config_file = Path(name_or_path).expanduser() / "config.json"
    if not config_file.is_file():
        return {}
    return dict(BioMedGPTConfig.load(config_file).generation)
