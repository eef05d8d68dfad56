"""`biomedgpt inspect`: parameter counts from the meta-device skeleton and hand-checked memory arithmetic."""

import json

import pytest

from biomedgpt.cli import main
from biomedgpt.errors import UserError
from biomedgpt.model.inspect import (
    LMShape,
    ModelSummary,
    Workload,
    estimate_inference,
    estimate_training,
    summarize,
)


def test_tiny_preset_counts_match_the_real_model(tiny_model):
    summary = summarize("tiny")
    for part, count in summary.parameters.items():
        assert count == sum(p.numel() for p in getattr(tiny_model, part).parameters()), part
    assert summary.lm == LMShape(layers=2, hidden=64, q_hidden=64, kv_hidden=32, intermediate=128, vocab=259)


def test_model_folder_reports_stored_dtypes(tiny_model_dir):
    summary = summarize(str(tiny_model_dir))
    assert summary.dtypes["llm"] == "float32 (stored)" and summary.dtypes["proj_mol"] == "float32 (stored)"


def test_published_10b_shapes_without_any_file(capsys):
    assert main(["inspect", "biomedgpt-10b", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    params = result["summary"]["parameters"]
    assert params["llm"] == 6_738_415_616  # Llama-2-7B's published parameter count
    assert params["proj_mol"] == 4096 * 300 + 4096 and params["proj_prot"] == 4096 * 2560 + 4096
    assert 2.8e9 < params["prot_structure_encoder"] < 2.9e9  # ESM-2 3B
    assert len(result["training"]) == 12 and result["inference"]["weights"] == 2 * result["summary"]["total"]
    assert main(["inspect", "biomedgpt-10b"]) == 0
    assert "stage3-finetune" in capsys.readouterr().out


def _toy() -> ModelSummary:
    lm = LMShape(layers=2, hidden=8, q_hidden=8, kv_hidden=4, intermediate=16, vocab=10)
    parts = {"llm": 1000, "mol_structure_encoder": 100, "proj_mol": 10, "prot_structure_encoder": 200, "proj_prot": 20}
    return ModelSummary("toy", parts, {}, lm)


def test_memory_arithmetic_by_hand():
    work = Workload(batch_size=2, seq_len=3, lora_rank=1, dtype="bfloat16")  # 6 tokens, 2 bytes per element
    # weights 1330*2 + KV 2 layers*2 (k,v)*4*6 tokens*2 bytes + logits 2*10*4
    assert estimate_inference(_toy(), work) == {"weights": 2660, "kv_cache": 192, "logits": 80, "total": 2932}
    # stage 2: adapters (30 params) train; per layer-token 4*8+2*8+2*4+4*16 = 120 elements
    align = estimate_training(_toy(), work, "stage2-align", lora=False, checkpointing=False)
    assert align == {"trainable_parameters": 30, "frozen_weights": 1300 * 2, "trainable_states": 30 * 16,
                     "activations": 2 * 120 * 6 * 2 + 6 * 10 * 10, "total": 2600 + 480 + 3480}
    # stage 1 with LoRA r=1 on 7 matrices: (16 + 2*12 + 16 + 3*24) per layer = 128, 2 layers; only the LM loaded
    pretrain = estimate_training(_toy(), work, "stage1-pretrain", lora=True, checkpointing=True)
    assert pretrain["trainable_parameters"] == 256 and pretrain["frozen_weights"] == 2000
    assert pretrain["activations"] == 2 * 8 * 6 * 2 + 120 * 6 * 2 + 600
    full = estimate_training(_toy(), work, "stage3-finetune", lora=False, checkpointing=False)
    assert full["trainable_parameters"] == 1030 and full["frozen_weights"] == 300 * 2


def test_bad_inputs_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="not a preset"):
        summarize(str(tmp_path / "nothing"))
    with pytest.raises(UserError, match="unknown stage"):
        estimate_training(_toy(), Workload(), "stage4", False, False)
    with pytest.raises(UserError):
        Workload(seq_len=0)
