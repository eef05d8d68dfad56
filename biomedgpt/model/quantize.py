"""Weight-only quantization of linear layers for CPU decoding.

At batch 1 a decode step reads every weight once and does ~2 flops per weight, so its speed is set by how many
bytes of weights it reads. Storing the LM's linear weights in fewer bits (and computing the matmul on bf16
activations, which the CPU int8/int4 kernels expect) makes decoding proportionally faster:

| mode   | weight storage                                   | bytes/weight |
|--------|--------------------------------------------------|--------------|
| `none` | the LM's own tensors, shared (no copy)           | 4 (fp32)     |
| `bf16` | bf16 copy                                        | 2            |
| `int8` | int8, one bf16 scale per output channel          | ~1           |
| `int4` | 4-bit, bf16 scale + zero per group of 32 inputs  | ~0.56        |

(`fast_decode` keeps the LM head at int8 in mode `int4`.)

The int8/int4 kernels are PyTorch's own (`aten._weight_int8pack_mm`, `aten._weight_int4pack_mm_for_cpu`, the
same ones gpt-fast and torchao use). Int4 with groups of 32 along the input dimension uses the same grid as the
GGUF Q4_1 format the default SmolLM2 weights come from (scale and minimum per 32 weights), so for those weights
it reproduces the published values up to the bf16 rounding of scales and zeros.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

QUANT_MODES = ("none", "bf16", "int8", "int4")
INT4_GROUP_SIZE = 32
_INT4_INNER_K_TILES = 8  # the layout argument of the int4 packing op (ignored by the CPU kernel)


def compute_dtype(mode: str, weight_dtype: torch.dtype) -> torch.dtype:
    """The activation dtype a mode runs in: the model's own for `none`, bf16 for the reduced-precision modes
    (the CPU int8/int4 kernels are fast only for bf16 inputs: measured ~9x slower with fp32)."""
    check_mode(mode)
    return weight_dtype if mode == "none" else torch.bfloat16


def check_mode(mode: str) -> str:
    if mode not in QUANT_MODES:
        raise ValueError(f"unknown quantization mode {mode!r}; choose one of {', '.join(QUANT_MODES)}")
    return mode


class PackedLinear:
    """`y = x @ W.T` for one weight `W: [out, in]` (no bias) stored in a decode-friendly format.

    Call with `x: [..., in]` in the mode's compute dtype; returns `[..., out]` in the same dtype.
    """

    def __init__(self, weight: torch.Tensor, mode: str = "none", group_size: int = INT4_GROUP_SIZE):
        check_mode(mode)
        self.out_features, self.in_features = weight.shape
        if mode == "int4" and not int4_supported(weight.shape, group_size):
            mode = "int8"  # shapes the int4 kernel cannot take (e.g. tiny test models) stay at 8 bits
        if mode == "int8" and not int8_supported(weight.shape):
            mode = "bf16"  # the int8 kernel returns garbage or crashes for these shapes
        self.mode = mode
        self.group_size = group_size
        weight = weight.detach()
        if mode == "none":
            self.weight = weight
        elif mode == "bf16":
            self.weight = weight.to(torch.bfloat16).contiguous()
        elif mode == "int8":
            self.weight, self.scales = quantize_int8(weight)
        else:
            self.weight, self.scales_and_zeros = quantize_int4(weight, group_size)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode in ("none", "bf16"):
            return F.linear(x, self.weight)
        flat = x.reshape(-1, self.in_features)
        if self.mode == "int8":
            out = torch.ops.aten._weight_int8pack_mm(flat, self.weight, self.scales)
        else:
            out = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, self.weight, self.group_size,
                                                               self.scales_and_zeros)
        return out.view(*x.shape[:-1], self.out_features)

    @property
    def nbytes(self) -> int:
        """Bytes read from memory per matmul (weights plus scales), for the bandwidth bound."""
        extra = getattr(self, "scales", None)
        if extra is None:
            extra = getattr(self, "scales_and_zeros", None)
        return self.weight.numel() * self.weight.element_size() + (0 if extra is None else extra.numel() * 2)


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8: `W ≈ q * scale[:, None]`. Returns (q: [out, in] int8, scale: [out] bf16).

    The scale is rounded to bf16 *before* quantizing so that q is chosen against the scale the kernel uses.
    """
    w = weight.float()
    scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-8).to(torch.bfloat16)
    q = torch.round(w / scale.float()[:, None]).clamp(-127, 127).to(torch.int8)
    return q.contiguous(), scale


def int8_supported(shape: torch.Size | tuple[int, int]) -> bool:
    """Whether `aten._weight_int8pack_mm` (torch 2.13, CPU) handles this shape: for inputs that are not a multiple
    of 16 it was measured to return wrong results (~1e29 with 72 inputs) or crash the process (100 inputs)."""
    return shape[1] % 16 == 0


def int4_supported(shape: torch.Size | tuple[int, int], group_size: int = INT4_GROUP_SIZE) -> bool:
    out_features, in_features = shape
    return in_features % group_size == 0 and in_features % 16 == 0 and out_features % 16 == 0


def quantize_int4(weight: torch.Tensor, group_size: int = INT4_GROUP_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """Asymmetric 4-bit per group of `group_size` inputs: `W ≈ (q - 8) * scale + zero`, q in 0..15.

    Returns (packed weight for `_weight_int4pack_mm_for_cpu`, scales_and_zeros: [in/group, out, 2] bf16).
    Scale and zero are rounded to bf16 first and q is chosen against the rounded values.
    """
    out_features, in_features = weight.shape
    groups = weight.float().reshape(out_features, in_features // group_size, group_size)
    low, high = groups.amin(dim=-1), groups.amax(dim=-1)
    scale = ((high - low) / 15.0).clamp(min=1e-8).to(torch.bfloat16).float()
    zero = (low + 8 * scale).to(torch.bfloat16).float()
    q = torch.round((groups - zero[..., None]) / scale[..., None] + 8).clamp(0, 15).to(torch.int32)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.reshape(out_features, in_features),
                                                                _INT4_INNER_K_TILES)
    scales_and_zeros = torch.stack([scale, zero], dim=-1).transpose(0, 1).contiguous().to(torch.bfloat16)
    return packed, scales_and_zeros
