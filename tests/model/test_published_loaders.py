"""The streaming loaders on tiny checkpoints in the published layouts: HF LM folders (sharded .bin and
.safetensors + index JSON), an HF ESM-2 folder, a GraphMVP `model.pth`; errors name keys and files."""

import json
import pickle

import pytest
import torch
from _published_layouts import (
    LM_ARCH,
    PROTEIN,
    lm_logits,
    reference_lm,
    write_esm_folder,
    write_lm_folder,
    write_lora_model_folder,
)

from biomedgpt.errors import UserError
from biomedgpt.model.checkpoint import checkpoint_files, load_pickle_state_dict, verify_sha256
from biomedgpt.model.published import load_esm, load_graphmvp, load_hf_lm


@pytest.fixture(scope="module")
def reference():
    return reference_lm(seed=3)


@pytest.fixture(scope="module")
def bin_folder(tmp_path_factory, reference):
    return write_lm_folder(tmp_path_factory.mktemp("lm-bin"), reference, kind="bin", shards=3)


def test_sharded_bin_folder_matches_naive_load(bin_folder, reference):
    names = sorted(p.name for p in bin_folder.iterdir())
    assert [n for n in names if n.endswith(".bin")] == [f"pytorch_model-0000{i}-of-00003.bin" for i in (1, 2, 3)]
    assert "pytorch_model.bin.index.json" in names
    llm, tokenizer, report = load_hf_lm(bin_folder, dtype="float32")
    assert torch.equal(lm_logits(llm), lm_logits(reference))
    # "loaded naively": every shard torch.load-ed into one dict, load_state_dict into an fp32 model
    naive = reference_lm(seed=99)
    state = {}
    for path in checkpoint_files(bin_folder):
        state.update(torch.load(path, weights_only=True))
    naive.load_state_dict(state, strict=False)
    assert torch.equal(lm_logits(llm), lm_logits(naive))
    assert len(report.files) == 3 and report.loaded == len(dict(reference.named_parameters()))
    assert report.dropped == [f"model.layers.{i}.self_attn.rotary_emb.inv_freq" for i in range(3)]
    assert tokenizer is not None and len(tokenizer) == LM_ARCH["vocab_size"]


def test_bf16_load_casts_each_tensor_exactly(bin_folder, reference):
    llm, _, _ = load_hf_lm(bin_folder, dtype="bfloat16")
    expected = dict(reference.named_parameters())
    for name, param in llm.named_parameters():
        assert param.dtype == torch.bfloat16 and not param.is_meta
        assert torch.equal(param, expected[name].to(torch.bfloat16)), name
    assert llm.model.rotary_emb.inv_freq.dtype == torch.float32  # computed buffers keep full precision


def test_safetensors_sharded_folder(tmp_path, reference):
    folder = write_lm_folder(tmp_path, reference, kind="safetensors", shards=2)
    assert json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    llm, _, report = load_hf_lm(folder, dtype="float32")
    assert report.files[0].endswith("model-00001-of-00002.safetensors") and not report.dropped
    assert torch.equal(lm_logits(llm), lm_logits(reference))


def test_device_map_on_cpu(bin_folder, reference):
    for device_map in ("auto", {"": "cpu"}, {"model": "cpu", "lm_head": "cpu"}):
        llm, _, _ = load_hf_lm(bin_folder, dtype="float32", device_map=device_map)
        assert torch.equal(lm_logits(llm), lm_logits(reference))
    with pytest.raises(UserError, match="disk"):
        load_hf_lm(bin_folder, device_map={"model": "cpu", "lm_head": "disk"})


def test_missing_unexpected_and_mismatched_keys_are_named(tmp_path, reference):
    state = dict(reference.state_dict())
    del state["model.layers.1.mlp.up_proj.weight"]
    state["model.layers.0.self_attn.q_norm.weight"] = torch.ones(4)
    state["model.norm.weight"] = torch.ones(65)
    (tmp_path / "config.json").write_text(json.dumps({**LM_ARCH, "architectures": ["LlamaForCausalLM"]}))
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(UserError) as err:
        load_hf_lm(tmp_path, dtype="float32")
    message = str(err.value)
    assert "1 missing keys: model.layers.1.mlp.up_proj.weight" in message
    assert "1 unexpected keys: model.layers.0.self_attn.q_norm.weight" in message
    assert "model.norm.weight: checkpoint [65] vs model [64]" in message
    llm, _, report = load_hf_lm(tmp_path, dtype="float32", strict=False)
    assert report.missing == ["model.layers.1.mlp.up_proj.weight"] and llm.model.layers[1].mlp.up_proj.weight.is_meta


class _Payload:
    ran = False

    def __setstate__(self, state):
        _Payload.ran = True


def test_refuses_to_unpickle_objects(tmp_path):
    path = tmp_path / "trainer_state.pth"
    with open(path, "wb") as handle:  # a training checkpoint holding a custom object, written by plain pickle
        torch.save({"model": {"w": torch.zeros(2)}, "args": _Payload()}, handle, pickle_module=pickle)
    with pytest.raises(UserError, match="refusing to unpickle"):
        load_pickle_state_dict(path)
    assert not _Payload.ran
    torch.save({"state_dict": {"w": torch.ones(2)}}, tmp_path / "wrapped.pth")
    assert torch.equal(load_pickle_state_dict(tmp_path / "wrapped.pth")["w"], torch.ones(2))


def test_sha256_verification(tmp_path):
    import hashlib

    path = tmp_path / "model.pth"
    torch.save({"w": torch.arange(4.0)}, path)
    verify_sha256(path, hashlib.sha256(path.read_bytes()).hexdigest().upper())
    with pytest.raises(UserError, match="sha256 is"):
        verify_sha256(path, "0" * 64)
    with pytest.raises(UserError, match="not a sha256"):
        verify_sha256(path, "abc")


def test_esm_folder_drops_mlm_head(tmp_path):
    folder, reference = write_esm_folder(tmp_path / "esm2_t2")
    model, report = load_esm(folder)
    assert all(key.startswith("lm_head.") for key in report.dropped) and report.dropped
    from biomedgpt.modalities.protein import batch_sequences

    batch = batch_sequences([PROTEIN, PROTEIN[:9]])
    with torch.no_grad():
        ours = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
        theirs = reference(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
    assert torch.equal(ours, theirs)


def test_graphmvp_model_pth(tmp_path):
    from biomedgpt.modalities.molecule import batch_graphs, smiles_to_graph
    from biomedgpt.model.gin import GIN, GINConfig

    torch.manual_seed(5)
    reference = GIN(GINConfig(num_layer=4, emb_dim=16)).eval()
    for norm in reference.batch_norms:
        norm.running_mean.normal_()
    torch.save(reference.state_dict(), tmp_path / "model.pth")
    gin, report = load_graphmvp(tmp_path / "model.pth")
    assert (gin.config.num_layer, gin.config.emb_dim) == (4, 16) and not report.dropped
    batch = batch_graphs([smiles_to_graph("CC(=O)Oc1ccccc1C(=O)O"), smiles_to_graph("C[C@H](N)C(=O)O")])
    with torch.no_grad():
        assert torch.equal(gin(batch.x, batch.edge_index, batch.edge_attr),
                           reference(batch.x, batch.edge_index, batch.edge_attr))
    with pytest.raises(UserError, match="not a GraphMVP"):
        torch.save({"w": torch.zeros(1)}, tmp_path / "other.pth")
        load_graphmvp(tmp_path / "other.pth")


def test_inspect_hf_lm_folder(bin_folder, reference):
    from biomedgpt.model.inspect import summarize

    summary = summarize(str(bin_folder))
    assert summary.parameters == {"llm": sum(p.numel() for p in reference.parameters())}
    assert summary.dtypes["llm"] == "float32 (stored)" and summary.lm.layers == 3


def test_legacy_torch_save_format_is_read_whole_with_a_warning(tmp_path, caplog):
    torch.save({"w": torch.ones(3)}, tmp_path / "old.pth", _use_new_zipfile_serialization=False)
    assert torch.equal(load_pickle_state_dict(tmp_path / "old.pth")["w"], torch.ones(3))
    assert "legacy torch.save format" in caplog.text


def test_a_lora_is_merged_before_the_dispatch_hooks(tiny_model, tmp_path, monkeypatch):
    """The streamed loader merges a model folder's LoRA adapter before accelerate's dispatch: dispatching moves the
    weights of CPU-offloaded layers (GPU maps) into hooks, where merging afterwards would silently miss them. The
    GPU case itself is `test_cuda_paths.py::test_a_lora_reaches_layers_offloaded_to_the_cpu`; here the order."""
    from biomedgpt.model import published
    from biomedgpt.model.biomedgpt import BioMedGPT

    folder = write_lora_model_folder(tiny_model, tmp_path)
    merged = BioMedGPT.from_pretrained(folder, verify=False).llm.model.layers[0].self_attn.q_proj.weight
    assert not torch.equal(merged, tiny_model.llm.model.layers[0].self_attn.q_proj.weight)
    seen = []
    dispatch = published.dispatch

    def recording_dispatch(model, device_map):
        seen.append(model.llm.model.layers[0].self_attn.q_proj.weight.detach().clone())
        dispatch(model, device_map)

    monkeypatch.setattr(published, "dispatch", recording_dispatch)
    streamed = BioMedGPT.from_pretrained(folder, verify=False, dtype="float32", device_map="cpu")
    assert len(seen) == 1 and torch.allclose(seen[0], merged, atol=1e-6)
    assert torch.allclose(streamed.llm.model.layers[0].self_attn.q_proj.weight, merged, atol=1e-6)
