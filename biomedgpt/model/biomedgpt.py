"""BioMedGPT: molecule GIN + protein ESM-2, each projected by one linear adapter into the embedding space of a
causal LM, written over placeholder positions of the prompt (the splice), then the LM does the rest.

Attribute names follow the published BioMedGPT-10B state dict (`llm.`, `mol_structure_encoder.`,
`prot_structure_encoder.`, `proj_mol.`, `proj_prot.`), so its weights map onto this module without renaming.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import shutil
import threading
import warnings
from collections import Counter
from pathlib import Path

import torch
from torch import nn

from biomedgpt.config import BioMedGPTConfig
from biomedgpt.constants import MOLECULE_TOKEN_ID, PROTEIN_TOKEN_ID
from biomedgpt.errors import ModelNotFoundError
from biomedgpt.modalities.molecule import MoleculeBatch
from biomedgpt.modalities.protein import ProteinBatch
from biomedgpt.model.gin import GIN

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
LM_SUBDIR = "lm"
LORA_SUBDIR = "lora"  # a LoRA adapter over the base LM (peft format), merged at load
LORA_FILES = ("adapter_config.json", "adapter_model.safetensors")


def _torch_dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def build_lm(config: BioMedGPTConfig, base_dir: str | Path | None = None, lite: bool = False):
    """Return (causal LM, tokenizer) for `config.lm`, offline. With `lite`, a Llama LM folder and its tokenizer
    are read without transformers (`biomedgpt.model.lite`: a fast cold start) when they allow it."""
    if lite:
        built = _build_lite_lm(config, base_dir)
        if built is not None:
            return built
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from biomedgpt.model.lm import BYTE_TOKENIZER, byte_tokenizer, resolve_lm_path

    lm_cfg = config.lm
    dtype = _torch_dtype(lm_cfg.dtype)
    if lm_cfg.arch is not None:
        arch = dict(lm_cfg.arch)
        llm = AutoModelForCausalLM.from_config(AutoConfig.for_model(**arch), dtype=dtype)
        path = None
    else:
        path = resolve_lm_path(lm_cfg.name_or_path, base_dir)
        try:
            llm = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        except OSError as err:
            raise ModelNotFoundError(f"cannot load the LM {lm_cfg.name_or_path!r}: {err}") from None
    if lm_cfg.lora is not None:
        llm = merge_lora(llm, Path(base_dir or ".") / lm_cfg.lora)
    if lm_cfg.tokenizer == BYTE_TOKENIZER:
        tokenizer = byte_tokenizer()
    else:
        tokenizer = AutoTokenizer.from_pretrained(lm_cfg.tokenizer or path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return llm, tokenizer


# LoRA adapters that are a plain low-rank update W += (alpha / r) · B A, which `merge_lora` applies without peft
# (importing peft costs ~1 s of every cold start); anything else (DoRA, rsLoRA, per-module ranks…) goes to peft.
_PLAIN_LORA = {"peft_type": "LORA", "use_dora": False, "use_rslora": False, "fan_in_fan_out": False,
               "rank_pattern": {}, "alpha_pattern": {}, "modules_to_save": None, "bias": "none"}


def _lora_config(adapter_dir: Path) -> dict:
    config_file = adapter_dir / "adapter_config.json"
    if not config_file.is_file():
        raise ModelNotFoundError(f"LoRA adapter not found: {adapter_dir} (no adapter_config.json)")
    return json.loads(config_file.read_text())


def _plain_lora(config: dict) -> bool:
    """True when the adapter (its adapter_config.json) is a plain low-rank update `merge_lora` applies without
    peft."""
    return all(config.get(key, value) == value for key, value in _PLAIN_LORA.items())


def merge_lora(llm: nn.Module, adapter_dir: Path) -> nn.Module:
    """The LM with a peft LoRA adapter merged into its weights (same function as the unmerged adapter, no
    per-token overhead)."""
    config = _lora_config(adapter_dir)
    if not _plain_lora(config):
        from peft import PeftModel

        return PeftModel.from_pretrained(llm, str(adapter_dir)).merge_and_unload()
    from safetensors.torch import load_file

    state = load_file(adapter_dir / "adapter_model.safetensors")
    modules = dict(llm.named_modules())
    holders = Counter(id(p) for _, p in llm.named_parameters(remove_duplicate=False))  # >1: tied (lm_head)
    scale = config["lora_alpha"] / config["r"]
    with torch.no_grad():
        for key in [k for k in state if k.endswith(".lora_A.weight")]:
            name = key.removesuffix(".lora_A.weight").removeprefix("base_model.model.")
            if name not in modules:
                raise ValueError(f"{adapter_dir}: LoRA weights for {name!r}, which this LM does not have")
            module, weight = modules[name], modules[name].weight
            lora_a, lora_b = state[key].float(), state[key.replace("lora_A", "lora_B")].float()
            if weight.device.type == "cpu" and weight.dtype == torch.float32 and holders[id(weight)] == 1:
                # W + scale·BA into new memory: the weights often lie in a memory-mapped checkpoint, where
                # writing in place faults and copies every page first (0.19 s vs 0.06 s for SmolLM2's q/k/v/o).
                # A tied weight (lm_head = embeddings) is updated in place so that it stays tied, as peft does.
                module.weight = nn.Parameter(torch.addmm(weight, lora_b, lora_a, alpha=scale),
                                             requires_grad=weight.requires_grad)
            else:
                weight += (scale * (lora_b @ lora_a)).to(weight.device, weight.dtype)
    return llm


def _build_lite_lm(config: BioMedGPTConfig, base_dir: str | Path | None):
    """(LiteLlama, LiteTokenizer) for `config.lm`, or None (logged) when it needs transformers."""
    from biomedgpt.model.lite import LiteLlama, lite_lm_reason
    from biomedgpt.model.lite_tokenizer import LiteTokenizer, lite_tokenizer_reason
    from biomedgpt.model.lm import BYTE_SPECIAL_TOKENS, BYTE_TOKENIZER, byte_backend, resolve_lm_path

    lm_cfg = config.lm
    if lm_cfg.arch is not None:
        reason = "a randomly initialised LM"
    else:
        path = Path(resolve_lm_path(lm_cfg.name_or_path, base_dir))
        reason = lite_lm_reason(path)
        tokenizer_dir = Path(lm_cfg.tokenizer).expanduser() if lm_cfg.tokenizer not in (None, BYTE_TOKENIZER) \
            else path
        if reason is None and lm_cfg.tokenizer != BYTE_TOKENIZER:
            reason = lite_tokenizer_reason(tokenizer_dir)
        adapter = Path(base_dir or ".") / lm_cfg.lora if lm_cfg.lora is not None else None
        if reason is None and adapter is not None and not _plain_lora(_lora_config(adapter)):
            reason = "a LoRA adapter that needs peft"
    if reason is None:
        try:
            if lm_cfg.tokenizer == BYTE_TOKENIZER:
                tokenizer = LiteTokenizer(byte_backend(), BYTE_SPECIAL_TOKENS)
            else:
                tokenizer = LiteTokenizer.from_folder(tokenizer_dir)
            llm = LiteLlama.from_folder(path, _torch_dtype(lm_cfg.dtype))
        except (ValueError, KeyError, AttributeError, RuntimeError) as err:
            # A folder transformers reads its own way (unusual keys, added special tokens...): use it.
            reason = f"{type(err).__name__}: {err}"
    if reason is not None:
        logger.info("loading the LM with transformers (the lite path cannot: %s)", reason)
        return None
    if adapter is not None:
        llm = merge_lora(llm, adapter)
    return llm, tokenizer


_RANDOM_FILLS = ("uniform_", "normal_", "trunc_normal_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_",
                 "xavier_normal_", "orthogonal_")


_NO_INIT_LOCK = threading.RLock()


@contextlib.contextmanager
def _random_fills(enabled: bool):
    """With `enabled` False, `torch.nn.init`'s random fills become no-ops while our own modules are built whose
    parameters a checkpoint then overwrites (as transformers' `no_init_weights` does): drawing them for the default
    model's encoders and adapters took ~0.1 s of every cold start.

    Only around modules of this package: transformers saves `torch.nn.init`'s functions when it is first imported
    and would keep the no-ops for good if that import happened inside. One patch at a time (a lock: a second
    thread waits rather than saving the no-ops as the originals); a module another thread builds meanwhile without
    this context would still get no random values, so load models before starting threads that build others."""
    if enabled:
        yield
        return
    with _NO_INIT_LOCK:
        saved = {name: getattr(nn.init, name) for name in _RANDOM_FILLS}
        try:
            for name in _RANDOM_FILLS:
                setattr(nn.init, name, _keep)
            yield
        finally:
            for name, fill in saved.items():
                setattr(nn.init, name, fill)


def _keep(tensor: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    return tensor


def build_protein_encoder(config: BioMedGPTConfig, base_dir: str | Path | None = None, lite: bool = False,
                          random_init: bool = True):
    """The ESM-2 encoder of `config.protein`; with `lite` (and an inline config) `LiteEsm`, no transformers.
    `random_init=False`: a `LiteEsm`'s parameters are left uninitialised (the caller loads them all)."""
    cfg = config.protein
    if lite:
        from biomedgpt.model.lite import LiteEsm, lite_esm_reason

        reason = lite_esm_reason(cfg.arch)
        if reason is None:
            with _random_fills(random_init):
                return LiteEsm(cfg.arch)
        logger.debug("building the protein encoder with transformers (%s)", reason)
    from transformers import EsmConfig, EsmModel

    if cfg.arch is not None:
        return EsmModel(EsmConfig(**cfg.arch), add_pooling_layer=False)
    path = cfg.name_or_path
    if base_dir is not None and (Path(base_dir) / path).is_dir():
        path = str(Path(base_dir) / path)
    return EsmModel.from_pretrained(path, add_pooling_layer=False)


class BioMedGPT(nn.Module):
    """The multimodal model. Build with `from_config`, `from_pretrained` or `from_preset`."""

    def __init__(self, config: BioMedGPTConfig, llm: nn.Module, tokenizer, protein_encoder: nn.Module | None):
        super().__init__()
        self.config = config
        self.llm = llm
        self.tokenizer = tokenizer
        hidden = llm.get_input_embeddings().embedding_dim
        self.mol_structure_encoder = GIN(config.molecule) if config.molecule else None
        self.proj_mol = nn.Linear(config.molecule.emb_dim, hidden) if config.molecule else None
        self.prot_structure_encoder = protein_encoder
        self.proj_prot = nn.Linear(protein_encoder.config.hidden_size, hidden) if protein_encoder else None
        # True when the LM weights differ from `config.lm.name_or_path` (random init, trained, merged LoRA):
        # then `save_pretrained` must store them; otherwise the checkpoint only references the base LM.
        self.lm_modified = config.lm.arch is not None
        self.lora_adapter: Path | None = None  # set when the LM is its base + this LoRA adapter (merged)
        # the nearest-neighbour index read into prompts when config.evidence_in_prompt > 0 (inference.load_model)
        self.evidence_index = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, config: BioMedGPTConfig, base_dir: str | Path | None = None, lite: bool = False,
                    random_init: bool = True) -> BioMedGPT:
        """Build the model; the LM (and a named ESM) load their weights, the rest starts random, seeded by
        `config.seed` (a random LM too), without touching the caller's global RNG state. `lite`: see
        `from_pretrained`. `random_init=False` leaves the parameters of the GIN, the adapters and a `LiteEsm`
        uninitialised (a transformers ESM initialises itself), for a caller that overwrites every one of them from
        a checkpoint (`from_pretrained`)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            llm, tokenizer = build_lm(config, base_dir, lite)
            protein_encoder = build_protein_encoder(config, base_dir, lite, random_init) if config.protein else None
            with _random_fills(random_init):
                model = cls(config, llm, tokenizer, protein_encoder)
        dtype = _torch_dtype(config.lm.dtype)
        for part in (model.mol_structure_encoder, model.proj_mol, model.prot_structure_encoder, model.proj_prot):
            if part is not None:
                part.to(dtype)
        return model.eval()

    @classmethod
    def from_preset(cls, name: str, **overrides) -> BioMedGPT:
        from biomedgpt.config import preset

        config = preset(name)
        for key, value in overrides.items():
            setattr(config, key, value)
        return cls.from_config(config)

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, verify: bool = True, *, dtype: str | None = None, device_map=None,
        lite: bool = False,
    ) -> BioMedGPT:
        """Load a folder written by `save_pretrained` (checksums verified when `SHA256SUMS` is present).

        `lite` (inference on a CPU): build the Llama LM, its tokenizer and the ESM encoder without transformers'
        model classes (`biomedgpt.model.lite`; ~2 s less start-up), where the model allows it; transformers is
        then imported only if something needs it (a forward pass for scoring, an option the fast decode loop
        does not implement). Not for training.

        With `dtype` ("bfloat16", …) or `device_map` ("auto", "cuda:0", an accelerate map) the model is built on
        the meta device and its files are streamed in (`biomedgpt.model.published.load_model_folder`): host memory
        stays near the model's size in that dtype; use it for large models."""
        if dtype is not None or device_map is not None:
            from biomedgpt.model.published import load_model_folder

            return load_model_folder(directory, dtype=dtype, device_map=device_map, verify=verify)[0]
        from safetensors.torch import load_file

        from biomedgpt.io import verify_checksums

        directory = Path(directory)
        if not (directory / CONFIG_NAME).is_file():
            raise ModelNotFoundError(f"not a biomedgpt model folder (no {CONFIG_NAME}): {directory}")
        if verify:
            verify_checksums(directory)
        config = BioMedGPTConfig.load(directory / CONFIG_NAME)
        has_weights = (directory / WEIGHTS_NAME).is_file()
        # (every encoder and adapter parameter is then read from the file, or the missing-key check below fails)
        model = cls.from_config(config, base_dir=directory, lite=lite, random_init=not has_weights)
        if has_weights:
            state = load_file(directory / WEIGHTS_NAME)
            missing, unexpected = model.load_state_dict(state, strict=False)
            missing = [k for k in missing if not k.startswith("llm.")]
            if missing or unexpected:
                raise ValueError(f"{directory / WEIGHTS_NAME}: missing keys {missing}, unexpected keys {unexpected}")
        model.lm_modified = config.lm.name_or_path == LM_SUBDIR
        model.lora_adapter = directory / config.lm.lora if config.lm.lora else None
        return model.eval()

    def save_pretrained(
        self, directory: str | Path, save_lm: bool | None = None, max_shard_size: int | str | None = None
    ) -> None:
        """Write config JSON + safetensors (+ `lm/` when the LM differs from its base) + SHA256SUMS.

        The encoders are always stored by value (their config inlined), so a checkpoint never depends on an
        ESM folder being present later; an unchanged base LM is stored by reference only. `max_shard_size`
        (e.g. "5GB") splits the LM's safetensors into shards with an index JSON.
        """
        from safetensors.torch import save_file

        from biomedgpt.io import atomic_path, write_checksums

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = copy.deepcopy(self.config)
        save_lm = self.lm_modified if save_lm is None else save_lm
        names = [CONFIG_NAME]
        if self.lora_adapter is not None and not save_lm:
            # base LM by reference + the adapter (a few MB) instead of a merged LM copy
            names += self._copy_lora(Path(self.lora_adapter), directory)
            config.lm.lora = LORA_SUBDIR
        if save_lm and not hasattr(self.llm, "save_pretrained"):
            from biomedgpt.errors import UserError

            raise UserError("this model was loaded with lite=True (inference only) and its LM cannot be saved that "
                            "way; load it with load_model(path) / BioMedGPT.from_pretrained(path) to save it")
        if save_lm:
            shard_kwargs = {"max_shard_size": max_shard_size} if max_shard_size is not None else {}
            self.llm.save_pretrained(directory / LM_SUBDIR, **shard_kwargs)
            self.tokenizer.save_pretrained(directory / LM_SUBDIR)
            config.lm.name_or_path, config.lm.arch, config.lm.tokenizer = LM_SUBDIR, None, None
            names += [f"{LM_SUBDIR}/{p.name}" for p in sorted((directory / LM_SUBDIR).iterdir()) if p.is_file()]
        if self.prot_structure_encoder is not None:
            encoder_config = self.prot_structure_encoder.config
            arch = encoder_config.to_diff_dict() if hasattr(encoder_config, "to_diff_dict") else dict(
                vars(encoder_config))  # LiteEsm: a namespace of EsmConfig kwargs
            config.protein.arch, config.protein.name_or_path = arch, None
            config.protein.arch.pop("transformers_version", None)
            config.protein.arch.pop("architectures", None)
            config.protein.arch.pop("model_type", None)
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items() if not k.startswith("llm.")}
        if state:
            with atomic_path(directory / WEIGHTS_NAME) as tmp:
                save_file(state, str(tmp), metadata={"format": "pt"})
            names.append(WEIGHTS_NAME)
        with atomic_path(directory / CONFIG_NAME) as tmp:
            config.save(tmp)
        write_checksums(directory, names)

    @staticmethod
    def _copy_lora(source: Path, directory: Path) -> list[str]:
        target = directory / LORA_SUBDIR
        if source.resolve() != target.resolve():
            target.mkdir(parents=True, exist_ok=True)
            for name in LORA_FILES:
                shutil.copy2(source / name, target / name)
        return [f"{LORA_SUBDIR}/{name}" for name in LORA_FILES]

    # ------------------------------------------------------------------ the splice
    @property
    def device(self) -> torch.device:
        return self.llm.get_input_embeddings().weight.device

    def encode_molecules(self, molecules: MoleculeBatch) -> torch.Tensor:
        """All atoms of all molecules → LM embedding space: [total_atoms, lm_hidden]."""
        if self.mol_structure_encoder is None:
            raise ValueError("this model has no molecule encoder but the input contains molecules")
        molecules = molecules.to(self.device)
        nodes = self.mol_structure_encoder(molecules.x, molecules.edge_index, molecules.edge_attr)
        return self.proj_mol(nodes)

    def encode_proteins(self, proteins: ProteinBatch) -> torch.Tensor:
        """Every non-pad ESM position of every protein → LM embedding space: [total_positions, lm_hidden]."""
        if self.prot_structure_encoder is None:
            raise ValueError("this model has no protein encoder but the input contains proteins")
        proteins = proteins.to(self.device)
        hidden = self.prot_structure_encoder(
            input_ids=proteins.input_ids, attention_mask=proteins.attention_mask
        ).last_hidden_state  # [P, L, D]
        return self.proj_prot(hidden[proteins.attention_mask.bool()])  # row-major: protein by protein

    def embed(
        self,
        input_ids: torch.Tensor,
        molecules: MoleculeBatch | None = None,
        proteins: ProteinBatch | None = None,
        molecule_features: torch.Tensor | None = None,
        protein_features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The splice: token embeddings with every placeholder row replaced by its projected encoder output.

        input_ids: [B, T] with MOLECULE_TOKEN_ID / PROTEIN_TOKEN_ID at placeholder positions.
        `*_features` ([N, lm_hidden], already projected) skip the encoders, e.g. from a training cache.
        Returns [B, T, lm_hidden]. One `masked_scatter` per modality fills placeholders in row-major order,
        which is the order the collator lays out atoms and residues: no per-sample loop.
        """
        mol_mask = input_ids == MOLECULE_TOKEN_ID
        prot_mask = input_ids == PROTEIN_TOKEN_ID
        embeddings = self.llm.get_input_embeddings()(input_ids.masked_fill(mol_mask | prot_mask, 0))
        if molecule_features is None and molecules is not None:
            molecule_features = self.encode_molecules(molecules)
        if protein_features is None and proteins is not None:
            protein_features = self.encode_proteins(proteins)
        embeddings = _scatter(embeddings, mol_mask, molecule_features, "molecule", "atom")
        return _scatter(embeddings, prot_mask, protein_features, "protein", "residue")

    # ------------------------------------------------------------------ LM interface
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        molecules: MoleculeBatch | None = None,
        proteins: ProteinBatch | None = None,
        molecule_features: torch.Tensor | None = None,
        protein_features: torch.Tensor | None = None,
        **lm_kwargs,
    ):
        """Causal-LM forward; `labels` use IGNORE_INDEX (-100) on prompt and placeholder positions."""
        device = self.device
        embeds = self.embed(input_ids.to(device), molecules, proteins, molecule_features, protein_features)
        return self.llm(
            inputs_embeds=embeds,
            attention_mask=attention_mask.to(device) if attention_mask is not None else None,
            labels=labels.to(device) if labels is not None else None,
            **lm_kwargs,
        )

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        molecules: MoleculeBatch | None = None,
        proteins: ProteinBatch | None = None,
        engine: str | None = None,
        quantize: str | None = None,
        **generate_kwargs,
    ) -> torch.Tensor:
        """Encode the entities once, splice, then decode with the LM's KV cache (text tokens only).

        `input_ids` must be left-padded. Returns only the new tokens: [B, new_tokens].
        `engine`: "fast" (`biomedgpt.model.fast_decode`, same greedy tokens as HF) or "hf" (HF `generate`);
        `quantize`: "none", "bf16", "int8", "int4" weights for the fast engine; None = the defaults there.
        """
        from biomedgpt.model.fast_decode import try_generate

        device = self.device
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        embeds = self.embed(input_ids.to(device), molecules, proteins)
        generate_kwargs.setdefault("pad_token_id", self.tokenizer.pad_token_id)
        fast = try_generate(self.llm, embeds, attention_mask.to(device), engine, quantize, **generate_kwargs)
        if fast is not None:
            return fast
        with warnings.catch_warnings():
            # With embeddings as input, a repetition penalty can only see the new tokens; that is intended.
            warnings.filterwarnings("ignore", message="Passing `repetition_penalty` with `inputs_embeds`")
            return self.llm.generate(inputs_embeds=embeds, attention_mask=attention_mask.to(device), **generate_kwargs)


def _scatter(
    embeddings: torch.Tensor, mask: torch.Tensor, features: torch.Tensor | None, modality: str, unit: str
) -> torch.Tensor:
    slots = int(mask.sum())
    rows = 0 if features is None else int(features.shape[0])
    if slots != rows:
        raise ValueError(
            f"{modality} placeholder count mismatch: the prompt has {slots} {modality} token positions but the "
            f"{modality} encoder produced {rows} {unit} embeddings"
        )
    if slots == 0:
        return embeddings
    return embeddings.masked_scatter(mask.unsqueeze(-1), features.to(embeddings.dtype))
