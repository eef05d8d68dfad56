"""biomedgpt: talk to molecules and proteins in free text.

The public API, imported lazily so that `import biomedgpt` does no work (no torch import, no logging setup):

    from biomedgpt import BioMedGPT, load_model, ask
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "BioMedGPT": "biomedgpt.model.biomedgpt",
    "BioMedGPTConfig": "biomedgpt.config",
    "preset": "biomedgpt.config",
    "load_model": "biomedgpt.inference",
    "ask": "biomedgpt.inference",
    "generate_batch": "biomedgpt.inference",
    "Message": "biomedgpt.inference",
    "GenerationSettings": "biomedgpt.inference",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'biomedgpt' has no attribute {name!r}")
