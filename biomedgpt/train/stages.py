"""What each stage trains, on which data, with which objective. A stage is configuration, not code: the loop is
the same for all five; `prepare` turns a `TrainConfig` into a model, an objective module and datasets.

| stage            | trains (default)                      | data                 | objective            |
|------------------|---------------------------------------|----------------------|----------------------|
| encoder-molecule | the GIN (+ an atom-type head)         | SMILES               | attribute masking    |
| encoder-protein  | the ESM-2 encoder (+ its MLM head)    | protein sequences    | masked LM            |
| lm               | the whole LM                          | text, packed         | causal LM            |
| align            | the adapters (LM frozen)              | QA records           | causal LM on answers |
| finetune         | adapters + LoRA on the LM             | QA / MCQ records     | causal LM on answers |
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from biomedgpt.errors import UserError
from biomedgpt.train.config import ConfigError, TrainConfig
from biomedgpt.train.datasets import MaskedMolecules, MaskedProteins, PackedText, QAExamples, split_off
from biomedgpt.train.objectives import (
    AtomMaskingObjective,
    CausalLMObjective,
    EncoderCache,
    ProteinMLMObjective,
)

logger = logging.getLogger(__name__)

# Per-stage defaults, layered under the config file. Learning rates follow the references: Hu et al. 2020
# (GIN, 1e-3), ESM-2 (4e-4), LLaVA stage 1 (projector 1e-3), LoRA fine-tuning (2e-4).
STAGE_DEFAULTS: dict[str, dict] = {
    "encoder-molecule": {"optim": {"lr": 1e-3, "beta2": 0.999}},
    "encoder-protein": {"optim": {"lr": 4e-4, "beta2": 0.98, "weight_decay": 0.01}},
    "lm": {"optim": {"lr": 1e-4, "weight_decay": 0.1}, "trainable": {"lm": "full"}},
    "align": {"optim": {"lr": 1e-3}, "trainable": {"adapters": True}},
    "finetune": {"optim": {"lr": 2e-4}, "trainable": {"lm": "lora", "adapters": True}},
}


@dataclass
class Prepared:
    """Everything the loop needs for one stage."""

    model: nn.Module  # the BioMedGPT being trained (saved at the end)
    objective: nn.Module  # batch -> (loss_sum, target_count); wraps (parts of) the model
    train_set: object
    val_set: object | None
    frozen_eval: list[nn.Module] = field(default_factory=list)  # modules kept in eval mode while training
    cache: EncoderCache | None = None
    finalize: Callable[[Path], None] = lambda run_dir: None  # before the final save (e.g. merge LoRA)

    def train_mode(self) -> None:
        """Train mode for the objective, eval mode for frozen encoders (their BatchNorm must not update)."""
        self.objective.train()
        for module in self.frozen_eval:
            module.eval()


def load_start_model(name_or_path: str):
    from biomedgpt.inference import load_model

    return load_model(name_or_path)


def _apply_lora(model, config: TrainConfig) -> None:
    from peft import LoraConfig, get_peft_model

    lora = config.trainable.lora
    if lora.continue_adapter and model.lora_adapter is not None and not model.lm_modified:
        _continue_lora(model, Path(model.lora_adapter))
        return
    names = {name.rsplit(".", 1)[-1] for name, _ in model.llm.named_modules()}
    unknown = [t for t in lora.target_modules if t not in names]
    if unknown:
        raise ConfigError(f"config key 'trainable.lora.target_modules': {unknown} are not modules of this LM")
    peft_config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                             target_modules=list(lora.target_modules), bias="none")
    with warnings.catch_warnings():  # peft calls a transformers API that transformers 5 marks deprecated
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        model.llm = get_peft_model(model.llm, peft_config)


def _continue_lora(model, adapter_dir: Path) -> None:
    """Train the start model's own adapter further: reload its base LM exactly (the loaded LM has the adapter
    merged in) and wrap it with the adapter, trainable. The finalized model is again base + `lora/`."""
    from peft import PeftModel

    from biomedgpt.model.biomedgpt import build_lm

    base_config = copy.deepcopy(model.config)
    base_config.lm.lora = None
    base_llm, _ = build_lm(base_config, base_dir=adapter_dir.parent)
    logger.info("continuing the start model's LoRA adapter %s (its own r / alpha / target modules)", adapter_dir)
    with warnings.catch_warnings():  # peft calls a transformers API that transformers 5 marks deprecated
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        model.llm = PeftModel.from_pretrained(base_llm.to(model.device), str(adapter_dir), is_trainable=True)
    model.config.lm.lora, model.lora_adapter = None, None  # now: the plain base under a trainable adapter


def _merge_lora(model) -> Callable[[Path], None]:
    def finalize(run_dir: Path) -> None:
        """Keep the adapter on its own (peft format) and merge it for inference. The saved model refers to
        the base LM + this adapter when the start model's LM was an unmodified base without an adapter;
        otherwise (a trained or already-adapted LM) it stores the merged LM."""
        model.llm.save_pretrained(run_dir / "lora-adapter")
        model.llm = model.llm.merge_and_unload()
        lm = model.config.lm
        if lm.arch is None and lm.lora is None and not model.lm_modified:
            model.lora_adapter = run_dir / "lora-adapter"
        else:
            model.lm_modified = True

    return finalize


def _set_trainable(model, config: TrainConfig) -> list[nn.Module]:
    """Set requires_grad per `config.trainable`; return the encoders that stay frozen (kept in eval mode)."""
    wanted = config.trainable
    model.requires_grad_(False)
    if wanted.lm == "full":
        model.llm.requires_grad_(True)
        model.lm_modified = True
    elif wanted.lm == "lora":
        _apply_lora(model, config)
    encoders = [m for m in (model.mol_structure_encoder, model.prot_structure_encoder) if m is not None]
    for adapter in (model.proj_mol, model.proj_prot):
        if adapter is not None:
            adapter.requires_grad_(wanted.adapters)
    for encoder in encoders:
        encoder.requires_grad_(wanted.encoders)
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError("nothing to train: set trainable.lm, trainable.adapters or trainable.encoders")
    # Small trained parts keep fp32 weights even beside a bf16 LM: AdamW updates vanish in bf16 rounding.
    for part in [model.proj_mol, model.proj_prot] * wanted.adapters + encoders * wanted.encoders:
        if part is not None:
            part.float()
    return [] if wanted.encoders else encoders


def _enable_checkpointing(module: nn.Module) -> None:
    if getattr(module, "supports_gradient_checkpointing", False):
        # transformers 5 renamed the method; non-reentrant checkpointing works with a frozen LM (align)
        if hasattr(module, "activation_checkpointing_enable"):
            module.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            module.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def _datasets(build, config: TrainConfig):
    """(train, validation): validation from its own files, else a held-out fraction of the training data."""
    train_set = build(config.data.train)
    if config.data.validation:
        return train_set, build(config.data.validation)
    if config.data.validation_fraction > 0:
        return split_off(train_set, config.data.validation_fraction, config.seed)
    return train_set, None


def _prepare_text_stage(config: TrainConfig, model) -> Prepared:
    data = config.data
    if config.stage == "lm":
        build = lambda files: PackedText.from_files(  # noqa: E731
            files, model.tokenizer, data.max_length, data.text_field, data.limit)
    else:
        build = lambda files: QAExamples.from_files(files, model, data.max_length, data.limit)  # noqa: E731
    train_set, val_set = _datasets(build, config)
    frozen = _set_trainable(model, config)
    if config.gradient_checkpointing:
        _enable_checkpointing(model.llm)
    use_cache = config.cache_encoder_outputs and not config.trainable.encoders and config.stage != "lm"
    cache = EncoderCache(model, getattr(torch, config.cache_dtype)) if use_cache else None
    finalize = _merge_lora(model) if config.trainable.lm == "lora" else (lambda run_dir: None)
    # The shared-prefix KV cache needs frozen LM weights and the decoder's own cache (off under checkpointing).
    prefix = config.cache_prompt_prefix and config.trainable.lm == "frozen" and not config.gradient_checkpointing
    objective = CausalLMObjective(model, cache, frozen_lm_prefix=prefix)
    return Prepared(model, objective, train_set, val_set, frozen, cache, finalize)


def _prepare_encoder_stage(config: TrainConfig, model) -> Prepared:
    data = config.data
    model.requires_grad_(False)
    if config.stage == "encoder-molecule":
        if model.mol_structure_encoder is None:
            raise UserError(f"model {config.model!r} has no molecule encoder to pretrain")
        build = lambda files: MaskedMolecules.from_files(  # noqa: E731
            files, model.config.molecule.max_atoms, config.mask_ratio, config.seed, data.limit)
        encoder = model.mol_structure_encoder
        objective = AtomMaskingObjective(encoder)
    else:
        if model.prot_structure_encoder is None:
            raise UserError(f"model {config.model!r} has no protein encoder to pretrain")
        build = lambda files: MaskedProteins.from_files(  # noqa: E731
            files, model.config.protein.max_residues, config.mask_ratio, config.seed, data.limit)
        encoder = model.prot_structure_encoder
        if config.gradient_checkpointing:
            _enable_checkpointing(encoder)
        objective = ProteinMLMObjective(encoder)
    train_set, val_set = _datasets(build, config)
    encoder.requires_grad_(True)
    objective.float()  # the encoder and its head train in fp32 whatever the LM's dtype
    return Prepared(model, objective, train_set, val_set)


def prepare(config: TrainConfig) -> Prepared:
    """Build the starting model (seeded) and everything the stage needs around it."""
    overlap = set(map(str, config.data.train)) & set(map(str, config.data.validation))
    if overlap:
        raise ConfigError(f"config keys 'data.train' and 'data.validation' share files: {sorted(overlap)}")
    torch.manual_seed(config.seed)
    model = load_start_model(config.model)
    if config.protein_max_residues is not None and model.config.protein is not None:
        # Longer proteins are cut to their first residues, in training and (saved in the config) inference alike.
        model.config.protein.max_residues = config.protein_max_residues
    if config.evidence_in_prompt is not None:
        from biomedgpt.inference import attach_evidence_index

        model.config.evidence_in_prompt = config.evidence_in_prompt
        start_dir = Path(config.model) if Path(config.model).is_dir() else None
        attach_evidence_index(model, start_dir)
    if config.stage in ("encoder-molecule", "encoder-protein"):
        prepared = _prepare_encoder_stage(config, model)
    else:
        prepared = _prepare_text_stage(config, model)
    trainable = sum(p.numel() for p in prepared.objective.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    logger.info("stage %s: %d trainable parameters of %d", config.stage, trainable, total)
    return prepared
