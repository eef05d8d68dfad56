"""OpenBioMed `biomedgpt_10b.pth` (all five prefixes, one-row-larger embedding, pooler and legacy buffers) at toy
size: load, convert to our format, reload with `from_pretrained`; outputs equal the naively loaded weights."""

import hashlib

import pytest
import torch
from _published_layouts import logits, openbiomed_state_dict, write_openbiomed

from biomedgpt.cli import main
from biomedgpt.errors import UserError
from biomedgpt.model.biomedgpt import BioMedGPT
from biomedgpt.model.published import load_openbiomed

PREFIXES = {"llm", "mol_structure_encoder", "prot_structure_encoder", "proj_mol", "proj_prot"}


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    pth, lm_dir, esm_dir, reference = write_openbiomed(tmp_path_factory.mktemp("openbiomed"))
    return pth, lm_dir, esm_dir, reference


def test_layout_is_the_published_one(published):
    pth, _, _, reference = published
    state = torch.load(pth, weights_only=True)
    assert {key.split(".")[0] for key in state} == PREFIXES
    assert state["llm.model.embed_tokens.weight"].shape[0] == reference.llm.config.vocab_size == 260
    assert state["llm.lm_head.weight"].shape[0] == 260
    assert "prot_structure_encoder.pooler.dense.weight" in state
    assert state["mol_structure_encoder.gnns.2.mlp.0.weight"].shape == (48, 24)


def test_load_equals_naive_load(published):
    pth, lm_dir, esm_dir, reference = published
    model, report = load_openbiomed(pth, lm_dir, esm_config=esm_dir, dtype="float32")
    expected = logits(reference)
    assert torch.equal(logits(model), expected)
    # the reference's own way: build the whole model, torch.load the file, load_state_dict, (then drop the pooler)
    naive = BioMedGPT(model.config, *_fresh_parts(lm_dir, esm_dir, reference))
    missing, unexpected = naive.load_state_dict(torch.load(pth, weights_only=True), strict=False)
    assert not missing and all("pooler" in k or "inv_freq" in k or "position_ids" in k for k in unexpected)
    assert torch.equal(logits(naive.eval()), expected)
    assert sorted(report.dropped) == sorted(unexpected)
    assert model.tokenizer.pad_token == "[PAD]" and model.tokenizer.pad_token_id == 259
    assert any("resized from 259 to 260" in note for note in report.notes)


def _fresh_parts(lm_dir, esm_dir, reference):
    from transformers import AutoConfig, AutoModelForCausalLM, EsmConfig, EsmModel

    config = AutoConfig.from_pretrained(lm_dir)
    config.vocab_size = 260
    return (AutoModelForCausalLM.from_config(config), reference.tokenizer,
            EsmModel(EsmConfig.from_pretrained(esm_dir), add_pooling_layer=False))


def test_bf16_load_and_parts_split_across_files(published, tmp_path):
    pth, lm_dir, esm_dir, reference = published
    state = openbiomed_state_dict(reference)
    keys = list(state)
    torch.save({k: state[k] for k in keys[: len(keys) // 2]}, tmp_path / "part1.pth")
    torch.save({k: state[k] for k in keys[len(keys) // 2:]}, tmp_path / "part2.pth")
    model, report = load_openbiomed([tmp_path / "part1.pth", tmp_path / "part2.pth"], lm_dir, esm_config=esm_dir)
    assert len(report.files) == 2
    expected = dict(reference.named_parameters())
    for name, param in model.named_parameters():
        assert param.dtype == torch.bfloat16 and torch.equal(param, expected[name].to(torch.bfloat16)), name
    bn = model.mol_structure_encoder.batch_norms[0]
    assert bn.running_var.dtype == torch.bfloat16 and int(bn.num_batches_tracked) == 1234
    assert torch.allclose(logits(model), logits(reference), atol=0.05)


def test_convert_cli_then_from_pretrained(published, tmp_path, capsys):
    pth, lm_dir, esm_dir, reference = published
    digest = hashlib.sha256(pth.read_bytes()).hexdigest()
    out = tmp_path / "biomedgpt-10b"
    args = ["convert", "--from", "openbiomed", str(pth), "--lm-dir", str(lm_dir), "--esm-config", str(esm_dir),
            "--out", str(out), "--dtype", "float32", "--sha256", digest, "--max-shard-size", "100KB"]
    assert main(args) == 0
    assert "dropped 6 keys" in capsys.readouterr().err
    shards = sorted(p.name for p in (out / "lm").glob("model-*.safetensors"))
    assert len(shards) > 1 and (out / "lm" / "model.safetensors.index.json").is_file()
    assert {"config.json", "model.safetensors", "SHA256SUMS", "CONVERSION.json"} <= {p.name for p in out.iterdir()}
    expected = logits(reference)
    assert torch.equal(logits(BioMedGPT.from_pretrained(out)), expected)  # the core loader
    streamed = BioMedGPT.from_pretrained(out, dtype="float32")  # the streaming loader
    assert torch.equal(logits(streamed), expected) and streamed.lm_modified
    assert main(args) == 2  # refuses to overwrite without --force
    assert "exists" in capsys.readouterr().err


def test_wrong_checksum_and_wrong_esm_are_user_errors(published, tmp_path, capsys):
    pth, lm_dir, esm_dir, _ = published
    code = main(["convert", "--from", "openbiomed", str(pth), "--lm-dir", str(lm_dir), "--esm-config",
                 str(esm_dir), "--out", str(tmp_path / "x"), "--sha256", "1" * 64])
    assert code == 2 and "sha256 is" in capsys.readouterr().err and not (tmp_path / "x").exists()
    with pytest.raises(UserError, match="matches no published ESM-2 config"):
        load_openbiomed(pth, lm_dir)
    with pytest.raises(UserError, match="has 2 layers × 40 but the ESM config"):
        load_openbiomed(pth, lm_dir, esm_config="facebook/esm2_t6_8M_UR50D")


def test_tiny_model_folder_streams_identically(tiny_model, tiny_model_dir):
    """Our own format through the streaming path (tied embeddings, byte tokenizer) equals from_pretrained."""
    from _published_layouts import logits as published_logits

    streamed = BioMedGPT.from_pretrained(tiny_model_dir, dtype="float32", device_map="auto")
    assert torch.equal(published_logits(streamed), published_logits(tiny_model))
    assert streamed.llm.lm_head.weight is streamed.llm.model.embed_tokens.weight


def test_inspect_counts_the_file(published, capsys):
    import json

    pth, lm_dir, _, reference = published
    assert main(["inspect", str(pth), "--lm-dir", str(lm_dir), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    counts = result["summary"]["parameters"]
    for part in PREFIXES:
        module = getattr(reference, part)  # its pooler was removed after saving; the file's is not counted either
        assert counts[part] == sum(p.numel() for p in module.parameters()), part
    assert result["summary"]["dtypes"]["llm"] == "float32" and result["summary"]["lm"]["vocab"] == 260
