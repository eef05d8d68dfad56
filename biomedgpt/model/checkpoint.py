"""Streaming weight loading: checkpoints in any of the published layouts, into a model built on the meta device.

The reference loader built BioMedGPT-10B in fp32 and then `torch.load`-ed a 20 GB file next to it (~30 GB of host
RAM). Here the model is first built without storage (accelerate's `init_empty_weights`), then its weight files are
read one at a time (`torch.load(mmap=True, weights_only=True)` for pickles, `safe_open` for safetensors); each
tensor is cast to the target dtype, moved to its device and set in place, and the file is released before the
next one opens. Peak host memory is therefore about the model in its target dtype (nothing when it goes to GPUs)
plus the pages of one shard.

Layouts (see docs/published-weights.md): a single `.pth`/`.bin`/`.safetensors` file, a folder with an HF index
JSON (`pytorch_model.bin.index.json` / `model.safetensors.index.json`) and its shards, or a folder with one
`pytorch_model.bin` / `model.safetensors`. The model-specific loaders (HF LM, ESM-2, GraphMVP, OpenBioMed
BioMedGPT-10B, our own format) are in `biomedgpt.model.published`.
"""

from __future__ import annotations

import json
import logging
import pickle
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from biomedgpt.errors import ModelNotFoundError, UserError

logger = logging.getLogger(__name__)

INDEX_NAMES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
SINGLE_NAMES = ("model.safetensors", "pytorch_model.bin")
PICKLE_SUFFIXES = (".bin", ".pth", ".pt", ".ckpt")
# Wrappers some training scripts put around a state dict: {"model": {...}}, {"state_dict": {...}}.
STATE_DICT_WRAPPERS = ("state_dict", "model", "module")
# Persistent buffers that transformers now recomputes at init; old checkpoints still carry them.
COMPUTED_BUFFERS = (r"(^|\.)inv_freq$", r"(^|\.)original_inv_freq$", r"(^|\.)position_ids$")
MAX_NAMES_IN_ERROR = 12

KeyMap = Callable[[str], "str | None"]


@dataclass
class Source:
    """Weight files holding (part of) one state dict, and how their keys map to the model's names.

    `key_map(key)` returns the model's parameter name, or None to drop the key (reported as dropped)."""

    files: list[Path]
    key_map: KeyMap = field(default=lambda key: key)

    def __post_init__(self) -> None:
        self.files = [Path(f) for f in self.files]


@dataclass
class LoadReport:
    """What a load did, by name: files read, tensors set, keys dropped on purpose, and problems."""

    files: list[str] = field(default_factory=list)
    loaded: int = 0
    dropped: list[str] = field(default_factory=list)  # known-irrelevant keys (pooler, MLM head, legacy buffers)
    unexpected: list[str] = field(default_factory=list)  # keys with no place in the model
    missing: list[str] = field(default_factory=list)  # model tensors no file provided
    mismatched: list[str] = field(default_factory=list)  # "name: checkpoint [a, b] vs model [c, d]"
    notes: list[str] = field(default_factory=list)  # e.g. the vocabulary resize

    def problems(self) -> list[str]:
        out = []
        for label, names in (("missing keys", self.missing), ("unexpected keys", self.unexpected),
                             ("shape mismatches", self.mismatched)):
            if names:
                out.append(f"{len(names)} {label}: {_head(names)}")
        return out

    def summary(self) -> str:
        lines = [f"read {len(self.files)} file(s), set {self.loaded} tensors"]
        if self.dropped:
            lines.append(f"dropped {len(self.dropped)} keys not used by this model: {_head(self.dropped)}")
        lines += self.notes + self.problems()
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in self.__dataclass_fields__}


def _head(names: Sequence[str]) -> str:
    shown = ", ".join(names[:MAX_NAMES_IN_ERROR])
    return shown + (f", … ({len(names) - MAX_NAMES_IN_ERROR} more)" if len(names) > MAX_NAMES_IN_ERROR else "")


# ---------------------------------------------------------------------------------------------- finding files
def checkpoint_files(path: str | Path) -> list[Path]:
    """The weight files of a checkpoint, in load order: one file, the shards of an HF index, or a single
    `model.safetensors` / `pytorch_model.bin` in a folder (safetensors preferred when both exist)."""
    path = Path(path).expanduser()
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise ModelNotFoundError(f"checkpoint not found: {path}")
    for name in INDEX_NAMES:
        if (path / name).is_file():
            return _index_shards(path / name)
    for name in SINGLE_NAMES:
        if (path / name).is_file():
            return [path / name]
    raise ModelNotFoundError(
        f"{path} has no weights: expected one of {', '.join(INDEX_NAMES + SINGLE_NAMES)}"
    )


def _index_shards(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(f"{index}: not an HF index JSON with a 'weight_map' ({err})") from None
    shards = sorted(set(weight_map.values()))
    missing = [name for name in shards if not (index.parent / name).is_file()]
    if missing:
        raise ModelNotFoundError(f"{index} lists shards that are missing: {_head(missing)}")
    return [index.parent / name for name in shards]


def verify_sha256(path: str | Path, expected: str) -> None:
    """Raise a UserError when the file's sha256 differs from `expected` (hex, case-insensitive)."""
    from biomedgpt.io import sha256_file

    expected = expected.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", expected):
        raise UserError(f"not a sha256 hex digest: {expected!r}")
    actual = sha256_file(path)
    if actual != expected:
        raise UserError(f"{path}: sha256 is {actual}, expected {expected} (corrupt or different file)")


# ---------------------------------------------------------------------------------------------- reading files
def load_pickle_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """`torch.load` with `weights_only=True` (never arbitrary unpickling) and `mmap=True` (tensors stay on disk
    until touched). Unwraps `{"state_dict": …}`-style wrappers. Legacy (pre-zip) files cannot be memory-mapped:
    they are read whole, with a warning."""
    path = Path(path)
    try:
        try:
            obj = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        except RuntimeError as err:
            if "mmap" not in str(err):
                raise
            logger.warning("%s is in the legacy torch.save format: it cannot be memory-mapped and is read whole "
                           "(re-save it with torch>=1.6 or convert it to safetensors to load it lazily)", path)
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise UserError(
            f"{path}: refusing to unpickle it: it holds objects other than tensors and plain containers, and "
            f"loading those could run arbitrary code (weights_only=True). Extract its state dict in a trusted "
            f"environment and save that. Details: {str(err).splitlines()[0]}"
        ) from None
    return _unwrap_state_dict(obj, path)


def _unwrap_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    for _ in range(2):
        if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            inner = [key for key in STATE_DICT_WRAPPERS if isinstance(obj.get(key), dict)]
            if inner:
                obj = obj[inner[0]]
    if not isinstance(obj, dict) or not obj:
        raise UserError(f"{path}: not a state dict (a mapping of parameter names to tensors)")
    bad = [str(key) for key, value in obj.items() if not isinstance(value, torch.Tensor)]
    if bad:
        raise UserError(f"{path}: not a state dict: non-tensor entries {_head(bad)}")
    return obj


def iter_tensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (key, tensor) of one weight file, lazily; the file is closed when the iteration ends."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt", device="cpu") as handle:
            for key in handle.keys():  # noqa: SIM118 (a safetensors handle is not a dict)
                yield key, handle.get_tensor(key)
        return
    if path.suffix not in PICKLE_SUFFIXES:
        raise UserError(f"{path}: unknown weight file type (expected .safetensors or one of {PICKLE_SUFFIXES})")
    state = load_pickle_state_dict(path)
    for key in list(state):
        yield key, state.pop(key)  # popping lets each converted tensor's source be freed early
    del state


def read_shapes(files: Iterable[Path]) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Names → (shape, dtype) of every tensor in the files, from headers / mmap (no tensor data is read)."""
    shapes = {}
    for path in files:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt", device="cpu") as handle:
                for key in handle.keys():  # noqa: SIM118
                    piece = handle.get_slice(key)
                    shapes[key] = (tuple(piece.get_shape()), _SAFETENSORS_DTYPES[piece.get_dtype()])
        else:
            for key, tensor in load_pickle_state_dict(path).items():
                shapes[key] = (tuple(tensor.shape), tensor.dtype)
    return shapes


_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


# ---------------------------------------------------------------------------------------------- the loader
def load_weights(
    model: nn.Module,
    sources: Sequence[Source],
    device_map: dict[str, str | int | torch.device] | None = None,
    drop: Sequence[str] = (),
    strict: bool = True,
    skip: Sequence[str] = (),
) -> LoadReport:
    """Fill `model` (built on the meta device, each tensor already in its target dtype) from `sources`.

    Each floating tensor is cast to the dtype of the model's tensor of the same name while it is copied, so an
    fp32 file loads into a bf16 model without an fp32 copy of the model ever existing. `device_map` maps module
    name prefixes to devices (accelerate's format; "" = everything); default CPU. `drop` are regexes of
    checkpoint keys (after `key_map`) to skip silently-but-reported. Model tensors under the name prefixes in `skip`
    are left as they are (already real). With `strict`, missing or unexpected keys and shape mismatches raise a
    UserError naming them (after everything else was loaded).
    """
    targets = {name: t for name, t in _load_targets(model).items() if not name.startswith(tuple(skip))}
    tied = _tied_names(model)
    computed = [re.compile(p) for p in COMPUTED_BUFFERS]
    drop_patterns = [re.compile(p) for p in drop] + computed
    report = LoadReport()
    loaded: set[str] = set()
    for source in sources:
        for path in source.files:
            report.files.append(str(path))
            for key, tensor in iter_tensors(path):
                name = source.key_map(key)
                if name is None or (name not in targets and any(p.search(name) for p in drop_patterns)) or (
                    skip and name.startswith(tuple(skip))
                ):
                    report.dropped.append(key)
                elif name in tied:
                    continue  # the tie is restored after loading
                elif name not in targets:
                    report.unexpected.append(key)
                elif tuple(tensor.shape) != tuple(targets[name].shape):
                    loaded.add(name)  # present, just wrong: reported as a mismatch, not also as missing
                    report.mismatched.append(
                        f"{key}: checkpoint {list(tensor.shape)} vs model {list(targets[name].shape)}")
                else:
                    _set_tensor(model, name, _convert(tensor, targets[name], _device_for(name, device_map)))
                    loaded.add(name)
                del tensor
    _retie(model)
    report.loaded = len(loaded) - len(report.mismatched)
    report.missing = [name for name in targets if name not in loaded and name not in tied
                      and not any(p.search(name) for p in computed)]
    _place_buffers(model, device_map)
    if strict and report.problems():
        raise UserError("checkpoint does not fit the model: " + "; ".join(report.problems()))
    return report


def _load_targets(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and persistent buffer, by state-dict name (ties counted once, under their first name)."""
    targets = dict(model.named_parameters())
    for module_name, module in model.named_modules():
        for buffer_name, buffer in module.named_buffers(recurse=False):
            if buffer is not None and buffer_name not in module._non_persistent_buffers_set:
                targets[f"{module_name}.{buffer_name}" if module_name else buffer_name] = buffer
    return targets


def _tied_names(model: nn.Module) -> set[str]:
    """Parameter names that transformers ties to another one (e.g. `lm_head.weight` to the embeddings)."""
    names = set()
    for prefix, module in model.named_modules():
        if hasattr(module, "get_expanded_tied_weights_keys") and getattr(module, "config", None) is not None:
            for target in module.get_expanded_tied_weights_keys(all_submodels=False):
                names.add(f"{prefix}.{target}" if prefix else target)
    return names


def _retie(model: nn.Module) -> None:
    for module in model.modules():
        if hasattr(module, "get_expanded_tied_weights_keys") and getattr(module, "config", None) is not None:
            if module.get_expanded_tied_weights_keys(all_submodels=False):
                module.tie_weights()


def _device_for(name: str, device_map: dict[str, Any] | None) -> torch.device:
    if not device_map:
        return torch.device("cpu")
    best = max((prefix for prefix in device_map if prefix == "" or name == prefix or name.startswith(prefix + ".")),
               key=len, default=None)
    if best is None:
        raise UserError(f"device_map has no entry for {name}")
    device = device_map[best]
    if device == "disk":
        raise UserError("device_map places weights on 'disk': offloading to disk is not supported; give the CPU "
                        "more memory in max_memory instead")
    return torch.device(f"cuda:{device}" if isinstance(device, int) else device)


def _convert(tensor: torch.Tensor, target: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Cast (floating point only) and move; always a fresh tensor, never a view of the memory-mapped file."""
    dtype = target.dtype if tensor.is_floating_point() and target.is_floating_point() else tensor.dtype
    out = tensor.to(device=device, dtype=dtype)
    if out.data_ptr() == tensor.data_ptr():
        out = out.clone()
    return out


def _set_tensor(model: nn.Module, name: str, value: torch.Tensor) -> None:
    module_name, _, leaf = name.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    if leaf in module._parameters:
        old = module._parameters[leaf]
        module._parameters[leaf] = nn.Parameter(value, requires_grad=old.requires_grad)
    else:
        module._buffers[leaf] = value


def _place_buffers(model: nn.Module, device_map: dict[str, Any] | None) -> None:
    """Buffers not in the checkpoint (rotary tables, …) were built on the CPU: move them to their module's device."""
    if not device_map:
        return
    for module_name, module in model.named_modules():
        for leaf, buffer in list(module._buffers.items()):
            if buffer is not None:
                name = f"{module_name}.{leaf}" if module_name else leaf
                module._buffers[leaf] = buffer.to(_device_for(name, device_map))


def meta_tensors(model: nn.Module) -> list[str]:
    """Names of tensors still without storage (a load that was not strict can leave some)."""
    return [name for name, tensor in (*model.named_parameters(), *model.named_buffers()) if tensor.is_meta]


def prefix_map(prefix: str, strip: str = "", drop_prefixes: Sequence[str] = ()) -> KeyMap:
    """A key map that removes `strip` from the front, drops keys starting with any of `drop_prefixes` (after
    stripping), and adds `prefix`. Example: HF ESM files (`esm.encoder…`, `lm_head…`) into `prot_structure_encoder.`."""

    def key_map(key: str) -> str | None:
        if strip and key.startswith(strip):
            key = key[len(strip):]
        if any(key.startswith(p) for p in drop_prefixes):
            return None
        return prefix + key

    return key_map
