"""Loaders for the published weights: BioMedGPT-LM-7B (HF LM folder), ESM-2 (HF folder), GraphMVP GIN
(`model.pth`), the OpenBioMed `biomedgpt_10b.pth`, and our own model folders, all memory-efficiently.

Every loader builds its model on the meta device first (`init_empty_weights`: parameters without storage), in the
target dtype, then streams the weight files into it with `biomedgpt.model.checkpoint.load_weights`. Configs that
the published files lack are looked up in this order: a folder the user names, the local Hugging Face cache, then
the published configs below (so `biomedgpt_10b.pth` loads without hunting for `esm2_t36_3B_UR50D/config.json`).
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from biomedgpt.errors import ModelNotFoundError, UserError
from biomedgpt.model.checkpoint import (
    LoadReport,
    Source,
    checkpoint_files,
    load_weights,
    prefix_map,
    read_shapes,
    verify_sha256,
)

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
AUTO_DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")
ENCODER_PARTS = ("mol_structure_encoder", "proj_mol", "prot_structure_encoder", "proj_prot")
# Keys of the OpenBioMed checkpoint that our model does not have: the ESM pooler (the reference built EsmModel with
# its default pooling layer but never used it).
OPENBIOMED_DROP = (r"^prot_structure_encoder\.pooler\.",)
EMBED_KEY = "llm.model.embed_tokens.weight"
PAD_TOKEN = "[PAD]"  # the token OpenBioMed added to the Llama tokenizer (row 32000 of the 10B's embedding)


def _esm2(layers: int, hidden: int, heads: int) -> dict[str, Any]:
    from biomedgpt.config import _esm_arch

    return {"model_type": "esm", **_esm_arch(layers=layers, hidden=hidden, heads=heads), "layer_norm_eps": 1e-5}


# The configs of the published models, for when their folders are not at hand (shapes only; no weights).
KNOWN_CONFIGS: dict[str, dict[str, Any]] = {
    "PharMolix/BioMedGPT-LM-7B": {
        "model_type": "llama", "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008,
        "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
        "max_position_embeddings": 4096, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "hidden_act": "silu",
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "tie_word_embeddings": False,
    },
    "HuggingFaceTB/SmolLM2-135M-Instruct": {
        "model_type": "llama", "vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536,
        "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64,
        "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 100000.0, "hidden_act": "silu",
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2, "tie_word_embeddings": True,
    },
    "facebook/esm2_t6_8M_UR50D": _esm2(6, 320, 20),
    "facebook/esm2_t12_35M_UR50D": _esm2(12, 480, 20),
    "facebook/esm2_t30_150M_UR50D": _esm2(30, 640, 20),
    "facebook/esm2_t33_650M_UR50D": _esm2(33, 1280, 20),
    "facebook/esm2_t36_3B_UR50D": _esm2(36, 2560, 40),
    "facebook/esm2_t48_15B_UR50D": _esm2(48, 5120, 40),
}


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise UserError(f"unknown dtype {name!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    return {value: key for key, value in DTYPES.items()}[dtype]


# ---------------------------------------------------------------------------------------------- configs
def hf_config(name_or_path: str | Path, base_dir: str | Path | None = None):
    """A transformers config from a folder (relative to `base_dir` first), the local HF cache, or KNOWN_CONFIGS."""
    from transformers import AutoConfig

    for candidate in ([Path(base_dir) / str(name_or_path)] if base_dir else []) + [Path(name_or_path).expanduser()]:
        if candidate.is_dir():
            if not (candidate / "config.json").is_file():
                raise ModelNotFoundError(f"{candidate} has no config.json")
            return AutoConfig.from_pretrained(candidate)
    name = str(name_or_path)
    if name in KNOWN_CONFIGS:
        return AutoConfig.for_model(**copy.deepcopy(KNOWN_CONFIGS[name]))
    try:
        return AutoConfig.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError):
        raise ModelNotFoundError(
            f"no config for {name!r}: not a folder, not in the local Hugging Face cache, and not one of the "
            f"published configs ({', '.join(KNOWN_CONFIGS)})"
        ) from None


def local_folder(name_or_path: str, base_dir: str | Path | None = None) -> Path:
    """A model folder on disk: `base_dir/name`, a path, or a snapshot already in the HF cache (never downloads)."""
    from biomedgpt.model.lm import resolve_lm_path

    resolved = Path(resolve_lm_path(name_or_path, base_dir))
    if resolved.is_dir():
        return resolved
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name_or_path, local_files_only=True))
    except Exception:  # noqa: BLE001 (huggingface_hub raises several unrelated types for "not cached")
        raise ModelNotFoundError(f"{name_or_path!r} is neither a folder nor in the local Hugging Face cache") from None


# ---------------------------------------------------------------------------------------------- empty models
@contextmanager
def _empty():
    from accelerate import init_empty_weights

    with init_empty_weights():
        yield


def empty_lm(config, dtype: torch.dtype) -> nn.Module:
    from transformers import AutoModelForCausalLM

    with _empty():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.tie_weights()  # init_empty_weights loses the embedding/head tie; parameter counts need it
    return model


def empty_esm(config, dtype: torch.dtype) -> nn.Module:
    from transformers import EsmModel

    with _empty():
        return EsmModel(config, add_pooling_layer=False).to(dtype)


def build_skeleton(config, llm: nn.Module, tokenizer, protein_config=None) -> nn.Module:
    """A BioMedGPT around `llm` whose encoders and adapters are on the meta device, in `config.lm.dtype` (the
    same dtype rule as `BioMedGPT.from_config`: every non-LM tensor, buffers included, in the LM's dtype)."""
    from biomedgpt.model.biomedgpt import BioMedGPT

    dtype = parse_dtype(config.lm.dtype)
    with _empty():
        esm = None
        if config.protein is not None:
            from transformers import EsmConfig, EsmModel

            if protein_config is None:
                protein_config = (EsmConfig(**config.protein.arch) if config.protein.arch is not None
                                  else hf_config(config.protein.name_or_path))
            esm = EsmModel(protein_config, add_pooling_layer=False)
        model = BioMedGPT(config, llm, tokenizer, esm)
    for part in ENCODER_PARTS:
        if getattr(model, part) is not None:
            getattr(model, part).to(dtype)
    return model


# ---------------------------------------------------------------------------------------------- device maps
def resolve_device_map(model: nn.Module, device_map, max_memory: dict | None = None) -> dict[str, Any] | None:
    """accelerate-style device map for `model` (a BioMedGPT or a bare LM) from a device, a dict, or "auto"-like.

    For a BioMedGPT with an automatic map, the LM is split across devices by accelerate (whole decoder layers) and
    the encoders + adapters go to the device of the LM's input embeddings, where the splice happens; their size is
    reserved on that device first."""
    if device_map is None or isinstance(device_map, dict):
        return device_map
    if device_map not in AUTO_DEVICE_MAPS:
        return {"": device_map}
    from accelerate import infer_auto_device_map
    from accelerate.utils import get_balanced_memory, get_max_memory

    llm = getattr(model, "llm", model)
    prefix = "llm." if llm is not model else ""
    no_split = list(getattr(llm, "_no_split_modules", None) or [])
    max_memory = get_max_memory(max_memory)
    if device_map != "sequential" and torch.cuda.is_available():
        max_memory = get_balanced_memory(llm, max_memory, no_split_module_classes=no_split,
                                         low_zero=device_map == "balanced_low_0")
    extras = [part for part in ENCODER_PARTS if prefix and getattr(model, part, None) is not None]
    reserve = sum(p.numel() * p.element_size() for part in extras for p in getattr(model, part).parameters())
    first = next(iter(max_memory))
    max_memory = {**max_memory, first: max(0, _bytes(max_memory[first]) - reserve)}
    llm_map = infer_auto_device_map(llm, max_memory=max_memory, no_split_module_classes=no_split)
    embed_device = _lookup(llm_map, "model.embed_tokens")
    full = {prefix + name if name else prefix.rstrip(".") or "": device for name, device in llm_map.items()}
    full.update({part: embed_device for part in extras})
    return full


def _bytes(value) -> int:
    if isinstance(value, int):
        return value
    from accelerate.utils import convert_file_size_to_int

    return convert_file_size_to_int(value)


def _lookup(device_map: dict[str, Any], name: str):
    """The device of module `name`: its own or an enclosing entry, else its first child's."""
    enclosing = [k for k in device_map if k == "" or name == k or name.startswith(k + ".")]
    if enclosing:
        return device_map[max(enclosing, key=len)]
    return next(device for k, device in device_map.items() if k.startswith(name + "."))


def dispatch(model: nn.Module, device_map: dict[str, Any] | None) -> None:
    """After loading with a map that spans several devices, add accelerate's hooks so the LM's forward moves
    activations between them."""
    if not _spans_devices(device_map):
        return
    from accelerate import dispatch_model

    llm = getattr(model, "llm", model)
    prefix = "llm." if llm is not model else ""
    llm_map = {("" if name == "llm" else name[len(prefix):]): device for name, device in device_map.items()
               if name.startswith(prefix) or (prefix and name == "llm")}
    if llm_map:
        dispatch_model(llm, device_map=llm_map)


def _spans_devices(device_map: dict[str, Any] | None) -> bool:
    return bool(device_map) and len({str(d) for d in device_map.values()}) > 1


def _load(model, sources, device_map, max_memory, drop=(), strict=True, skip=(),
          before_dispatch: Callable[[dict | None], None] | None = None) -> tuple[dict | None, LoadReport]:
    """Resolve the map, stream the weights in, run `before_dispatch(resolved map)`, add the dispatch hooks.

    Whatever edits weights (merging a LoRA adapter) belongs in `before_dispatch`: dispatching moves the weights
    of layers offloaded to the CPU into accelerate's hooks, where a later edit of `module.weight` is lost."""
    resolved = resolve_device_map(model, device_map, max_memory)
    report = load_weights(model, sources, device_map=resolved, drop=drop, strict=strict, skip=skip)
    if before_dispatch is not None:
        before_dispatch(resolved)
    dispatch(model, resolved)
    return resolved, report


# ---------------------------------------------------------------------------------------------- loaders
def load_hf_lm(folder: str | Path, dtype: str | torch.dtype = "bfloat16", device_map=None,
               max_memory: dict | None = None, strict: bool = True):
    """An HF causal-LM folder (e.g. BioMedGPT-LM-7B: sharded `.bin` or `.safetensors` + index JSON) → (LM, tokenizer,
    LoadReport). Tokenizer files are optional (None when absent)."""
    from transformers import AutoTokenizer

    folder = Path(folder)
    model = empty_lm(hf_config(folder), parse_dtype(dtype))
    _, report = _load(model, [Source(checkpoint_files(folder))], device_map, max_memory, strict=strict)
    tokenizer = None
    if any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")):
        tokenizer = AutoTokenizer.from_pretrained(folder)
    return model.eval(), tokenizer, report


def load_esm(folder: str | Path, dtype: str | torch.dtype = "float32", strict: bool = True):
    """An HF ESM-2 folder (saved from `EsmForMaskedLM`: keys `esm.…` plus the MLM head `lm_head.…`, which is
    dropped) → (EsmModel without pooler, LoadReport)."""
    folder = Path(folder)
    model = empty_esm(hf_config(folder), parse_dtype(dtype))
    key_map = prefix_map("", strip="esm.", drop_prefixes=("lm_head.", "pooler."))
    report = load_weights(model, [Source(checkpoint_files(folder), key_map)], strict=strict)
    return model.eval(), report


def load_graphmvp(path: str | Path, dtype: str | torch.dtype = "float32", strict: bool = True):
    """A GraphMVP GIN state dict (`model.pth`; also accepts the `mol_structure_encoder.` keys of a BioMedGPT file)
    → (GIN, LoadReport). The number of layers and the width are read from the file."""
    from biomedgpt.model.gin import GIN, GINConfig

    files = checkpoint_files(path)
    shapes = {key.removeprefix("mol_structure_encoder."): value for key, value in read_shapes(files).items()}
    if "x_embedding1.weight" not in shapes:
        raise UserError(f"{path}: not a GraphMVP GIN state dict (no x_embedding1.weight)")
    layers = {int(m.group(1)) for key in shapes if (m := re.match(r"gnns\.(\d+)\.", key))}
    config = GINConfig(num_layer=max(layers) + 1 if layers else 1, emb_dim=shapes["x_embedding1.weight"][0][1])
    with _empty():
        model = GIN(config).to(parse_dtype(dtype))
    key_map = prefix_map("", strip="mol_structure_encoder.")
    report = load_weights(model, [Source(files, key_map)], strict=strict)
    return model.eval(), report


def verify_files(files: Sequence[Path], sha256: Sequence[str] = ()) -> None:
    if sha256 and len(sha256) != len(files):
        raise UserError(f"got {len(sha256)} sha256 value(s) for {len(files)} checkpoint file(s): give one per file")
    for path, digest in zip(files, sha256):
        verify_sha256(path, digest)


def load_openbiomed(checkpoints: str | Path | Sequence[str | Path], lm_dir: str | Path,
                    esm_config: str | Path | None = None, dtype: str | torch.dtype = "bfloat16",
                    device_map=None, max_memory: dict | None = None, sha256: Sequence[str] = (),
                    strict: bool = True):
    """OpenBioMed's BioMedGPT-10B (`biomedgpt_10b.pth`, or its parts as several state-dict files) + the
    BioMedGPT-LM-7B folder (config and tokenizer) → (BioMedGPT, LoadReport).

    The LM embedding's row count is read from the file (32,001 for the release): the LM is built with that
    vocabulary and, when the file has exactly one row more than the tokenizer, the tokenizer gets the `[PAD]`
    token the reference added. The ESM config comes from `esm_config` (a folder or hub id), else the published
    ESM-2 config of the checkpoint's depth and width (esm2_t36_3B_UR50D for the release); the GIN shape from the
    file."""
    from transformers import AutoTokenizer

    from biomedgpt.config import BioMedGPTConfig, LMConfig, ProteinEncoderConfig
    from biomedgpt.model.gin import GINConfig

    paths = [checkpoints] if isinstance(checkpoints, str | Path) else list(checkpoints)
    files = [f for p in paths for f in checkpoint_files(p)]
    verify_files(files, sha256)
    shapes = read_shapes(files)
    if EMBED_KEY not in shapes:
        raise UserError(f"{paths[0]}: not a BioMedGPT checkpoint (no {EMBED_KEY}); keys start with "
                        f"{sorted({k.split('.')[0] for k in shapes})}")
    dtype = parse_dtype(dtype)
    lm_config = hf_config(lm_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(lm_dir)
    except (OSError, ValueError, ImportError) as err:
        raise UserError(
            f"cannot load the tokenizer from {lm_dir}: {str(err).splitlines()[0]} (BioMedGPT-LM-7B's tokenizer is a "
            f"SentencePiece model: when the folder has tokenizer.model but no tokenizer.json, "
            f"`pip install sentencepiece protobuf`)"
        ) from None
    notes = _fit_vocabulary(lm_config, tokenizer, shapes[EMBED_KEY][0][0])
    esm = _esm_config_for(shapes, esm_config)
    gin = GINConfig(num_layer=1 + max(int(m.group(1)) for k in shapes
                                      if (m := re.match(r"mol_structure_encoder\.gnns\.(\d+)\.", k))),
                    emb_dim=shapes["mol_structure_encoder.x_embedding1.weight"][0][1])
    arch = {k: v for k, v in esm.to_diff_dict().items() if k not in ("transformers_version", "architectures",
                                                                    "model_type", "dtype", "torch_dtype")}
    config = BioMedGPTConfig(lm=LMConfig(name_or_path=str(lm_dir), dtype=dtype_name(dtype), use_chat_template=False),
                             molecule=gin, protein=ProteinEncoderConfig(arch=arch))
    model = build_skeleton(config, empty_lm(lm_config, dtype), tokenizer, protein_config=esm)
    _, report = _load(model, [Source(files)], device_map, max_memory, drop=OPENBIOMED_DROP, strict=strict)
    report.notes[:0] = notes
    model.lm_modified = True  # the 10B's LM differs from BioMedGPT-LM-7B (trained further, one more row)
    return model.eval(), report


def _esm_config_for(shapes: dict, esm_config: str | Path | None):
    """The ESM config named by the user, else the published ESM-2 whose depth and width match the checkpoint."""
    from transformers import EsmConfig

    layers = 1 + max((int(m.group(1)) for k in shapes
                      if (m := re.match(r"prot_structure_encoder\.encoder\.layer\.(\d+)\.", k))), default=-1)
    hidden = shapes.get("prot_structure_encoder.embeddings.word_embeddings.weight", ((0, 0),))[0][1]
    if esm_config is None:
        matches = [name for name, arch in KNOWN_CONFIGS.items() if arch["model_type"] == "esm"
                   and (arch["num_hidden_layers"], arch["hidden_size"]) == (layers, hidden)]
        if not matches:
            raise UserError(f"the checkpoint's protein encoder ({layers} layers × {hidden}) matches no published "
                            f"ESM-2 config: give its config folder (--esm-config)")
        esm_config = matches[0]
    esm = hf_config(esm_config)
    if not isinstance(esm, EsmConfig):
        raise UserError(f"{esm_config}: not an ESM config (model_type {esm.model_type!r})")
    if (esm.num_hidden_layers, esm.hidden_size) != (layers, hidden):
        raise UserError(f"the checkpoint's protein encoder has {layers} layers × {hidden} but the ESM config "
                        f"{esm_config} has {esm.num_hidden_layers} × {esm.hidden_size}")
    return esm


def _fit_vocabulary(lm_config, tokenizer, rows: int) -> list[str]:
    """Make the LM config and tokenizer agree with an embedding of `rows` rows (the reference's resize)."""
    notes = []
    if rows != lm_config.vocab_size:
        notes.append(f"LM vocabulary resized from {lm_config.vocab_size} to {rows} rows, as in the checkpoint")
        lm_config.vocab_size = rows
    if len(tokenizer) == rows - 1:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
        notes.append(f"tokenizer: added {PAD_TOKEN} as the pad token (id {tokenizer.pad_token_id}), as the reference")
    elif len(tokenizer) > rows:
        raise UserError(f"the tokenizer has {len(tokenizer)} tokens but the checkpoint's embedding only {rows} rows")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return notes


def load_model_folder(directory: str | Path, dtype: str | torch.dtype | None = None, device_map=None,
                      max_memory: dict | None = None, verify: bool = True):
    """A folder written by `BioMedGPT.save_pretrained`, built on the meta device and streamed in → (BioMedGPT,
    LoadReport). Same result as `BioMedGPT.from_pretrained`, without ever materialising random weights."""
    from biomedgpt.config import BioMedGPTConfig
    from biomedgpt.io import verify_checksums
    from biomedgpt.model.biomedgpt import CONFIG_NAME, LM_SUBDIR, WEIGHTS_NAME, build_lm, merge_lora

    directory = Path(directory)
    if not (directory / CONFIG_NAME).is_file():
        raise ModelNotFoundError(f"not a biomedgpt model folder (no {CONFIG_NAME}): {directory}")
    if verify:
        try:
            verify_checksums(directory)
        except ValueError as err:
            raise UserError(str(err)) from None
    config = BioMedGPTConfig.load(directory / CONFIG_NAME)
    if dtype is not None:
        config.lm.dtype = dtype_name(parse_dtype(dtype))
    sources = []
    if config.lm.arch is not None:  # a random LM by definition: nothing to stream
        llm, tokenizer = build_lm(config, directory)
    else:
        lm_dir = local_folder(config.lm.name_or_path, directory)
        llm = empty_lm(hf_config(lm_dir), parse_dtype(config.lm.dtype))
        tokenizer = _tokenizer(config, lm_dir)
        sources.append(Source(checkpoint_files(lm_dir), prefix_map("llm.")))
    if config.protein is not None and config.protein.name_or_path is not None:
        esm_dir = local_folder(config.protein.name_or_path, directory)
        sources.append(Source(checkpoint_files(esm_dir), prefix_map("prot_structure_encoder.", strip="esm.",
                                                                    drop_prefixes=("lm_head.", "pooler."))))
    if (directory / WEIGHTS_NAME).is_file():
        sources.append(Source([directory / WEIGHTS_NAME]))
    model = build_skeleton(config, llm, tokenizer)
    skip = ("llm.",) if config.lm.arch is not None else ()

    def place_and_merge(resolved: dict | None) -> None:
        if skip and resolved and not _spans_devices(resolved):  # (several devices: dispatch places it)
            model.llm.to(_lookup(resolved, "llm"))
        if config.lm.lora is not None:  # merged after streaming: the adapter's weights land on each layer's device
            model.llm = merge_lora(model.llm, directory / config.lm.lora)

    _, report = _load(model, sources, device_map, max_memory, drop=OPENBIOMED_DROP, skip=skip,
                      before_dispatch=place_and_merge)
    model.lora_adapter = directory / config.lm.lora if config.lm.lora else None
    model.lm_modified = config.lm.name_or_path == LM_SUBDIR
    return model.eval(), report


def _tokenizer(config, lm_dir: Path):
    from transformers import AutoTokenizer

    from biomedgpt.model.lm import BYTE_TOKENIZER, byte_tokenizer

    if config.lm.tokenizer == BYTE_TOKENIZER:
        tokenizer = byte_tokenizer()
    else:
        tokenizer = AutoTokenizer.from_pretrained(config.lm.tokenizer or lm_dir)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def convert_openbiomed(checkpoints, lm_dir: str | Path, out_dir: str | Path, esm_config: str | Path | None = None,
                       dtype: str = "bfloat16", sha256: Sequence[str] = (), max_shard_size: str | int = "5GB",
                       overwrite: bool = False) -> LoadReport:
    """`biomedgpt convert --from openbiomed`: load the 10B checkpoint (streaming) and write our model folder,
    atomically (a staging folder renamed into place), with `CONVERSION.json` recording sources and the report."""
    import json

    from biomedgpt.io import atomic_dir, atomic_write_text

    out = Path(out_dir).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise UserError(f"{out} exists and is not empty (use --force to replace it)")
    model, report = load_openbiomed(checkpoints, lm_dir, esm_config=esm_config, dtype=dtype, sha256=sha256)
    with atomic_dir(out) as staging:
        model.save_pretrained(staging, max_shard_size=max_shard_size)
        record = {"source": "openbiomed", "checkpoints": report.files, "lm_dir": str(lm_dir),
                  "esm_config": str(esm_config) if esm_config else None, "dtype": dtype,
                  "sha256_verified": list(sha256), "report": report.to_dict()}
        atomic_write_text(staging / "CONVERSION.json", json.dumps(record, indent=2) + "\n")
    return report
