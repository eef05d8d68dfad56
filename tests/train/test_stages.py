"""Every stage end to end on the tiny preset: loss falls when overfitting one batch, the expected files are
written, the right parameters (and only those) change, and the saved model loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from biomedgpt.model.biomedgpt import BioMedGPT
from biomedgpt.train.loop import train


def _losses(run_dir) -> list[float]:
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def _same(a: dict, b: dict, prefix: str) -> bool:
    keys = [k for k in a if k.startswith(prefix)]
    assert keys, prefix
    return all(torch.equal(a[k], b[k]) for k in keys)


# Tests that compare weights start from `tiny_model_dir` (tiny_model saved), so both sides share one start.


def _assert_run_files(run_dir: Path) -> None:
    for name in ("config.yaml", "run.json", "metrics.jsonl", "summary.json", "model/config.json",
                 "checkpoints/latest"):
        assert (run_dir / name).is_file(), name
    info = json.loads((run_dir / "run.json").read_text())
    assert {"git_commit", "versions", "seed", "command", "processes"} <= set(info)
    assert "torch" in info["versions"] and "transformers" in info["versions"]
    checkpoint = run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text().strip()
    assert {p.name for p in checkpoint.iterdir()} == {
        "trainable.safetensors", "optimizer.pt", "scheduler.pt", "state.json", "rng-0.pt"}


def test_lm_then_align_chain(make_config, train_files, tmp_path):
    """Stage 1 (packed causal LM) then stage 2 from its output: the adapters learn, the LM does not move."""
    answers = [json.loads(line)["answer"] for line in train_files["qa"].read_text().splitlines()]
    corpus = tmp_path / "answers.txt"
    corpus.write_text("\n\n".join(answers * 4))
    lm = make_config("lm", corpus, data={"max_length": 32}, schedule={"batch_size": 8, "max_steps": 30},
                     optim={"lr": 1e-2})
    train(lm)
    lm_dir = Path(lm.output_dir)
    losses = _losses(lm_dir)
    assert losses[-1] < 0.6 * losses[0]
    _assert_run_files(lm_dir)

    align = make_config("align", train_files["qa"], model=str(lm_dir / "model"),
                        schedule={"batch_size": 6, "max_steps": 15}, optim={"lr": 2e-2})
    summary = train(align)
    losses = _losses(align.output_dir)
    # A frozen 2-layer LM can only be steered a little through a few soft tokens; the loss must still fall.
    assert losses[-1] < min(losses[:3]) - 0.005
    assert summary["encoder_cache"] == {"hits": 15 * 6 - 6, "misses": 6}  # each entity encoded once
    before = BioMedGPT.from_pretrained(lm_dir / "model").state_dict()
    after = BioMedGPT.from_pretrained(Path(align.output_dir) / "model").state_dict()
    assert _same(before, after, "llm.") and _same(before, after, "mol_structure_encoder.")
    assert not _same(before, after, "proj_mol.") and not _same(before, after, "proj_prot.")


def test_finetune_lora_merges_into_the_saved_lm(make_config, train_files, tiny_model, tiny_model_dir):
    files = [str(train_files["qa"]), str(train_files["mcq"])]  # QA and multiple-choice records together
    config = make_config("finetune", train_files["qa"], data={"train": files}, model=str(tiny_model_dir),
                         schedule={"batch_size": 8, "max_steps": 15}, optim={"lr": 3e-2})
    train(config)
    run_dir = Path(config.output_dir)
    assert _losses(run_dir)[-1] < _losses(run_dir)[0] - 0.05  # a random tied output layer bounds the logits
    assert (run_dir / "lora-adapter" / "adapter_config.json").is_file()
    model = BioMedGPT.from_pretrained(run_dir / "model")
    tuned = model.state_dict()
    assert not any("lora" in key for key in tuned)  # merged: a plain LM again
    assert not _same(tiny_model.state_dict(), tuned, "llm.model.layers.0.self_attn.q_proj")
    assert _same(tiny_model.state_dict(), tuned, "llm.model.layers.0.mlp")  # not a LoRA target

    from biomedgpt.inference import GenerationSettings, ask

    assert isinstance(ask(model, "Describe this molecule.", ["CCO"], settings=GenerationSettings(8)), str)


def test_encoder_molecule_attribute_masking(make_config, train_files, tiny_model, tiny_model_dir):
    config = make_config("encoder-molecule", train_files["mols"], model=str(tiny_model_dir),
                         schedule={"batch_size": 5, "max_steps": 30},
                         optim={"lr": 1e-2})
    train(config)
    losses = _losses(config.output_dir)
    assert losses[-1] < 0.3 * losses[0]
    trained = BioMedGPT.from_pretrained(Path(config.output_dir) / "model").state_dict()
    start = tiny_model.state_dict()
    assert not _same(start, trained, "mol_structure_encoder.gnns.")
    assert not _same(start, trained, "mol_structure_encoder.batch_norms.0.running_mean")
    assert _same(start, trained, "llm.") and _same(start, trained, "prot_structure_encoder.")


def test_encoder_protein_masked_lm(make_config, train_files, tiny_model, tiny_model_dir):
    config = make_config("encoder-protein", train_files["proteins"], model=str(tiny_model_dir),
                         protein_max_residues=30, schedule={"batch_size": 4, "max_steps": 40},
                         optim={"lr": 1e-2})
    train(config)
    losses = _losses(config.output_dir)
    # Masked positions are drawn anew each step, so single-step losses are noisy: compare 5-step means.
    assert sum(losses[-5:]) / 5 < 0.85 * sum(losses[:5]) / 5, losses
    model = BioMedGPT.from_pretrained(Path(config.output_dir) / "model")
    assert model.config.protein.max_residues == 30  # the cap travels with the model
    trained = model.state_dict()
    assert not _same(tiny_model.state_dict(), trained, "prot_structure_encoder.")
    assert _same(tiny_model.state_dict(), trained, "mol_structure_encoder.")


@pytest.mark.parametrize("stage", ["encoder-molecule", "align"])
def test_single_atom_batch_trains_the_gin(make_config, tmp_path, stage):
    """BatchNorm cannot normalise one node in train mode: a batch holding only water must still train."""
    from biomedgpt.data.records import QARecord, write_jsonl

    path = tmp_path / ("water.smi" if stage == "encoder-molecule" else "water.jsonl")
    if stage == "encoder-molecule":
        path.write_text("O\n")
    else:
        write_jsonl(path, [QARecord(id="w", question="What is it?", answer="Water.", molecules=["O"])])
    config = make_config(stage, path, schedule={"batch_size": 1, "max_steps": 2}, trainable={"encoders": True})
    assert train(config)["steps"] == 2


def test_encoder_cache_gives_the_same_losses(make_config, train_files):
    runs = []
    for cache in (True, False):
        config = make_config("align", train_files["qa"], cache_encoder_outputs=cache,
                             output_dir=str(Path(make_config("align", "x").output_dir) / f"cache-{cache}"),
                             schedule={"batch_size": 3, "max_steps": 6})
        runs.append((train(config)["encoder_cache"], _losses(config.output_dir)))
    (with_cache, cached), (without, plain) = runs
    assert with_cache["misses"] == 6 and without is None
    assert cached == pytest.approx(plain, abs=1e-6)


def test_gradient_accumulation_and_checkpointing_match(make_config, train_files, tmp_path):
    # fp32 on every device: on a GPU `precision: auto` means bf16 autocast, whose rounding differs between one
    # batch of 4 and two of 2 (2e-4 in the loss, seen on an H100)
    base = {"data": {"max_length": 48}, "optim": {"lr": 3e-3}, "precision": "fp32"}
    reference = make_config("lm", train_files["corpus"], output_dir=str(tmp_path / "a"),
                            schedule={"batch_size": 4, "max_steps": 4}, **base)
    accumulated = make_config("lm", train_files["corpus"], output_dir=str(tmp_path / "b"),
                              schedule={"batch_size": 2, "grad_accum": 2, "max_steps": 4},
                              gradient_checkpointing=True, **base)
    train(reference)
    train(accumulated)
    assert _losses(accumulated.output_dir) == pytest.approx(_losses(reference.output_dir), abs=1e-5)


def test_validation_bf16_and_plot(make_config, train_files):
    from biomedgpt.cli import main

    config = make_config("align", train_files["qa"], precision="bf16",
                         data={"validation": [str(train_files["qa_val"])]},
                         schedule={"batch_size": 3, "max_steps": 4, "eval_every": 2})
    summary = train(config)
    rows = [json.loads(line) for line in (Path(config.output_dir) / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "val_loss" in r] == [2, 4]
    assert summary["val_loss"] == pytest.approx(rows[-1]["val_loss"])
    assert main(["plot", config.output_dir]) == 0
    assert (Path(config.output_dir) / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_existing_run_needs_resume(make_config, train_files):
    config = make_config("lm", train_files["corpus"], data={"max_length": 32}, schedule={"max_steps": 1})
    train(config)
    from biomedgpt.errors import UserError

    with pytest.raises(UserError, match="already holds a run"):
        train(config)


def test_validation_fraction_holds_out_training_items(make_config, train_files):
    config = make_config("encoder-molecule", train_files["mols"], data={"validation_fraction": 0.4},
                         schedule={"batch_size": 3, "max_steps": 2, "eval_every": 1})
    summary = train(config)
    rows = [json.loads(line) for line in (Path(config.output_dir) / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "val_loss" in r] == [1, 2] and summary["val_loss"] > 0


def test_finetune_ships_a_lora_adapter_over_a_referenced_base_lm(make_config, train_files, tiny_model, tmp_path,
                                                                 referenced_base_start):
    """A start model whose LM is a referenced base (not a copy) saves base + `lora/` (no merged LM), loads back
    to the merged weights, exports with the adapter, and records its retrieval-augmented prompts."""
    from biomedgpt.data.records import read_qa
    from biomedgpt.model.export import export_model
    from biomedgpt.retrieval import RetrievalIndex

    base = tmp_path / "base-lm"
    assert not (tmp_path / "start" / "lm").exists()
    RetrievalIndex.from_records(read_qa(train_files["qa"])).save(tmp_path / "start" / "index.json.gz")

    run = make_config("finetune", train_files["qa"], model=str(tmp_path / "start"), evidence_in_prompt=1,
                      data={"max_length": 1500},  # byte tokens; the evidence lengthens every prompt
                      schedule={"batch_size": 6, "max_steps": 6}, optim={"lr": 3e-2})
    train(run)
    saved = Path(run.output_dir) / "model"
    assert not (saved / "lm").exists() and (saved / "lora" / "adapter_model.safetensors").is_file()
    saved_config = json.loads((saved / "config.json").read_text())
    assert saved_config["lm"]["lora"] == "lora" and saved_config["lm"]["name_or_path"] == str(base)
    assert saved_config["evidence_in_prompt"] == 1
    tuned = BioMedGPT.from_pretrained(saved)
    assert not _same(tiny_model.state_dict(), tuned.state_dict(), "llm.model.layers.0.self_attn.q_proj")
    assert not any("lora" in key for key in tuned.state_dict())

    summary = export_model(saved, tmp_path / "shipped", None)  # no index of its own: the repository's serves
    assert sorted(summary["files"]) == ["config.json", "lora/adapter_config.json", "lora/adapter_model.safetensors",
                                        "model.safetensors"]
    shipped = BioMedGPT.from_pretrained(tmp_path / "shipped")  # checksums verified
    for key, value in tuned.state_dict().items():
        assert torch.allclose(value, shipped.state_dict()[key], atol=1e-6), key

    # Finetuning the shipped folder again continues its adapter: same function at the start, base + lora/ after.
    from biomedgpt.train.stages import _apply_lora

    again = make_config("finetune", train_files["qa"], model=str(tmp_path / "shipped"), evidence_in_prompt=1,
                        output_dir=str(tmp_path / "run-again"), data={"max_length": 1500},
                        schedule={"batch_size": 6, "max_steps": 3}, optim={"lr": 3e-2})
    wrapped = BioMedGPT.from_pretrained(tmp_path / "shipped")
    _apply_lora(wrapped, again)
    ids = torch.tensor([[5, 17, 42, 99, 7]])
    assert torch.allclose(wrapped.llm(input_ids=ids).logits, shipped.llm(input_ids=ids).logits, atol=1e-5)
    assert sum(p.requires_grad for p in wrapped.llm.parameters()) > 0
    train(again)
    continued = Path(again.output_dir) / "model"
    assert not (continued / "lm").exists() and (continued / "lora" / "adapter_model.safetensors").is_file()
    assert json.loads((continued / "config.json").read_text())["lm"]["name_or_path"] == str(base)
    before = (tmp_path / "shipped" / "lora" / "adapter_model.safetensors").read_bytes()
    assert (continued / "lora" / "adapter_model.safetensors").read_bytes() != before
    BioMedGPT.from_pretrained(continued)  # checksums and the adapter load back


def test_merge_lora_without_peft_equals_peft(tiny_model_factory, tmp_path):
    """The plain-LoRA merge (no peft import at load) gives peft's merged weights; other adapter kinds go to peft."""
    from peft import LoraConfig, get_peft_model

    from biomedgpt.model.biomedgpt import merge_lora

    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    adapted = get_peft_model(tiny_model_factory().llm, lora)
    for name, parameter in adapted.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.1)  # peft starts B at zero: make the update non-trivial
    adapted.save_pretrained(tmp_path / "adapter")
    expected = adapted.merge_and_unload().state_dict()
    merged = merge_lora(tiny_model_factory().llm, tmp_path / "adapter").state_dict()
    base = tiny_model_factory().llm.state_dict()
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged[q], base[q])
    for key, value in expected.items():
        assert torch.allclose(merged[key], value, atol=1e-6), key

    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps({**config, "use_rslora": True}))
    rslora = merge_lora(tiny_model_factory().llm, tmp_path / "adapter")  # peft's path: scale alpha / sqrt(r)
    assert not torch.allclose(rslora.state_dict()[q], expected[q])

    # a bf16 LM (merged in place, on its device) gets the same update, rounded to bf16
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps(config))  # the plain LoRA again
    half = merge_lora(tiny_model_factory().llm.to(torch.bfloat16), tmp_path / "adapter").state_dict()
    assert half[q].dtype == torch.bfloat16
    torch.testing.assert_close(half[q].float(), expected[q], atol=2e-2, rtol=2e-2)
    assert not torch.allclose(half[q].float(), base[q], atol=1e-3)


def test_merge_lora_keeps_tied_weights_tied(tiny_model_factory, tmp_path):
    """An adapter on a tied LM head (the tiny preset ties it to the embeddings, as SmolLM2 does) is merged as peft
    merges it: both stay one tensor, so every decode path sees the same merged weights."""
    from peft import LoraConfig, get_peft_model

    from biomedgpt.model.biomedgpt import merge_lora

    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "lm_head"])
    adapted = get_peft_model(tiny_model_factory().llm, lora)
    for name, parameter in adapted.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.1)
    adapted.save_pretrained(tmp_path / "adapter")
    expected = adapted.merge_and_unload().state_dict()
    llm = merge_lora(tiny_model_factory().llm, tmp_path / "adapter")
    assert llm.lm_head.weight is llm.get_input_embeddings().weight
    merged = llm.state_dict()
    assert not torch.equal(merged["lm_head.weight"], tiny_model_factory().llm.state_dict()["lm_head.weight"])
    for key in ("lm_head.weight", "model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight"):
        assert torch.allclose(merged[key], expected[key], atol=1e-6), key
