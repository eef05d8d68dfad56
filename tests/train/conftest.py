"""Tiny training files and a config helper for the training tests (every test builds its own data)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from biomedgpt.data.records import MCQRecord, QARecord, write_jsonl

MOLECULES = [("CCO", "It is ethanol, a simple alcohol."), ("CC(=O)Oc1ccccc1C(=O)O", "It is aspirin, an analgesic."),
             ("O", "It is water."), ("c1ccccc1", "It is benzene, an aromatic ring.")]
PROTEINS = [("MALWMRLLPLLALLALWGPDPAAAFVNQ", "It is a hormone precursor."), ("MKTAYIAKQRQISFVKSHFSRQ", "A kinase.")]
SEQUENCES = ["MALWMRLLPLLALLALWGPDPAAAFVNQHLCGSHLVEALYLV", "MKTAYIAKQRQISFVKSHFSRQ",
             "MSLPILSTTYAAENTVPASKSTYVVKNLNIGDLPVKTLVPITAKTREQ", "MGSSHHHHHHSSGLVPRGSHM"]


@pytest.fixture(scope="session")
def train_files(tmp_path_factory) -> dict[str, Path]:
    """corpus.jsonl (lm), qa.jsonl / qa_val.jsonl (align, finetune), mols.smi, proteins.fasta."""
    root = tmp_path_factory.mktemp("train-data")
    docs = ["Aspirin irreversibly inhibits cyclooxygenase and so reduces prostaglandin synthesis. ",
            "Insulin lowers blood glucose by promoting its uptake into muscle and fat cells. ",
            "Kinases transfer phosphate groups from ATP to proteins, switching them on or off. "]
    with open(root / "corpus.jsonl", "w") as handle:
        for i in range(30):
            handle.write(json.dumps({"id": i, "text": docs[i % 3] * (1 + i % 2)}) + "\n")
    records = [QARecord(id=f"m{i}", question="Describe this molecule.", answer=answer, molecules=[smiles])
               for i, (smiles, answer) in enumerate(MOLECULES)]
    records += [QARecord(id=f"p{i}", question="What is this protein?", answer=answer, proteins=[sequence])
                for i, (sequence, answer) in enumerate(PROTEINS)]
    write_jsonl(root / "qa.jsonl", records)
    write_jsonl(root / "qa_val.jsonl", records[:2])
    write_jsonl(root / "mcq.jsonl", [
        MCQRecord(id="q1", question="Does aspirin inhibit COX?", options={"A": "yes", "B": "no", "C": "maybe"},
                  answer="A", context="Aspirin acetylates cyclooxygenase."),
        MCQRecord(id="q2", question="Which organ makes insulin?", options={"A": "liver", "B": "pancreas"}, answer="B")])
    (root / "mols.smi").write_text("smiles\n" + "\n".join(s for s, _ in MOLECULES) + "\nCCN(CC)CC\nnot_a_smiles\n")
    (root / "proteins.fasta").write_text("".join(f">p{i}\n{s}\n" for i, s in enumerate(SEQUENCES)))
    return {"corpus": root / "corpus.jsonl", "qa": root / "qa.jsonl", "qa_val": root / "qa_val.jsonl",
            "mcq": root / "mcq.jsonl", "mols": root / "mols.smi", "proteins": root / "proteins.fasta"}


@pytest.fixture()
def make_config(tmp_path):
    """Build a validated TrainConfig for `stage` with the stage defaults, fast settings and `overrides`."""
    from biomedgpt.train.config import build_config, merge
    from biomedgpt.train.stages import STAGE_DEFAULTS

    def make(stage: str, train, **sections):
        base = {"stage": stage, "model": "tiny", "output_dir": str(tmp_path / f"run-{stage}"),
                "data": {"train": [str(train)], "max_length": 400}, "threads": 1, "progress": False,
                "schedule": {"batch_size": 4, "max_steps": 4, "save_every": 100}}
        return build_config(merge(merge(STAGE_DEFAULTS[stage], base), sections))

    return make


@pytest.fixture()
def referenced_base_start(tiny_model, tmp_path) -> Path:
    """The tiny model saved as the shipped default model is: its LM a base referenced by path (`base-lm/`), not
    a copy, so that a LoRA finetune from it ships base + `lora/`. Returns the model folder (`start/`)."""
    import copy

    from biomedgpt.config import LMConfig
    from biomedgpt.model.biomedgpt import BioMedGPT

    base = tmp_path / "base-lm"
    tiny_model.llm.save_pretrained(base)
    config = copy.deepcopy(tiny_model.config)
    config.lm = LMConfig(name_or_path=str(base), tokenizer="bytes")
    start = BioMedGPT.from_config(config)
    start.load_state_dict(tiny_model.state_dict())
    start.save_pretrained(tmp_path / "start")
    return tmp_path / "start"


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models on a shared 2-core machine run far faster on one thread (no OpenMP waits); restored after."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
