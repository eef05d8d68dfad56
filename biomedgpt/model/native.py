"""The decode steps in C (`native_step.c`): built on first use, loaded with ctypes, used by `fast_decode`.

Why: at batch 1 the PyTorch decode step spends most of its time outside the arithmetic (~600 operator calls per
token for SmolLM2-135M, and matrix-vector kernels that read int8/bf16 weights at about a third of the memory
bandwidth); above batch 1 its small matrix products use a fraction of the cores' FMA rate (bf16 ones far less on
CPUs without bf16 instructions). `native_step.c` runs a whole step (all layers and the LM head) in one call on the
same weights and KV cache: `NativeStep` for one row (close to the memory-bandwidth bound), `NativeBatchStep` for a
batch of prompts or a prompt's beams (close to the cores' FMA rate; docs/performance.md).

The library is compiled with the system C compiler (`$CC`, else `cc`) into the biomedgpt cache folder, once per
source version; the compiler needs about a second. When no compiler is available, or `BIOMEDGPT_NATIVE=0`,
`load()` returns None and the PyTorch step runs instead: same model, same results up to float rounding.
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


def enabled() -> bool:
    return os.environ.get(ENV_DISABLE, "1").strip().lower() not in ("0", "false", "no", "off")


FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC"]
COMPILE_TIMEOUT_S = 120


def _compile(target: Path, flags: list[str] = FLAGS) -> None:
    """Compile SOURCE into `target` atomically (a temporary file renamed into place: a half-written library is
    never loaded)."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("no C compiler found (set CC)")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        cmd = [compiler, *flags, str(SOURCE), "-o", tmp, "-lm"]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S)
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


def _open(target: Path) -> ctypes.CDLL:
    """Load the library at `target`, compiling it first if needed; a cached file that does not load (truncated,
    built against another libc) is rebuilt once."""
    if not target.exists():
        _compile(target)
        return ctypes.CDLL(str(target))
    try:
        return ctypes.CDLL(str(target))
    except OSError as err:
        logger.warning("rebuilding %s, which does not load: %s", target, err)
        target.unlink(missing_ok=True)
        _compile(target)
        return ctypes.CDLL(str(target))


def library_path() -> Path:
    """Where the compiled library lives: the cache folder, named by the source, flags and CPU it was built for."""
    from biomedgpt.model.lm import cache_dir

    key = SOURCE.read_bytes() + " ".join(FLAGS).encode() + _cpu_signature()
    return Path(cache_dir()) / "native" / f"native_step-{hashlib.sha256(key).hexdigest()[:16]}.so"


@lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | None:
    try:
        return configure(_open(library_path()))
    except (OSError, RuntimeError, subprocess.SubprocessError) as err:
        logger.warning("native decode step unavailable, using the PyTorch step: %s", err)
        return None


def configure(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Declare the library's function signatures for ctypes."""
    lib.bm_scratch_floats.restype = ctypes.c_int64
    lib.bm_scratch_floats.argtypes = [ctypes.c_void_p]
    lib.bm_decode_step.restype = ctypes.c_int
    lib.bm_decode_step.argtypes = [ctypes.c_void_p, ctypes.c_float, ctypes.c_void_p, ctypes.c_void_p,
                                   ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                                   ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    lib.bm_batch_scratch_floats.restype = ctypes.c_int64
    lib.bm_batch_scratch_floats.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    pointer, integer = ctypes.c_void_p, ctypes.c_int
    lib.bm_decode_batch.restype = ctypes.c_int
    lib.bm_decode_batch.argtypes = [pointer, ctypes.c_float, pointer, pointer, pointer, integer, integer, pointer,
                                    pointer, pointer, pointer, integer, integer, pointer, pointer, pointer]
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
    if any(getattr(p, "scales", None) is not None and p.scales.dtype != torch.bfloat16 for p in linears):
        return "int8 scales not in bf16"
    norms = [model.final_norm] + [n for layer in model.layers for n in (layer.input_norm, layer.post_norm)]
    if any(n.dtype != torch.float32 or not n.is_contiguous() for n in norms):
        return "norm weights not contiguous float32"
    return None


def _ptr(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


class _Bound:
    """The weights and KV caches of a `PackedLM` as the pointer tables the compiled steps read; checks that the
    compiled code can run them (`unsupported_reason`, and one contiguous `[rows, kv_heads, max_len, head_dim]`
    key and value cache per layer of one dtype). Keeps the pointers' owners alive."""

    def __init__(self, lib: ctypes.CDLL, model, cache: list[tuple[torch.Tensor, torch.Tensor]]):
        self.lib, self.model = lib, model
        reason = unsupported_reason(model)
        if reason is not None:
            raise ValueError(f"the native step cannot run this model: {reason}")
        k0 = cache[0][0]
        rows, max_len = k0.shape[0], k0.shape[2]
        shape = (rows, model.num_kv_heads, max_len, model.head_dim)
        if len(cache) != len(model.layers) or any(
                t.shape != shape or t.dtype != k0.dtype or not t.is_contiguous() for kv in cache for t in kv):
            raise ValueError(f"the native step needs one contiguous {tuple(shape)} key and value cache per layer")
        if k0.dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"KV cache in {k0.dtype}: the native step reads float32 or bfloat16")
        layer_ptrs = []
        for layer, (k, v) in zip(model.layers, cache):
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
        self.rows, self.max_len, self.cache_dtype = rows, max_len, k0.dtype

    def _check_rope(self, cos: torch.Tensor, sin: torch.Tensor, rows: int | None) -> None:
        dim = self.model.head_dim
        shape = (dim,) if rows is None else (rows, dim)
        for table in (cos, sin):
            if table.dtype != torch.float32 or table.shape != shape or not table.is_contiguous():
                raise ValueError(f"RoPE tables must be contiguous float32 {list(shape)}")


class NativeStep(_Bound):
    """Decode steps of one batch-1 sequence through the compiled step, on `PackedLM` weights and a KV cache
    made by `PackedLM.new_cache(1, max_len)` (written in place, as the PyTorch step does)."""

    def __init__(self, lib: ctypes.CDLL, model, cache: list[tuple[torch.Tensor, torch.Tensor]]):
        super().__init__(lib, model, cache)
        if self.rows != 1:
            raise ValueError(f"NativeStep decodes one row, the cache has {self.rows} (use NativeBatchStep)")
        self._scratch = torch.empty(int(lib.bm_scratch_floats(self._cfg.data_ptr())), dtype=torch.float32)
        self._x = torch.empty(model.embed.shape[1], dtype=torch.float32)

    def __call__(self, token: int, pos: int, cos: torch.Tensor, sin: torch.Tensor,
                 key_valid: torch.Tensor | None = None) -> torch.Tensor:
        """Logits `[1, vocab]` (float32) after feeding `token` at cache position `pos`; `cos`, `sin`: float32
        `[head_dim]` RoPE tables of the token's position; `key_valid`: uint8 `[max_len]` (1 = attend) or None."""
        self._check_rope(cos, sin, None)
        if key_valid is not None and (key_valid.dtype != torch.uint8 or key_valid.shape != (self.max_len,)
                                      or not key_valid.is_contiguous()):
            raise ValueError(f"key_valid must be contiguous uint8 [{self.max_len}]")
        self._x.copy_(self.model.embed[token])
        logits = torch.empty(1, self.model.lm_head.out_features, dtype=torch.float32)
        rc = self.lib.bm_decode_step(self._cfg.data_ptr(), self.model.eps, self._layers.data_ptr(),
                                     self._head.data_ptr(), self._x.data_ptr(), pos, _ptr(key_valid),
                                     cos.data_ptr(), sin.data_ptr(), self._scratch.data_ptr(), logits.data_ptr())
        if rc != 0:
            raise IndexError(f"decode position {pos} is outside the KV cache ({self.max_len} positions)")
        return logits


class NativeBatchStep(_Bound):
    """Decode steps of several rows at once through the compiled batched step: a batch of (left-padded) prompts,
    each row with its own cache `[rows, kv_heads, max_len, head_dim]`, or a prompt's beams, which in addition share
    its prompt's keys and values (`prefix`: one `(k, v)` per layer, each `[prompts, kv_heads, prefix_len, head_dim]`
    in the cache's dtype, row r continuing prompt r // (rows // prompts); `prefix_valid`: uint8 `[prompts,
    prefix_len]`, 1 = a real token, or None)."""

    def __init__(self, lib: ctypes.CDLL, model, cache: list[tuple[torch.Tensor, torch.Tensor]],
                 prefix: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
                 prefix_valid: torch.Tensor | None = None):
        super().__init__(lib, model, cache)
        self.prompts, prefix_len = 1, 0
        self._prefix = None
        if prefix is not None:
            p0 = prefix[0][0]
            self.prompts, prefix_len = p0.shape[0], p0.shape[2]
            shape = (self.prompts, model.num_kv_heads, prefix_len, model.head_dim)
            if len(prefix) != len(model.layers) or any(t.shape != shape or t.dtype != self.cache_dtype
                                                       or not t.is_contiguous() for kv in prefix for t in kv):
                raise ValueError(f"the prefix needs one contiguous {shape} {self.cache_dtype} key and value per layer")
            if self.rows % self.prompts:
                raise ValueError(f"{self.rows} rows do not split evenly over {self.prompts} prompts")
            if prefix_valid is not None and (prefix_valid.dtype != torch.uint8 or not prefix_valid.is_contiguous()
                                             or prefix_valid.shape != (self.prompts, prefix_len)):
                raise ValueError(f"prefix_valid must be contiguous uint8 [{self.prompts}, {prefix_len}]")
            self._prefix = torch.tensor([_ptr(t) for kv in prefix for t in kv], dtype=torch.int64)
            self._keep_prefix = (prefix, prefix_valid)
        self.prefix_len, self.prefix_valid = prefix_len, prefix_valid
        floats = int(lib.bm_batch_scratch_floats(self._cfg.data_ptr(), self.rows, prefix_len))
        self._scratch = torch.empty(floats, dtype=torch.float32)

    def __call__(self, tokens: torch.Tensor, pos: int, cos: torch.Tensor, sin: torch.Tensor,
                 key_valid: torch.Tensor | None = None) -> torch.Tensor:
        """Logits `[rows, vocab]` (float32) after feeding `tokens: [rows]` at position `pos` of the rows' caches;
        `cos`, `sin`: float32 `[rows, head_dim]`, each row's RoPE tables; `key_valid`: uint8 `[rows, max_len]`
        (1 = attend) or None."""
        rows = self.rows
        if tokens.shape != (rows,):
            raise ValueError(f"expected {rows} tokens, got shape {tuple(tokens.shape)}")
        self._check_rope(cos, sin, rows)
        if key_valid is not None and (key_valid.dtype != torch.uint8 or key_valid.shape != (rows, self.max_len)
                                      or not key_valid.is_contiguous()):
            raise ValueError(f"key_valid must be contiguous uint8 [{rows}, {self.max_len}]")
        x = self.model.embed[tokens].float().contiguous()
        logits = torch.empty(rows, self.model.lm_head.out_features, dtype=torch.float32)
        rc = self.lib.bm_decode_batch(self._cfg.data_ptr(), self.model.eps, self._layers.data_ptr(),
                                      self._head.data_ptr(), x.data_ptr(), rows, pos, _ptr(key_valid),
                                      cos.data_ptr(), sin.data_ptr(), _ptr(self._prefix), self.prompts,
                                      self.prefix_len, _ptr(self.prefix_valid), self._scratch.data_ptr(),
                                      logits.data_ptr())
        if rc != 0:
            raise IndexError(f"decode position {pos} is outside the KV cache ({self.max_len} positions)")
        return logits
