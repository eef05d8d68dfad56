"""A tokenizer over the `tokenizers` library alone: what inference needs from transformers' fast tokenizer.

`AutoTokenizer` costs ~1.4 s of a cold start (importing transformers' tokenization stack and building the
tokenizer object); `tokenizers.Tokenizer.from_file` on the same `tokenizer.json` takes ~0.15 s. `LiteTokenizer`
wraps the latter with the parts of the transformers API that prompts and answers go through: `__call__` /
`encode` (with or without special tokens), `decode`, the special tokens and their ids, and `apply_chat_template`
(rendered with jinja2 in a sandbox configured as transformers configures it). Tested to give the same ids, text
and rendered prompts as `AutoTokenizer` on the default LM's tokenizer and on the byte tokenizer.

`lite_tokenizer_reason` says when a folder's tokenizer needs transformers (e.g. a slow or custom tokenizer
class whose encoding adds its own rules); the caller then uses `AutoTokenizer`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

# Tokenizer classes that are exactly their tokenizer.json (no extra rules in Python).
_PLAIN_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast", "GPT2Tokenizer", "GPT2TokenizerFast")
SPECIAL_NAMES = ("bos_token", "eos_token", "unk_token", "pad_token")
# tokenizer_config.json options that transformers applies on top of tokenizer.json (any of them: use transformers).
_PYTHON_OPTIONS = ("clean_up_tokenization_spaces", "add_bos_token", "add_eos_token", "split_special_tokens")


class LiteTokenizerUnsupported(ValueError):
    """The folder's tokenizer needs transformers after all (found while reading it)."""


def lite_tokenizer_reason(directory: Path) -> str | None:
    """Why the tokenizer in `directory` needs transformers (None: `LiteTokenizer.from_folder` reads it)."""
    if not (directory / "tokenizer.json").is_file():
        return "no tokenizer.json"
    config, template = _read_config(directory)
    if config.get("tokenizer_class", "PreTrainedTokenizerFast") not in _PLAIN_CLASSES:
        return f"tokenizer class {config.get('tokenizer_class')!r}"
    python_rules = [key for key in _PYTHON_OPTIONS if config.get(key)]
    python_rules += ["add_prefix_space"] if "add_prefix_space" in config else []
    if python_rules:
        return f"tokenizer options applied by transformers in Python ({', '.join(python_rules)})"
    legacy = directory / "special_tokens_map.json"
    if legacy.is_file() and any(_token_text(value) != _token_text(config.get(key))
                                for key, value in json.loads(legacy.read_text()).items()):
        return "special tokens in a legacy special_tokens_map.json"
    if template is not None and not isinstance(template, str):
        return "named chat templates"
    if re.search(r"\{%-?\s*generation\s*-?%\}", template or ""):
        return "a chat template with transformers' {% generation %} tag"
    return None


class LiteTokenizer:
    """A `tokenizers.Tokenizer` with transformers' tokenizer interface for prompts, answers and chat templates."""

    def __init__(self, backend, specials: dict[str, str | None], chat_template: str | None = None):
        """`specials`: token name → text (`bos_token`, `eos_token`, `unk_token`, `pad_token` and any other
        `*_token` of tokenizer_config.json, which chat templates may read); each must be in the vocabulary."""
        self.backend = backend
        self.chat_template = chat_template
        self.template_tokens = {name: text for name, text in specials.items() if text is not None}
        unknown = [text for text in self.template_tokens.values() if backend.token_to_id(text) is None]
        if unknown:  # transformers would add them to the vocabulary as new tokens
            raise LiteTokenizerUnsupported(f"special tokens not in tokenizer.json: {unknown}")
        for name in SPECIAL_NAMES:
            setattr(self, name, specials.get(name))
        if self.pad_token is None:
            self.pad_token = self.eos_token  # as build_lm does for LMs without a pad token

    @classmethod
    def from_folder(cls, directory: str | Path) -> LiteTokenizer:
        """Read `tokenizer.json`, the special tokens of `tokenizer_config.json` and the chat template
        (`chat_template.jinja`, else `tokenizer_config.json`'s `chat_template`)."""
        from tokenizers import Tokenizer

        directory = Path(directory)
        config, template = _read_config(directory)
        specials = {name: _token_text(value) for name, value in config.items()
                    if name.endswith("_token") and isinstance(_token_text(value), str)}
        return cls(Tokenizer.from_file(str(directory / "tokenizer.json")), specials, template)

    # ------------------------------------------------------------------ special tokens
    def _id(self, token: str | None) -> int | None:
        return None if token is None else self.backend.token_to_id(token)

    @property
    def bos_token_id(self) -> int | None:
        return self._id(self.bos_token)

    @property
    def eos_token_id(self) -> int | None:
        return self._id(self.eos_token)

    @property
    def pad_token_id(self) -> int | None:
        return self._id(self.pad_token)

    @property
    def unk_token_id(self) -> int | None:
        return self._id(self.unk_token)

    @property
    def special_tokens_map(self) -> dict[str, str]:
        return {name: getattr(self, name) for name in SPECIAL_NAMES if getattr(self, name) is not None}

    def __len__(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def convert_tokens_to_ids(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    # ------------------------------------------------------------------ text <-> ids
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        ids = self.encode(text, add_special_tokens=add_special_tokens)
        return {"input_ids": ids, "attention_mask": [1] * len(ids)}

    def decode(self, ids, skip_special_tokens: bool = False, **_: Any) -> str:
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        if isinstance(ids, int):
            ids = [ids]
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def batch_decode(self, rows: Sequence, skip_special_tokens: bool = False, **kwargs: Any) -> list[str]:
        return [self.decode(row, skip_special_tokens=skip_special_tokens, **kwargs) for row in rows]

    # ------------------------------------------------------------------ chat
    def apply_chat_template(self, conversation: Sequence[dict[str, str]], tokenize: bool = True,
                            add_generation_prompt: bool = False, **kwargs: Any) -> str | list[int]:
        """The conversation rendered with the chat template, as transformers renders it (the special tokens and
        `kwargs` are template variables); token ids with `tokenize` (no special tokens added)."""
        if not self.chat_template:
            raise ValueError("this tokenizer has no chat template")
        rendered = _compile(self.chat_template).render(
            messages=[dict(message) for message in conversation], tools=None, documents=None,
            add_generation_prompt=add_generation_prompt, **{**self.template_tokens, **self.special_tokens_map,
                                                             **kwargs})
        return self.encode(rendered, add_special_tokens=False) if tokenize else rendered


def _read_config(directory: Path) -> tuple[dict[str, Any], Any]:
    """tokenizer_config.json (or {}) and the chat template: `chat_template.jinja`, else the config's."""
    config_file = directory / "tokenizer_config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    template_file = directory / "chat_template.jinja"
    return config, template_file.read_text() if template_file.is_file() else config.get("chat_template")


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json stores it: a string or an AddedToken dict."""
    if isinstance(value, dict):
        return value.get("content")
    return value


_COMPILED: dict[str, Any] = {}


def _compile(template: str):
    """The chat template compiled in a sandbox with transformers' settings and helpers (trim_blocks,
    lstrip_blocks, loop controls, `raise_exception`, `strftime_now`, a `tojson` that keeps non-ASCII)."""
    if template not in _COMPILED:
        import jinja2
        import jinja2.ext
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message: str) -> None:
            raise jinja2.exceptions.TemplateError(message)

        def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
            return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                              sort_keys=sort_keys)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=[jinja2.ext.loopcontrols])
        env.filters["tojson"] = tojson
        env.globals["raise_exception"] = raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        _COMPILED[template] = env.from_string(template)
    return _COMPILED[template]
