"""Shared by the decode tests: the tiny preset with weights that make decoding tests meaningful, and prompts."""

from __future__ import annotations

import ctypes
import platform
from pathlib import Path

import pytest
import torch

from biomedgpt.inference import Message
from biomedgpt.model import native
from biomedgpt.model.biomedgpt import BioMedGPT
from biomedgpt.model.quantize import quantize_int8

ASPIRIN = "CC(=O)Oc1ccccc1C(=O)O"
CONVERSATIONS = [
    [Message("user", "What is this molecule used for?", [ASPIRIN])],
    [Message("user", "Describe this protein.", [], ["MALWMRLLPLLALLALWGPDPAAAFVNQ"])],
    [Message("user", "hi")],
    [Message("user", "Compare them, please, in one sentence.", ["CCO", "c1ccccc1"])],
]


def sharp_tiny(seed: int = 0, exact_in: str | None = None) -> BioMedGPT:
    """The tiny preset with larger random LM weights: the default init makes every logit ~0 and the greedy output
    one repeated token, which would make equality tests pass vacuously. `exact_in` ("bf16" or "int8"): round the
    weights so that they are exactly representable in that weight mode (its packed copy then loses nothing)."""
    model = BioMedGPT.from_preset("tiny")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.llm.parameters():
            if param.dim() == 2:
                param.normal_(0, 0.3, generator=generator)
                if exact_in == "bf16":
                    param.copy_(param.to(torch.bfloat16).float())
                elif exact_in == "int8":
                    q, scale = quantize_int8(param)
                    param.copy_(q.float() * scale.float()[:, None])
    return model


def generic_build(folder: Path) -> ctypes.CDLL:
    """native_step.c compiled without -march=native and without AVX-512 (the code other machines run), loaded;
    skips the test off x86."""
    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("-mno-avx512f is an x86 flag")
    target = folder / "portable.so"
    native._compile(target, [f for f in native.FLAGS if f != "-march=native"] + ["-mno-avx512f"])
    return native.configure(ctypes.CDLL(str(target)))
