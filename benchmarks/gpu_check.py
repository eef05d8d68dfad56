"""Check the GPU code paths on a CUDA machine (CI has none): training with bf16 autocast, exact resume, a LoRA
finetune with retrieval-augmented prompts, `load_model`'s device map for fp32 and bf16 folders, and greedy
generation on the GPU against the CPU. Uses the `tiny` preset (no downloads); writes one JSON report.

    python benchmarks/gpu_check.py OUT.json

Runs on a CPU too (every path then stays on the CPU), which is how it is tested before a GPU session.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

from biomedgpt.data.records import QARecord, write_jsonl
from biomedgpt.inference import GenerationSettings, Message, generate_batch, load_model
from biomedgpt.model.biomedgpt import BioMedGPT
from biomedgpt.retrieval import RetrievalIndex
from biomedgpt.train.config import build_config, merge
from biomedgpt.train.loop import train
from biomedgpt.train.stages import STAGE_DEFAULTS

MOLECULES = [("CCO", "It is ethanol, a simple alcohol."), ("CC(=O)Oc1ccccc1C(=O)O", "It is aspirin, an analgesic."),
             ("O", "It is water."), ("c1ccccc1", "It is benzene, an aromatic ring."),
             ("CC(=O)O", "It is acetic acid."), ("OC(=O)c1ccccc1O", "It is salicylic acid.")]
PROTEINS = [("MALWMRLLPLLALLALWGPDPAAAFVNQ", "It is a hormone precursor."), ("MKTAYIAKQRQISFVKSHFSRQ", "A kinase.")]


def _config(stage: str, work: Path, name: str, **sections):
    base = {"stage": stage, "model": str(work / "tiny"), "output_dir": str(work / name),
            "data": {"train": [str(work / "qa.jsonl")], "max_length": 1500}, "progress": False,
            "schedule": {"batch_size": 4, "max_steps": 20, "save_every": 5}}
    return build_config(merge(merge(STAGE_DEFAULTS[stage], base), sections))


def _losses(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def _conversations() -> list[list[Message]]:
    return [[Message("user", "Describe this molecule.", [smiles])] for smiles, _ in MOLECULES[:3]] + \
           [[Message("user", "What is this protein?", [], [PROTEINS[0][0]])]]


def check_training(work: Path, report: dict) -> None:
    """align with bf16 autocast (auto precision) for 20 steps; the same run cut back to its step-10 checkpoint
    (as if killed there) and resumed must end at the same adapter weights."""
    import shutil

    start = time.perf_counter()
    summary = train(_config("align", work, "align", optim={"lr": 2e-2}))
    run = json.loads((work / "align" / "run.json").read_text())
    losses = _losses(work / "align")
    report["align"] = {"device": run.get("device"), "mixed_precision": run.get("mixed_precision"),
                       "first_loss": losses[0], "last_loss": losses[-1], "finite": all(map(torch.isfinite,
                       torch.tensor(losses))), "wall_s": round(time.perf_counter() - start, 1),
                       "summary_keys": sorted(summary)}
    cut = work / "align-interrupted"
    config = _config("align", work, cut.name, optim={"lr": 2e-2}, schedule={"keep_checkpoints": 10})
    train(config)
    for later in ("step-00000015", "step-00000020"):
        shutil.rmtree(cut / "checkpoints" / later)
    shutil.rmtree(cut / "model")
    (cut / "checkpoints" / "latest").write_text("step-00000010")
    train(config, resume=True)
    straight = BioMedGPT.from_pretrained(work / "align" / "model").state_dict()
    resumed = BioMedGPT.from_pretrained(work / "align-interrupted" / "model").state_dict()
    diff = max((straight[k].float() - resumed[k].float()).abs().max().item() for k in straight if "proj_" in k)
    report["resume_max_abs_diff_adapters"] = diff


def check_lora_with_evidence(work: Path, report: dict) -> None:
    from biomedgpt.data.records import read_qa

    RetrievalIndex.from_records(read_qa(work / "qa.jsonl")).save(work / "tiny" / "index.json.gz")
    train(_config("finetune", work, "finetune", evidence_in_prompt=1, optim={"lr": 3e-2},
                  schedule={"max_steps": 10}))
    losses = _losses(work / "finetune")
    saved = json.loads((work / "finetune" / "model" / "config.json").read_text())
    report["finetune_lora_evidence"] = {"first_loss": losses[0], "last_loss": losses[-1],
                                        "evidence_in_prompt": saved["evidence_in_prompt"]}


def check_loading_and_generation(work: Path, report: dict) -> None:
    settings = GenerationSettings(max_new_tokens=12)
    gpu = load_model(str(work / "align" / "model"))  # device_map="auto" when CUDA is available
    cpu = BioMedGPT.from_pretrained(work / "align" / "model")
    gpu_answers = generate_batch(gpu, _conversations(), settings, batch_size=4)
    cpu_answers = generate_batch(cpu, _conversations(), settings, batch_size=4)
    report["load_fp32"] = {"device": str(gpu.device), "dtype": str(gpu.llm.dtype),
                           "greedy_equal_to_cpu": sum(a == b for a, b in zip(gpu_answers, cpu_answers)),
                           "of": len(cpu_answers)}
    bf16 = BioMedGPT.from_pretrained(work / "align" / "model")
    bf16.config.lm.dtype = "bfloat16"
    bf16.llm.to(torch.bfloat16)
    bf16.lm_modified = True  # the tiny LM is random: it is stored with the model
    bf16.save_pretrained(work / "align-bf16")
    loaded = load_model(str(work / "align-bf16"))
    answers = generate_batch(loaded, _conversations(), settings, batch_size=4)
    report["load_bf16"] = {"device": str(loaded.device), "dtype": str(loaded.llm.dtype), "answers": answers}
    if torch.cuda.is_available():
        report["cuda_max_memory_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("gpu_check.json")
    report: dict = {"torch": torch.__version__, "cuda": torch.cuda.is_available(),
                    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "errors": {}}
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    records = [QARecord(id=f"m{i}", question="Describe this molecule.", answer=a, molecules=[s])
               for i, (s, a) in enumerate(MOLECULES)]
    records += [QARecord(id=f"p{i}", question="What is this protein?", answer=a, proteins=[s])
                for i, (s, a) in enumerate(PROTEINS)]
    write_jsonl(work / "qa.jsonl", records)
    torch.manual_seed(0)
    BioMedGPT.from_preset("tiny").save_pretrained(work / "tiny")
    for check in (check_training, check_lora_with_evidence, check_loading_and_generation):
        try:
            check(work, report)
        except Exception:  # report every path, not only the first failure
            report["errors"][check.__name__] = traceback.format_exc()
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
