"""The batch-1 decode step in C (`native_step.c`): built on first use, loaded with ctypes, used by `fast_decode`.

Why: at batch 1 the PyTorch decode step spends most of its time outside the arithmetic (~600 operator calls per
token for SmolLM2-135M, and matrix-vector kernels that read int8/bf16 weights at about a third of the memory
bandwidth). `native_step.c` runs a whole step (all layers and the LM head) in one call on the same weights and KV
cache, so greedy and sampled decoding at batch 1 get close to the memory-bandwidth bound (docs/performance.md).

The library is compiled with the system C compiler (`$CC`, else `cc`) into the biomedgpt cache folder, once per
source version; the compiler needs a few hundred milliseconds. When no compiler is available, or
`BIOMEDGPT_NATIVE=0`, `load()` returns None and the PyTorch step runs instead: same model, same results up to
float rounding.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("native_step.c")
ENV_DISABLE = "BIOMEDGPT_NATIVE"  # "0" turns the native step off
_WTYPES = {torch.float32: 0, torch.bfloat16: 1, torch.int8: 2}
_LAYER_FIELDS = 18


def enabled() -> bool:
    return os.environ.get(ENV_DISABLE, "1").strip().lower() not in ("0", "false", "no", "off")


def _compile(target: Path) -> None:
    """Compile SOURCE into `target` atomically (a temporary file renamed into place)."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("no C compiler found (set CC)")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        cmd = [compiler, "-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", str(SOURCE), "-o", tmp, "-lm"]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{result.stderr[-2000:]}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _cpu_signature() -> bytes:
    """The machine and its instruction-set flags: the library is built with -march=native, so a cache folder
    shared between different CPUs must not hand one machine's build to another."""
    flags = b""
    try:
        with open("/proc/cpuinfo", "rb") as info:
            flags = next((line for line in info if line.startswith((b"flags", b"Features"))), b"")
    except OSError:
        pass
    return platform.machine().encode() + flags


@lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | None:
    from biomedgpt.model.lm import cache_dir

    digest = hashlib.sha256(SOURCE.read_bytes() + _cpu_signature()).hexdigest()[:16]
    target = Path(cache_dir()) / "native" / f"native_step-{digest}.so"
    try:
        if not target.exists():
            _compile(target)
        lib = ctypes.CDLL(str(target))
    except (OSError, RuntimeError) as err:
        logger.warning("native decode step unavailable, using the PyTorch step: %s", err)
        return None
    lib.bm_scratch_floats.restype = ctypes.c_int64
    lib.bm_scratch_floats.argtypes = [ctypes.c_void_p]
    lib.bm_decode_step.restype = ctypes.c_int
    lib.bm_decode_step.argtypes = [ctypes.c_void_p, ctypes.c_float, ctypes.c_void_p, ctypes.c_void_p,
                                   ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                                   ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    return lib


def load() -> ctypes.CDLL | None:
    """The compiled library, or None when disabled or unavailable (then the PyTorch step is used)."""
    return _library() if enabled() else None


def unsupported_reason(model) -> str | None:
    """Why the native step cannot run `model` (a `fast_decode.PackedLM`), or None."""
    if model.residual_dtype != torch.float32:
        return f"LM weights in {model.residual_dtype} (the native step keeps a float32 residual stream)"
    if model.dtype not in (torch.float32, torch.bfloat16):
        return f"KV cache in {model.dtype}"
    if model.num_heads % model.num_kv_heads or model.head_dim % 2:
        return "head layout"
    linears = [model.lm_head] + [p for layer in model.layers for p in layer.linears]
    kinds = {p.weight.dtype for p in linears[1:]}
    if any(p.weight.dtype not in _WTYPES or not p.weight.is_contiguous() for p in linears) or len(kinds) != 1:
        return f"weights mode {model.mode!r}"
    return None


def _ptr(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


class NativeStep:
    """Decode steps of one batch-1 sequence through the compiled step, on `PackedLM` weights and a KV cache
    made by `PackedLM.new_cache(1, max_len)` (written in place, as the PyTorch step does)."""

    def __init__(self, lib: ctypes.CDLL, model, cache: list[tuple[torch.Tensor, torch.Tensor]]):
        self.lib, self.model = lib, model
        k0 = cache[0][0]
        max_len = k0.shape[2]
        layer_ptrs = []
        for layer, (k, v) in zip(model.layers, cache):
            if not (k.is_contiguous() and v.is_contiguous()) or k.shape[0] != 1:
                raise ValueError("the native step needs a contiguous batch-1 KV cache")
            q_, k_, v_, o_, gate, up, down = layer.split_linears()
            fields = [_ptr(layer.input_norm), _ptr(layer.post_norm)]
            for weight, scale in (q_, k_, v_, o_, gate, up, down):
                fields += [_ptr(weight), _ptr(scale)]
            layer_ptrs += fields + [_ptr(k), _ptr(v)]
        self._layers = torch.tensor(layer_ptrs, dtype=torch.int64)
        head = model.lm_head
        self._head = torch.tensor([_ptr(head.weight), _ptr(getattr(head, "scales", None)), _ptr(model.final_norm)],
                                  dtype=torch.int64)
        self._keep = (cache, [layer.split_linears() for layer in model.layers])  # the pointers' owners
        wtype = _WTYPES[model.layers[0].linears[0].weight.dtype]
        self._cfg = torch.tensor([
            model.embed.shape[1], model.num_heads, model.num_kv_heads, model.head_dim,
            model.layers[0].down_proj.in_features, len(model.layers), head.out_features, max_len, wtype,
            _WTYPES[head.weight.dtype], int(k0.dtype == torch.bfloat16), torch.get_num_threads()],
            dtype=torch.int32)
        self._scratch = torch.empty(int(lib.bm_scratch_floats(self._cfg.data_ptr())), dtype=torch.float32)
        self._x = torch.empty(model.embed.shape[1], dtype=torch.float32)
        self.max_len = max_len

    def __call__(self, token: int, pos: int, cos: torch.Tensor, sin: torch.Tensor,
                 key_valid: torch.Tensor | None = None) -> torch.Tensor:
        """Logits `[1, vocab]` (float32) after feeding `token` at cache position `pos`; `cos`, `sin`: float32
        `[head_dim]` RoPE tables of the token's position; `key_valid`: uint8 `[max_len]` (1 = attend) or None."""
        self._x.copy_(self.model.embed[token])
        logits = torch.empty(1, self.model.lm_head.out_features, dtype=torch.float32)
        rc = self.lib.bm_decode_step(self._cfg.data_ptr(), self.model.eps, self._layers.data_ptr(),
                                     self._head.data_ptr(), self._x.data_ptr(), pos, _ptr(key_valid),
                                     cos.data_ptr(), sin.data_ptr(), self._scratch.data_ptr(), logits.data_ptr())
        if rc != 0:
            raise IndexError(f"decode position {pos} is outside the KV cache ({self.max_len} positions)")
        return logits
