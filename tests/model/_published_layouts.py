"""Writers of tiny checkpoints in exactly the published layouts (same key names and file structure as
BioMedGPT-LM-7B, ESM-2, GraphMVP `model.pth` and OpenBioMed `biomedgpt_10b.pth`; only the shapes are small).

The reference objects they are written from double as the "loaded naively" models the tests compare against.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from biomedgpt.config import BioMedGPTConfig, LMConfig, ProteinEncoderConfig, _esm_arch
from biomedgpt.data.collate import collate
from biomedgpt.inference import Message, build_example
from biomedgpt.model.gin import GINConfig

LM_ARCH = {  # Llama-2 structure (untied head, like BioMedGPT-LM-7B) at toy size; vocabulary = the byte tokenizer
    "model_type": "llama", "vocab_size": 259, "hidden_size": 64, "intermediate_size": 112, "num_hidden_layers": 3,
    "num_attention_heads": 4, "num_key_value_heads": 4, "max_position_embeddings": 512, "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": False,
}
ESM_ARCH = _esm_arch(layers=2, hidden=40, heads=4)
SMILES = "CC(=O)Oc1ccccc1C(=O)O"
PROTEIN = "MKTAYIAKQRQISFVKSHFSRQ"


def reference_lm(seed: int = 0):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(**LM_ARCH)).eval()


def shard_names(count: int, kind: str) -> list[str]:
    stem, suffix = ("pytorch_model", "bin") if kind == "bin" else ("model", "safetensors")
    return [f"{stem}-{i:05d}-of-{count:05d}.{suffix}" for i in range(1, count + 1)]


def write_sharded(state: dict[str, torch.Tensor], folder: Path, kind: str, count: int) -> list[Path]:
    """Split `state` into `count` shards in key order with an HF index JSON (`pytorch_model.bin.index.json` or
    `model.safetensors.index.json`), as `save_pretrained` names them."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    keys = list(state)
    names = shard_names(count, kind)
    per = -(-len(keys) // count)
    weight_map, paths = {}, []
    for i, name in enumerate(names):
        part = {k: state[k].contiguous() for k in keys[i * per:(i + 1) * per]}
        if kind == "bin":
            torch.save(part, folder / name)
        else:
            save_file(part, str(folder / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, name))
        paths.append(folder / name)
    index = "pytorch_model.bin.index.json" if kind == "bin" else "model.safetensors.index.json"
    total = sum(t.numel() * t.element_size() for t in state.values())
    (folder / index).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return paths


def write_lm_folder(folder: Path, llm, kind: str = "bin", shards: int = 3, legacy_buffers: bool = True) -> Path:
    """A BioMedGPT-LM-7B-style folder: config.json, tokenizer files, sharded weights + index JSON. `.bin` shards
    carry the per-layer `rotary_emb.inv_freq` buffers that checkpoints of transformers < 4.31 contain."""
    from biomedgpt.model.lm import byte_tokenizer

    llm.config.save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    state = dict(llm.state_dict())
    if kind == "bin" and legacy_buffers:
        inv_freq = llm.model.rotary_emb.inv_freq.clone()
        for i in range(llm.config.num_hidden_layers):
            state[f"model.layers.{i}.self_attn.rotary_emb.inv_freq"] = inv_freq
    write_sharded(state, folder, kind, shards)
    return folder


def write_esm_folder(folder: Path, seed: int = 1):
    """An HF ESM-2 folder as `facebook/esm2_*` ships it: EsmForMaskedLM weights (`esm.…`, `lm_head.…`) in
    `pytorch_model.bin`, config.json and vocab.txt. Returns (folder, the reference EsmModel)."""
    from transformers import EsmConfig, EsmForMaskedLM

    from biomedgpt.modalities.protein import write_esm_vocab

    torch.manual_seed(seed)
    mlm = EsmForMaskedLM(EsmConfig(**ESM_ARCH)).eval()
    folder.mkdir(parents=True, exist_ok=True)
    mlm.config.save_pretrained(folder)
    write_esm_vocab(folder / "vocab.txt")
    torch.save(dict(mlm.state_dict()), folder / "pytorch_model.bin")
    return folder, mlm.esm


def openbiomed_reference(lm_dir: Path, seed: int = 2):
    """The model `biomedgpt_10b.pth` is a state dict of, at toy size: the reference resized the Llama embedding
    by one row for a `[PAD]` token and built EsmModel with its (unused) pooler."""
    from transformers import EsmConfig, EsmModel

    from biomedgpt.model.biomedgpt import BioMedGPT
    from biomedgpt.model.lm import byte_tokenizer

    llm = reference_lm(seed)
    tokenizer = byte_tokenizer()
    tokenizer.add_special_tokens({"pad_token": "[PAD]"})
    llm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    config = BioMedGPTConfig(lm=LMConfig(name_or_path=str(lm_dir), use_chat_template=False),
                             molecule=GINConfig(num_layer=3, emb_dim=24),
                             protein=ProteinEncoderConfig(arch=ESM_ARCH))
    torch.manual_seed(seed + 1)
    model = BioMedGPT(config, llm, tokenizer, EsmModel(EsmConfig(**ESM_ARCH), add_pooling_layer=True))
    with torch.no_grad():  # non-trivial BatchNorm statistics, as a trained GIN has
        for norm in model.mol_structure_encoder.batch_norms:
            norm.running_mean.normal_()
            norm.running_var.uniform_(0.5, 2.0)
            norm.num_batches_tracked.fill_(1234)
    return model.eval()


def openbiomed_state_dict(model) -> dict[str, torch.Tensor]:
    """The published key layout: five prefixes, pooler included, plus the legacy buffers the reference's
    transformers version saved (per-layer `rotary_emb.inv_freq`, ESM `position_ids`)."""
    state = dict(model.state_dict())
    inv_freq = model.llm.model.rotary_emb.inv_freq.clone()
    for i in range(model.llm.config.num_hidden_layers):
        state[f"llm.model.layers.{i}.self_attn.rotary_emb.inv_freq"] = inv_freq
    state["prot_structure_encoder.embeddings.position_ids"] = torch.arange(1026).unsqueeze(0)
    return state


def write_openbiomed(folder: Path):
    """The three things a BioMedGPT-10B user has: the LM-7B folder (only its config and tokenizer are used), an
    ESM-2 config folder and `biomedgpt_10b.pth`. Returns (pth, lm_dir, esm_dir, reference model)."""
    from transformers import EsmConfig

    from biomedgpt.model.lm import byte_tokenizer

    lm_dir, esm_dir = folder / "BioMedGPT-LM-7B", folder / "esm2_t2_toy"
    reference_lm().config.save_pretrained(lm_dir)
    byte_tokenizer().save_pretrained(lm_dir)
    EsmConfig(**ESM_ARCH).save_pretrained(esm_dir)
    model = openbiomed_reference(lm_dir)
    pth = folder / "biomedgpt_10b.pth"
    torch.save(openbiomed_state_dict(model), pth)
    model.prot_structure_encoder.pooler = None  # unused by the forward pass; our model has none
    return pth, lm_dir, esm_dir, model


def logits(model) -> torch.Tensor:
    """Logits of one prompt with a molecule and a protein through the splice: [1, T, vocab]."""
    example = build_example(model, [Message("user", "what are they?", [SMILES], [PROTEIN])])
    batch = collate([example], model.tokenizer.pad_token_id)
    with torch.no_grad():
        return model(**batch.model_inputs()).logits.float()


def lm_logits(llm) -> torch.Tensor:
    ids = torch.tensor([[1, 40, 41, 42, 99, 250, 7]])
    with torch.no_grad():
        return llm(input_ids=ids).logits.float()


def write_lora_model_folder(model, directory: Path) -> Path:
    """`directory/folder`: a model folder that references `model`'s LM (saved to `directory/base-lm`), with a real
    peft LoRA adapter over it whose B is non-zero (a fresh adapter is a no-op), and `model`'s encoders and
    adapters."""
    import copy

    from peft import LoraConfig, get_peft_model
    from safetensors.torch import save_file

    from biomedgpt.model.biomedgpt import LORA_SUBDIR

    base, folder = directory / "base-lm", directory / "folder"
    model.llm.save_pretrained(base)
    peft_model = get_peft_model(copy.deepcopy(model.llm), LoraConfig(r=4, lora_alpha=8,
                                                                     target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.05)
    peft_model.save_pretrained(folder / LORA_SUBDIR)
    config = copy.deepcopy(model.config)
    config.lm = LMConfig(name_or_path=str(base), tokenizer="bytes", lora=LORA_SUBDIR)
    config.save(folder / "config.json")
    save_file({k: v.contiguous() for k, v in model.state_dict().items() if not k.startswith("llm.")},
              str(folder / "model.safetensors"))
    return folder
