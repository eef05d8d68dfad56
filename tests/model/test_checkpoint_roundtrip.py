"""save_pretrained → from_pretrained gives identical logits; GraphMVP-layout state dicts load strictly."""

import os
import subprocess
import sys

import pytest
import torch

from biomedgpt.config import BioMedGPTConfig, preset
from biomedgpt.data.collate import collate
from biomedgpt.inference import Message, build_example
from biomedgpt.model.biomedgpt import BioMedGPT
from biomedgpt.model.gin import GIN, GINConfig


def _logits(model):
    example = build_example(model, [Message("user", "what is it?", ["CC(=O)Oc1ccccc1C(=O)O"], ["MKVLA"])])
    batch = collate([example], model.tokenizer.pad_token_id)
    with torch.no_grad():
        return model(**batch.model_inputs()).logits


def test_round_trip_identical_logits(tiny_model, tiny_model_dir):
    loaded = BioMedGPT.from_pretrained(tiny_model_dir)
    assert torch.equal(_logits(tiny_model), _logits(loaded))
    assert (tiny_model_dir / "SHA256SUMS").is_file() and (tiny_model_dir / "lm" / "config.json").is_file()


def test_loading_skips_only_the_random_fills_it_overwrites(tiny_model, tiny_model_dir, tmp_path, monkeypatch):
    """`from_pretrained` builds the GIN, the adapters and a `LiteEsm` without random values when the folder's
    weights file overwrites them all (~0.1 s of a cold start); without that file they are drawn as `from_config`
    draws them; torch's init functions are themselves again afterwards."""
    calls = []
    real = torch.nn.init.kaiming_uniform_

    def counting(tensor, *args, **kwargs):
        calls.append(tuple(tensor.shape))
        return real(tensor, *args, **kwargs)

    monkeypatch.setattr(torch.nn.init, "kaiming_uniform_", counting)
    loaded = BioMedGPT.from_pretrained(tiny_model_dir, lite=True)
    assert calls == [] and torch.equal(_logits(loaded), _logits(tiny_model))
    assert torch.nn.init.kaiming_uniform_ is counting
    tiny_model.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    (tmp_path / "SHA256SUMS").unlink()
    fresh = BioMedGPT.from_pretrained(tmp_path, lite=True)
    assert calls, "the encoders were not initialised"
    expected = BioMedGPT.from_config(BioMedGPTConfig.load(tmp_path / "config.json"), base_dir=tmp_path, lite=True)
    parts = ("mol_structure_encoder", "proj_mol", "prot_structure_encoder", "proj_prot")
    for name, tensor in expected.state_dict().items():
        if name.startswith(parts):
            assert torch.equal(fresh.state_dict()[name], tensor), name
    assert torch.nn.init.kaiming_uniform_ is counting


def test_a_transformers_encoder_is_not_built_under_the_init_patch(tmp_path):
    """transformers keeps the `torch.nn.init` functions it finds when first imported: an ESM that only
    transformers can build (here: absolute positions) must not be built, and transformers not first imported,
    while the random fills are patched out, or every later model in the process would start unrandomised."""
    config = preset("tiny")
    config.protein.arch["position_embedding_type"] = "absolute"
    BioMedGPT.from_config(config).save_pretrained(tmp_path)
    code = ("import sys, torch; from biomedgpt.inference import load_model; "
            "model = load_model(sys.argv[1], lite=True); "
            "import transformers.initialization as init; "
            "print(type(model.prot_structure_encoder).__name__, "
            "all(getattr(torch.nn.init, k) is f for k, f in init.TORCH_INIT_FUNCTIONS.items()))")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["EsmModel", "True"]


def test_corrupted_weights_are_refused(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    with open(tmp_path / "model.safetensors", "r+b") as handle:
        handle.seek(-4, 2)
        handle.write(b"\x00\x01\x02\x03")
    with pytest.raises(ValueError, match="sha256"):
        BioMedGPT.from_pretrained(tmp_path)


def test_unchanged_base_lm_is_referenced_not_copied(tmp_path):
    model = BioMedGPT.from_preset("tiny")
    model.save_pretrained(tmp_path / "first")  # random LM: stored
    base = BioMedGPT.from_pretrained(tmp_path / "first")
    config = BioMedGPTConfig.load(tmp_path / "first" / "config.json")
    config.lm.name_or_path = str(tmp_path / "first" / "lm")  # a model built on that LM folder as its base
    derived = BioMedGPT.from_config(config)
    derived.load_state_dict(base.state_dict())
    derived.save_pretrained(tmp_path / "second")
    assert not (tmp_path / "second" / "lm").exists()
    assert torch.equal(_logits(BioMedGPT.from_pretrained(tmp_path / "second")), _logits(base))


def test_graphmvp_state_dict_loads_strictly():
    """Keys and shapes of the published GraphMVP `model.pth` (5 layers × 300)."""
    published = {
        "x_embedding1.weight": (120, 300), "x_embedding2.weight": (3, 300),
        **{k: s for i in range(5) for k, s in {
            f"gnns.{i}.mlp.0.weight": (600, 300), f"gnns.{i}.mlp.0.bias": (600,),
            f"gnns.{i}.mlp.2.weight": (300, 600), f"gnns.{i}.mlp.2.bias": (300,),
            f"gnns.{i}.edge_embedding1.weight": (6, 300), f"gnns.{i}.edge_embedding2.weight": (3, 300),
            f"batch_norms.{i}.weight": (300,), f"batch_norms.{i}.bias": (300,),
            f"batch_norms.{i}.running_mean": (300,), f"batch_norms.{i}.running_var": (300,),
            f"batch_norms.{i}.num_batches_tracked": (),
        }.items()},
    }
    state = {k: torch.randn(s) if s else torch.tensor(7) for k, s in published.items()}
    gin = GIN(GINConfig())
    gin.load_state_dict(state, strict=True)
    assert torch.equal(gin.gnns[4].mlp[2].weight, state["gnns.4.mlp.2.weight"])


def test_config_validation_and_presets():
    assert preset("small").molecule.emb_dim == 300
    assert preset("biomedgpt-10b").lm.use_chat_template is False
    with pytest.raises(ValueError, match="unknown preset"):
        preset("huge")
    with pytest.raises(ValueError, match="num_layer"):
        GINConfig(num_layer=0)
    with pytest.raises(ValueError, match="unknown BioMedGPTConfig keys"):
        BioMedGPTConfig.from_dict({"lm": {"name_or_path": "x"}, "colour": "blue"})
    round_trip = BioMedGPTConfig.from_dict(preset("tiny").to_dict())
    assert round_trip == preset("tiny")


def test_presets_are_seeded_and_leave_global_rng_alone():
    torch.manual_seed(1)
    before = torch.rand(1)
    torch.manual_seed(1)
    first = BioMedGPT.from_preset("tiny")
    after = torch.rand(1)
    second = BioMedGPT.from_preset("tiny")
    assert torch.equal(before, after)
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(a, b), name
