"""The model on a CUDA GPU: the splice, greedy decoding, streamed bf16 loading with device maps, and the `ask`
path all give what they give on the CPU. Skipped without CUDA (CI has no GPU); on a GPU machine run
`python -m pytest tests/model/test_cuda_paths.py tests/train/test_cuda_training.py` (docs/performance.md).

The GPU machine we check on has no RDKit, so those runs featurize molecules with `HAND_GRAPHS` (what
`smiles_to_graph` returns for them); `test_hand_graphs_are_the_rdkit_featurization` proves that on the CPU.
"""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch
from _published_layouts import write_lora_model_folder

from biomedgpt.data.collate import collate
from biomedgpt.inference import GenerationSettings, Message, ask, build_example, load_model
from biomedgpt.modalities.molecule import MoleculeGraph
from biomedgpt.model.biomedgpt import BioMedGPT

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CI has none)")
PROTEIN = "MKTAYIAKQRQISFVKSHFSRQ"


def _graph(smiles: str, atom_types: list[int], bonds: list[tuple[int, int]], bond_type: int) -> MoleculeGraph:
    edges = [pair for a, b in bonds for pair in ((a, b), (b, a))]
    return MoleculeGraph(smiles, torch.tensor([[t, 0] for t in atom_types]), torch.tensor(edges).T.contiguous(),
                         torch.tensor([[bond_type, 0]] * len(edges)))


HAND_GRAPHS = {
    "CCO": _graph("CCO", [5, 5, 7], [(0, 1), (1, 2)], 0),
    "c1ccccc1": _graph("c1ccccc1", [5] * 6, [(i, (i + 1) % 6) for i in range(6)], 3),
}


@pytest.fixture()
def featurize(monkeypatch):
    """RDKit featurization where RDKit is installed, else the hand-made graphs above."""
    if importlib.util.find_spec("rdkit") is None:
        monkeypatch.setattr("biomedgpt.inference.smiles_to_graph", lambda smiles, max_atoms=0: HAND_GRAPHS[smiles])


def test_hand_graphs_are_the_rdkit_featurization():
    pytest.importorskip("rdkit")
    from biomedgpt.modalities.molecule import smiles_to_graph

    for smiles, hand in HAND_GRAPHS.items():
        graph = smiles_to_graph(smiles)
        for field in ("x", "edge_index", "edge_attr"):
            assert torch.equal(getattr(graph, field), getattr(hand, field)), (smiles, field)


def _inputs(model: BioMedGPT):
    conversations = [[Message("user", "Describe this molecule and protein.", ["CCO"], [PROTEIN])],
                     [Message("user", "And this ring?", ["c1ccccc1"])],
                     [Message("user", "What is insulin?")]]
    return collate([build_example(model, c) for c in conversations], model.tokenizer.pad_token_id, "left")


def _logits(model: BioMedGPT, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch.model_inputs()).logits.float().cpu()


@needs_cuda
def test_gpu_splice_and_greedy_decoding_match_the_cpu(tiny_model, featurize):
    gpu = copy.deepcopy(tiny_model).to("cuda")
    batch = _inputs(tiny_model)
    mask = batch.attention_mask.bool()
    cpu_logits, gpu_logits = _logits(tiny_model, batch), _logits(gpu, batch)
    assert torch.allclose(cpu_logits[mask], gpu_logits[mask], atol=1e-4, rtol=1e-4)

    kwargs = {"max_new_tokens": 12, "do_sample": False, "repetition_penalty": 1.0}
    cpu_tokens = tiny_model.generate(**batch.model_inputs(), **kwargs)  # the fast CPU loop
    gpu_tokens = gpu.generate(**batch.model_inputs(), **kwargs)  # HF generate on the GPU (the loop is CPU-only)
    assert gpu_tokens.device.type == "cuda"
    assert torch.equal(cpu_tokens, gpu_tokens.cpu())


@needs_cuda
@pytest.mark.parametrize("device_map", ["cuda:0", "auto"])
def test_streamed_bf16_load_onto_the_gpu(tiny_model_dir, featurize, device_map):
    reference = BioMedGPT.from_pretrained(tiny_model_dir)
    model = BioMedGPT.from_pretrained(tiny_model_dir, dtype="bfloat16", device_map=device_map)
    assert {p.device.type for p in model.parameters()} == {"cuda"}
    assert {p.dtype for p in model.llm.parameters()} == {torch.bfloat16}
    batch = _inputs(reference)
    mask = batch.attention_mask.bool()
    expected, got = _logits(reference, batch)[mask], _logits(model, batch)[mask]
    assert (got - expected).abs().max() <= 0.05 * expected.abs().max()  # bf16 weights: a few % at most


@needs_cuda
def test_load_model_puts_a_lora_model_on_the_gpu_and_answers(tiny_model, tmp_path, featurize):
    """`load_model` (what `ask` and `serve` use) streams a base LM + `lora/` folder onto the GPU with a device
    map and merges the adapter there; its answers are the CPU model's answers."""
    folder = write_lora_model_folder(tiny_model, tmp_path)
    cpu = BioMedGPT.from_pretrained(folder, verify=False)
    assert not torch.equal(cpu.llm.model.layers[0].self_attn.q_proj.weight,
                           tiny_model.llm.model.layers[0].self_attn.q_proj.weight), "the adapter was not merged"
    gpu = load_model(str(folder))
    assert gpu.device.type == "cuda"
    batch = _inputs(cpu)
    mask = batch.attention_mask.bool()
    assert torch.allclose(_logits(cpu, batch)[mask], _logits(gpu, batch)[mask], atol=1e-4, rtol=1e-4)
    settings = GenerationSettings(max_new_tokens=10, repetition_penalty=1.0)
    for question, smiles, proteins in (("What is it?", ["CCO"], [PROTEIN]), ("Hello?", [], [])):
        assert ask(gpu, question, smiles, proteins, settings) == ask(cpu, question, smiles, proteins, settings)


@needs_cuda
def test_a_lora_reaches_layers_offloaded_to_the_cpu(tiny_model, tmp_path, featurize):
    """A device map that keeps a decoder layer on the CPU (accelerate then moves its weights into an offload hook,
    out of `module.weight`): the adapter is merged before dispatch, so that layer computes with merged weights."""
    folder = write_lora_model_folder(tiny_model, tmp_path)
    cpu = BioMedGPT.from_pretrained(folder, verify=False)
    layers = len(cpu.llm.model.layers)
    device_map = {"llm.model.embed_tokens": 0, "llm.model.rotary_emb": 0, "llm.model.norm": 0, "llm.lm_head": 0,
                  **{f"llm.model.layers.{i}": "cpu" if i == 0 else 0 for i in range(layers)},
                  **{part: 0 for part in ("mol_structure_encoder", "proj_mol", "prot_structure_encoder", "proj_prot")}}
    offloaded = BioMedGPT.from_pretrained(folder, verify=False, dtype="float32", device_map=device_map)
    batch = _inputs(cpu)
    mask = batch.attention_mask.bool()
    assert torch.allclose(_logits(cpu, batch)[mask], _logits(offloaded, batch)[mask], atol=1e-4, rtol=1e-4)


@needs_cuda
def test_a_recommended_cpu_weight_format_is_not_used_on_the_gpu(tiny_model):
    from biomedgpt.inference import recommended_decoding

    gpu = copy.deepcopy(tiny_model).to("cuda")
    gpu.config.generation = {"num_beams": 2, "quantize": "bf16"}
    assert recommended_decoding(gpu) == {"num_beams": 2}
    assert GenerationSettings.for_model(gpu).quantize is None
