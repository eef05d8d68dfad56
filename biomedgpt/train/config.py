"""Training configuration: YAML or TOML files, validated on load, with errors that name the offending key.

A run's config is layered: the stage's defaults (`stages.STAGE_DEFAULTS`) ← the file ← `key=value` overrides
from the command line (dotted keys, values parsed as YAML: `optim.lr=3e-4`, `data.train=[a.jsonl,b.jsonl]`).
The resolved result is written beside the checkpoints (`config.yaml`) so a run can be repeated exactly.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

from biomedgpt.constants import STAGE_NAMES
from biomedgpt.errors import UserError


class ConfigError(UserError):
    """A config file or override that is malformed; the message names the key (e.g. `optim.lr`)."""


@dataclass
class DataConfig:
    train: list[str] = field(default_factory=list)  # files; see docs/training.md for the formats per stage
    validation: list[str] = field(default_factory=list)
    max_length: int = 512  # tokens per example (QA stages: longer answers are cut) / per packed block (lm)
    text_field: str = "text"  # lm stage, JSONL input: the field holding the document text
    limit: int | None = None  # use only the first N records of each file (quick runs)
    validation_fraction: float = 0.0  # with no validation file: hold out this fraction of data.train (seeded)


@dataclass
class OptimConfig:
    lr: float = 1e-4
    weight_decay: float = 0.0  # applied to >= 2-D weights only (nanoGPT's rule); norms and biases never decay
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1  # cosine/linear decay ends at lr * min_lr_ratio
    max_grad_norm: float = 1.0  # 0 disables clipping


@dataclass
class ScheduleConfig:
    batch_size: int = 8  # per process; the global batch is batch_size x processes x grad_accum
    grad_accum: int = 1
    max_steps: int | None = None  # optimizer steps; None: derived from `epochs`
    epochs: float | None = None
    save_every: int = 100  # checkpoint every N optimizer steps (and always at the end)
    eval_every: int = 0  # validation every N steps (0: only at the end, when a validation file is given)
    log_every: int = 1
    keep_checkpoints: int = 2


@dataclass
class LoRAConfig:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    # When the start model's LM is a base + LoRA adapter (e.g. the shipped biomedgpt-small), train that adapter
    # further (its own r / alpha / targets; the saved model stays base-by-reference + lora/). False: merge it and
    # put a new adapter on top (the saved model then carries the whole merged LM).
    continue_adapter: bool = True


@dataclass
class TrainableConfig:
    """Which parameters train. Each stage sets its own defaults; a config may change them."""

    lm: Literal["frozen", "full", "lora"] = "frozen"
    adapters: bool = False
    encoders: bool = False  # align/finetune: also train the molecule and protein encoders
    lora: LoRAConfig = field(default_factory=LoRAConfig)


@dataclass
class TrainConfig:
    stage: Literal["encoder-molecule", "encoder-protein", "lm", "align", "finetune"]
    output_dir: str
    model: str = "tiny"  # where training starts: a preset name (tiny, small, biomedgpt-10b) or a model folder
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    trainable: TrainableConfig = field(default_factory=TrainableConfig)
    # Retrieval-augmented prompts (saved in the model config): k nearest known entities before each question,
    # from the start model's evidence index (its folder's, else the repository's); None keeps the model's value.
    evidence_in_prompt: int | None = None
    protein_max_residues: int | None = None  # cap protein length for this model (saved with it; CPU runs: ~256)
    mask_ratio: float = 0.15  # encoder stages: fraction of atoms / residues masked (Hu et al. 2020; ESM-2)
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on GPUs that have it, else fp32
    gradient_checkpointing: bool = False
    cache_encoder_outputs: bool = True  # frozen encoders run once per molecule/protein, then hit the cache
    cache_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    cache_prompt_prefix: bool = True  # frozen LM: run the prompt prefix all rows share once, as a KV cache
    group_by_length: bool = True  # batches of similar length waste less compute on padding
    progress: bool = True
    threads: int | None = None  # torch CPU threads per process (None: torch's default); 1 is fastest for tiny models

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_ranges(config: TrainConfig) -> None:
    checks = [
        ("data.max_length", config.data.max_length >= 8, "must be >= 8"),
        ("data.limit", config.data.limit is None or config.data.limit >= 1, "must be >= 1"),
        ("evidence_in_prompt", config.evidence_in_prompt is None or config.evidence_in_prompt >= 0, "must be >= 0"),
        ("data.validation_fraction", 0 <= config.data.validation_fraction <= 0.5, "must be in [0, 0.5]"),
        ("optim.lr", config.optim.lr > 0, "must be > 0"),
        ("optim.weight_decay", config.optim.weight_decay >= 0, "must be >= 0"),
        ("optim.beta1", 0 <= config.optim.beta1 < 1, "must be in [0, 1)"),
        ("optim.beta2", 0 <= config.optim.beta2 < 1, "must be in [0, 1)"),
        ("optim.warmup_steps", config.optim.warmup_steps >= 0, "must be >= 0"),
        ("optim.min_lr_ratio", 0 <= config.optim.min_lr_ratio <= 1, "must be in [0, 1]"),
        ("optim.max_grad_norm", config.optim.max_grad_norm >= 0, "must be >= 0"),
        ("schedule.batch_size", config.schedule.batch_size >= 1, "must be >= 1"),
        ("schedule.grad_accum", config.schedule.grad_accum >= 1, "must be >= 1"),
        ("schedule.max_steps", config.schedule.max_steps is None or config.schedule.max_steps >= 1, "must be >= 1"),
        ("schedule.epochs", config.schedule.epochs is None or config.schedule.epochs > 0, "must be > 0"),
        ("schedule.save_every", config.schedule.save_every >= 1, "must be >= 1"),
        ("schedule.eval_every", config.schedule.eval_every >= 0, "must be >= 0"),
        ("schedule.log_every", config.schedule.log_every >= 1, "must be >= 1"),
        ("schedule.keep_checkpoints", config.schedule.keep_checkpoints >= 1, "must be >= 1"),
        ("trainable.lora.r", config.trainable.lora.r >= 1, "must be >= 1"),
        ("mask_ratio", 0 < config.mask_ratio < 1, "must be in (0, 1)"),
        ("threads", config.threads is None or config.threads >= 1, "must be >= 1"),
        ("protein_max_residues", config.protein_max_residues is None or 1 <= config.protein_max_residues <= 1022,
         "must be in [1, 1022]"),
    ]
    for key, ok, message in checks:
        if not ok:
            raise ConfigError(f"config key {key!r} {message}")
    if not config.data.train:
        raise ConfigError("config key 'data.train' is required: one or more training files")
    if (config.schedule.max_steps is None) == (config.schedule.epochs is None):
        raise ConfigError("config needs exactly one of 'schedule.max_steps' or 'schedule.epochs'")


# ---------------------------------------------------------------------------------------------- typed building
def _type_name(kind: Any) -> str:
    origin = get_origin(kind)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(kind))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(kind))
    if origin is list:
        return f"a list of {_type_name(get_args(kind)[0])}"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false",
            type(None): "null"}.get(kind, getattr(kind, "__name__", str(kind)))


def _coerce(value: Any, kind: Any, key: str) -> Any:
    """Check `value` against the annotation `kind`, converting only where it is lossless (int → float,
    a single string → a one-element list). Raises ConfigError naming `key`."""
    origin = get_origin(kind)
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r} must be a table/mapping, got {type(value).__name__}")
        return _build(kind, value, key + ".")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in get_args(kind):
            return None
        for option in (a for a in get_args(kind) if a is not type(None)):
            try:
                return _coerce(value, option, key)
            except ConfigError:
                continue
    elif origin is Literal:
        if value in get_args(kind):
            return value
    elif origin is list:
        items = [value] if isinstance(value, str) else value
        if isinstance(items, list):
            return [_coerce(item, get_args(kind)[0], f"{key}[{i}]") for i, item in enumerate(items)]
    elif kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads `3e-4` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif kind is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    raise ConfigError(f"config key {key!r} must be {_type_name(kind)}, got {value!r}")


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {prefix + close[0]!r}?)" if close else f" (known: {', '.join(names)})"
            raise ConfigError(f"unknown config key {prefix + str(key)!r}{hint}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            kwargs[f.name] = _coerce(data[f.name], hints[f.name], prefix + f.name)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"config key {prefix + f.name!r} is required")
    return cls(**kwargs)


# ---------------------------------------------------------------------------------------------- files and layers
def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML (.yaml/.yml) or TOML (.toml) file into a dict; syntax errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".toml":
        import tomllib

        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{path}: invalid TOML: {err}") from None
    elif path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: invalid YAML: {err}") from None
    else:
        raise ConfigError(f"{path}: config files must end in .yaml, .yml or .toml")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge `update` into a copy of `base` (tables merge key by key; other values replace)."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(text: str) -> dict[str, Any]:
    """`optim.lr=3e-4` → {"optim": {"lr": 0.0003}}; the value is parsed as YAML (numbers, bools, lists)."""
    import yaml

    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} must look like key=value (e.g. optim.lr=3e-4)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    out: dict[str, Any] = {}
    node = out
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def build_config(data: dict[str, Any]) -> TrainConfig:
    """Validate a plain dict (all layers merged) into a TrainConfig."""
    config = _build(TrainConfig, data)
    _check_ranges(config)
    return config


def load_config(
    path: str | Path | None, stage: str, overrides: list[str] | tuple[str, ...] = (), defaults: dict | None = None
) -> TrainConfig:
    """Layer stage defaults ← file ← overrides and validate. A `stage:` key in the file must match `stage`."""
    if stage not in STAGE_NAMES:
        raise ConfigError(f"unknown stage {stage!r}; choose one of {', '.join(STAGE_NAMES)}")
    data = read_config_file(path) if path is not None else {}
    if "stage" in data and data["stage"] != stage:
        raise ConfigError(f"config key 'stage' is {data['stage']!r} but the command asks for stage {stage!r}")
    layered = merge(defaults or {}, data)
    for text in overrides:
        layered = merge(layered, parse_override(text))
    layered["stage"] = stage
    return build_config(layered)


def dump_config(config: TrainConfig) -> str:
    import yaml

    return yaml.safe_dump(config.to_dict(), sort_keys=False)
