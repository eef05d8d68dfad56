"""The splice: placeholder rows equal adapter(encoder(x)); counts are checked; batches mix modalities."""

import pytest
import torch

from biomedgpt.constants import MOLECULE_TOKEN_ID, PROTEIN_TOKEN_ID
from biomedgpt.data.collate import collate, tokenize_prompt
from biomedgpt.inference import GenerationSettings, Message, build_example, generate_batch
from biomedgpt.modalities.molecule import batch_graphs, smiles_to_graph
from biomedgpt.modalities.protein import batch_sequences

ASPIRIN = "CC(=O)Oc1ccccc1C(=O)O"
INSULIN_B = "FVNQHLCGSHLVEALYLVCGERGFFYTPKT"


def _batch(model, conversations, side="left"):
    return collate([build_example(model, c) for c in conversations], model.tokenizer.pad_token_id, side)


def test_placeholder_rows_equal_projected_encoder_outputs(tiny_model):
    batch = _batch(tiny_model, [[Message("user", "what?", [ASPIRIN, "CCO"], [INSULIN_B])]])
    embeds = tiny_model.embed(batch.input_ids, batch.molecules, batch.proteins)
    with torch.no_grad():
        graphs = batch_graphs([smiles_to_graph(ASPIRIN), smiles_to_graph("CCO")])
        atoms = tiny_model.proj_mol(tiny_model.mol_structure_encoder(graphs.x, graphs.edge_index, graphs.edge_attr))
        proteins = batch_sequences([INSULIN_B])
        hidden = tiny_model.prot_structure_encoder(**vars(proteins)).last_hidden_state[0]
        residues = tiny_model.proj_prot(hidden)
    mol_mask = batch.input_ids[0] == MOLECULE_TOKEN_ID
    prot_mask = batch.input_ids[0] == PROTEIN_TOKEN_ID
    assert int(mol_mask.sum()) == 13 + 3 and int(prot_mask.sum()) == len(INSULIN_B) + 2
    assert torch.equal(embeds[0][mol_mask], atoms)
    assert torch.equal(embeds[0][prot_mask], residues)
    text = ~(mol_mask | prot_mask)
    assert torch.equal(embeds[0][text], tiny_model.llm.get_input_embeddings()(batch.input_ids[0][text]))


def test_count_mismatch_names_both_counts(tiny_model):
    batch = _batch(tiny_model, [[Message("user", "what?", [ASPIRIN])]])
    with pytest.raises(ValueError, match=r"13 molecule token positions .* 3 atom embeddings"):
        tiny_model.embed(batch.input_ids, batch_graphs([smiles_to_graph("CCO")]), None)
    with pytest.raises(ValueError, match=r"0 protein token positions .* 5 residue embeddings"):
        tiny_model.embed(batch.input_ids, batch.molecules, batch_sequences(["MKV"]))
    with pytest.raises(ValueError, match="1 molecule placeholders but 2 molecules"):
        tokenize_prompt(tiny_model.tokenizer, "<moleculeHere> x", [smiles_to_graph("C")] * 2)


def test_mixed_batch_with_zero_one_and_several_entities(tiny_model):
    conversations = [
        [Message("user", "plain text question")],
        [Message("user", "one molecule", [ASPIRIN])],
        [Message("user", "two molecules and a protein", ["CCO", "c1ccccc1"], [INSULIN_B])],
        [Message("user", "only a protein", [], ["MKVL"])],
    ]
    examples = [build_example(tiny_model, c, answer="An answer.") for c in conversations]
    batch = collate(examples, tiny_model.tokenizer.pad_token_id, "right")
    out = tiny_model(**batch.model_inputs(), labels=batch.labels)
    assert out.logits.shape[:2] == batch.input_ids.shape and torch.isfinite(out.loss)
    assert batch.molecules.num_atoms == [13, 3, 6] and batch.proteins.num_tokens == [32, 6]


def test_labels_ignore_prompt_and_placeholders(tiny_model):
    example = build_example(tiny_model, [Message("user", "describe", [ASPIRIN], ["MKV"])], answer="An acid.")
    placeholder = [i for i, t in enumerate(example.input_ids) if t in (MOLECULE_TOKEN_ID, PROTEIN_TOKEN_ID)]
    assert all(example.labels[i] == -100 for i in placeholder)
    learned = [t for t in example.labels if t != -100]
    assert tiny_model.tokenizer.decode(learned) == "An acid."


def test_same_prompt_alone_and_in_padded_batch_gives_same_greedy_output(tiny_model):
    target = [Message("user", "Tell me about it.", [ASPIRIN], ["MKVLAAG"])]
    others = [[Message("user", "x" * 40, ["CCO"])], [Message("user", "short")]]
    settings = GenerationSettings(max_new_tokens=12)
    alone = generate_batch(tiny_model, [target], settings)[0]
    batched = generate_batch(tiny_model, [others[0], target, others[1]], settings, batch_size=3)[1]
    assert alone == batched


def test_generate_without_entities_equals_bare_lm(tiny_model):
    example = build_example(tiny_model, [Message("user", "What is aspirin?")])
    ids = torch.tensor([example.input_ids])
    ours = tiny_model.generate(ids, max_new_tokens=16, do_sample=False)
    bare = tiny_model.llm.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False,
                                   pad_token_id=tiny_model.tokenizer.pad_token_id)
    assert torch.equal(ours[0], bare[0, ids.shape[1]:])
