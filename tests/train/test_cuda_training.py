"""Training on a CUDA GPU: accelerate picks the GPU and bf16 mixed precision, the losses fall, a resumed run
ends exactly where the uninterrupted one ends, and a LoRA finetune ships base + `lora/` that loads back onto the
GPU. Skipped without CUDA (CI has none). Text and proteins only: the GPU machine we check on has no RDKit."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from biomedgpt.data.records import QARecord, write_jsonl
from biomedgpt.train.checkpointing import CHECKPOINTS, LATEST
from biomedgpt.train.loop import train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CI has none)")


def _losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
            if line.strip() and "loss" in json.loads(line)]


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {k: v for f in sorted(folder.rglob("*.safetensors")) for k, v in load_file(f).items()}


def test_lm_stage_on_the_gpu_in_bf16_resumes_exactly(make_config, train_files):
    config = make_config("lm", train_files["corpus"], seed=5, optim={"lr": 3e-3},
                         schedule={"batch_size": 4, "max_steps": 8, "save_every": 4})
    summary = train(config)
    run_dir = Path(config.output_dir)
    info = json.loads((run_dir / "run.json").read_text())
    assert info["device"].startswith("cuda") and info["mixed_precision"] == "bf16"
    losses = _losses(run_dir)
    assert summary["steps"] == 8 and all(map(lambda x: x == x, losses)) and losses[-1] < losses[0]
    uninterrupted = _weights(run_dir / "model")

    # Rewind to the step-4 checkpoint as if the run had died after it, and resume.
    shutil.rmtree(run_dir / "model")
    (run_dir / "summary.json").unlink()
    (run_dir / CHECKPOINTS / LATEST).write_text("step-00000004\n")
    train(config, resume=True)
    assert _losses(run_dir) == pytest.approx(losses, rel=1e-5)
    resumed = _weights(run_dir / "model")
    assert resumed.keys() == uninterrupted.keys()
    for key, value in uninterrupted.items():
        assert torch.allclose(value.float(), resumed[key].float(), atol=1e-5), key


def test_lora_finetune_on_the_gpu_ships_an_adapter_that_loads_onto_the_gpu(make_config, referenced_base_start,
                                                                           tmp_path):
    from biomedgpt.inference import GenerationSettings, ask, load_model
    from biomedgpt.model.biomedgpt import BioMedGPT

    sequences = ["MALWMRLLPLLALLALWGPDPAAAFVNQ", "MKTAYIAKQRQISFVKSHFSRQ", "MGSSHHHHHHSSGLVPRGSHM"]
    records = [QARecord(id=f"p{i}", question="What is this protein?", answer=answer, proteins=[sequence])
               for i, (sequence, answer) in enumerate(zip(sequences, ["A hormone.", "A kinase.", "A tag."]))]
    write_jsonl(tmp_path / "proteins.jsonl", records)

    run = make_config("finetune", tmp_path / "proteins.jsonl", model=str(referenced_base_start),
                      schedule={"batch_size": 3, "max_steps": 6}, optim={"lr": 3e-2})
    summary = train(run)
    losses = _losses(Path(run.output_dir))
    assert summary["steps"] == 6 and losses[-1] < losses[0]
    saved = Path(run.output_dir) / "model"
    assert not (saved / "lm").exists() and (saved / "lora" / "adapter_model.safetensors").is_file()

    gpu = load_model(str(saved))
    cpu = BioMedGPT.from_pretrained(saved)
    assert gpu.device.type == "cuda"
    settings = GenerationSettings(max_new_tokens=8, repetition_penalty=1.0)
    question = ("What is this protein?", [], [sequences[1]])
    assert ask(gpu, *question, settings=settings) == ask(cpu, *question, settings=settings)
