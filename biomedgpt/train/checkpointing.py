"""Atomic checkpoints and exact resume.

Layout of a run folder:
    config.yaml                resolved config;   run.json   git commit, package versions, seed, command
    metrics.jsonl              one JSON object per logged step / evaluation
    checkpoints/step-00000100/ trainable.safetensors, optimizer.pt, scheduler.pt, state.json, rng-{rank}.pt
    checkpoints/latest         the name of the newest complete checkpoint (written last, atomically)
    model/                     the final model (`BioMedGPT.from_pretrained` loads it)

A checkpoint folder is assembled under a temporary name and renamed into place when complete; `latest` is
replaced after that. A crash (even SIGKILL) at any instant therefore leaves `latest` naming a complete
checkpoint. Only trainable weights (and the buffers of trainable modules, e.g. BatchNorm statistics) are stored:
everything else is rebuilt from `config.model`, exactly as at the start of the run.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from biomedgpt.errors import UserError
from biomedgpt.io import atomic_path, atomic_write_text

CHECKPOINTS = "checkpoints"
LATEST = "latest"
WEIGHTS = "trainable.safetensors"


def trainable_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters with requires_grad, plus the persistent buffers of every module owning such a parameter."""
    state = {name: p.detach() for name, p in module.named_parameters() if p.requires_grad}
    for prefix, sub in module.named_modules():
        if any(p.requires_grad for p in sub.parameters(recurse=False)):
            for name, buffer in sub.named_buffers(recurse=False):
                if buffer is not None and name not in sub._non_persistent_buffers_set:
                    state[f"{prefix}.{name}" if prefix else name] = buffer.detach()
    return {name: tensor.contiguous().cpu() for name, tensor in state.items()}


def load_trainable_state(module: nn.Module, path: Path) -> None:
    from safetensors.torch import load_file

    state = load_file(str(path))
    expected = trainable_state(module)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise UserError(f"{path} does not match this run's trainable parameters: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]} (was the config changed?)")
    module.load_state_dict(state, strict=False)


def capture_rng() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = run_dir / CHECKPOINTS / LATEST
    if not pointer.is_file():
        return None
    path = run_dir / CHECKPOINTS / pointer.read_text().strip()
    return path if (path / "state.json").is_file() else None


def _torch_save(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def save_checkpoint(
    run_dir: Path, module: nn.Module, optimizer, scheduler, state: dict[str, Any], accelerator, keep: int
) -> Path:
    """Write a checkpoint for `state["step"]` from every process (each stores its own RNG state)."""
    root = run_dir / CHECKPOINTS
    name = f"step-{state['step']:08d}"
    staging = root / f".tmp-{name}"
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    accelerator.wait_for_everyone()
    _torch_save(capture_rng(), staging / f"rng-{accelerator.process_index}.pt")
    if accelerator.is_main_process:
        from safetensors.torch import save_file

        save_file(trainable_state(module), str(staging / WEIGHTS))
        _torch_save(optimizer.state_dict(), staging / "optimizer.pt")
        _torch_save(scheduler.state_dict(), staging / "scheduler.pt")
        atomic_write_text(staging / "state.json", json.dumps(state, indent=2) + "\n")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        final = root / name
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
        atomic_write_text(root / LATEST, name + "\n")
        for old in sorted(p for p in root.glob("step-*") if p.is_dir())[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return root / name


def load_checkpoint(path: Path, module: nn.Module, optimizer, scheduler, accelerator) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler and this process's RNG; return the saved loop state."""
    state = json.loads((path / "state.json").read_text())
    if state.get("world_size", 1) != accelerator.num_processes:
        raise UserError(f"{path} was written by {state.get('world_size')} processes; resume needs the same number "
                         f"(this run has {accelerator.num_processes})")
    load_trainable_state(module, path / WEIGHTS)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=False))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    restore_rng(torch.load(path / f"rng-{accelerator.process_index}.pt", weights_only=False))
    return state
