"""Shared fixtures. Tests run offline; data from ../shared/data is optional (tests that need it skip)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("BIOMEDGPT_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to ../shared/data; skips the test with a clear reason when it is absent (e.g. a user's clone)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"needs the development datasets in {SHARED_DATA} (present in CI, not in a user's clone)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_model():
    """A random `tiny` preset BioMedGPT (2-layer Llama, byte tokenizer, 2-layer GIN and ESM), in eval mode.
    Shared by many tests: do not modify it in place (use `tiny_model_factory` for a private copy)."""
    from biomedgpt.model.biomedgpt import BioMedGPT

    return BioMedGPT.from_preset("tiny")


@pytest.fixture()
def tiny_model_factory():
    from biomedgpt.model.biomedgpt import BioMedGPT

    return lambda **overrides: BioMedGPT.from_preset("tiny", **overrides)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_model) -> Path:
    """The tiny model saved with `save_pretrained` (a real model folder for CLI / server tests)."""
    directory = tmp_path_factory.mktemp("tiny-model")
    tiny_model.save_pretrained(directory)
    return directory
