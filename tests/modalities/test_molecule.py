"""Featurizer golden values (worked out from the GraphMVP scheme by hand) and invalid inputs."""

import logging

import pytest
import torch

from biomedgpt.errors import InvalidSmilesError
from biomedgpt.modalities.molecule import batch_graphs, canonical_smiles, smiles_to_graph


def test_ethanol_atoms_and_bonds():
    g = smiles_to_graph("CCO")
    assert g.x.tolist() == [[5, 0], [5, 0], [7, 0]]  # C = 6 - 1, O = 8 - 1, no chirality
    assert g.edge_index.tolist() == [[0, 1, 1, 2], [1, 0, 2, 1]]  # both directions of each bond
    assert g.edge_attr.tolist() == [[0, 0]] * 4  # single bonds, no direction


def test_aromatic_bonds_are_type_3():
    g = smiles_to_graph("c1ccccc1")
    assert g.num_atoms == 6 and g.edge_index.shape == (2, 12)
    assert set(map(tuple, g.edge_attr.tolist())) == {(3, 0)}


@pytest.mark.parametrize(("smiles", "tag"), [("C[C@H](N)O", 2), ("C[C@@H](N)O", 1)])
def test_chirality_index(smiles, tag):
    assert smiles_to_graph(smiles).x[1].tolist() == [5, tag]  # @ = counter-clockwise = 2, @@ = clockwise = 1


def test_double_bond_directions():
    trans = smiles_to_graph("F/C=C/F").edge_attr.tolist()
    cis = smiles_to_graph("F/C=C\\F").edge_attr.tolist()
    assert trans == [[0, 1], [0, 1], [1, 0], [1, 0], [0, 1], [0, 1]]  # end-up-right = 1
    assert cis[-2:] == [[0, 2], [0, 2]]  # end-down-right = 2


def test_charged_and_multi_fragment():
    ammonium = smiles_to_graph("[NH4+]")
    assert ammonium.x.tolist() == [[6, 0]] and ammonium.edge_index.shape == (2, 0)
    salt = smiles_to_graph("[Na+].[Cl-]")
    assert salt.x.tolist() == [[10, 0], [16, 0]] and salt.edge_attr.shape == (0, 2)


def test_hydrogens_are_not_nodes_and_dummy_atoms_have_their_own_index():
    assert smiles_to_graph("[H]OC([H])([H])[H]").num_atoms == 2
    assert smiles_to_graph("*C").x[:, 0].tolist() == [118, 5]


def test_aspirin_counts():
    g = smiles_to_graph("CC(=O)Oc1ccccc1C(=O)O")
    assert g.num_atoms == 13 and g.edge_index.shape[1] == 26
    assert sorted(set(g.edge_attr[:, 0].tolist())) == [0, 1, 3]


@pytest.mark.parametrize(
    ("smiles", "reason"),
    [("C1CC", "unclosed ring"), ("c1cccc1", "kekulize"), ("C(C)(C)(C)(C)C", "valence"), ("", "empty"),
     ("Xx", "Parse Error")],
)
def test_invalid_smiles_names_input_and_reason(smiles, reason):
    with pytest.raises(InvalidSmilesError) as info:
        smiles_to_graph(smiles)
    assert repr(smiles) in str(info.value) and reason in str(info.value)


def test_large_molecule_is_truncated_with_warning(caplog):
    with caplog.at_level(logging.WARNING):
        g = smiles_to_graph("C" * 300, max_atoms=256)
    assert g.num_atoms == 256 and g.edge_index.shape[1] == 2 * 255
    assert int(g.edge_index.max()) == 255
    assert "truncated" in caplog.text


def test_batch_graphs_offsets_edges():
    batch = batch_graphs([smiles_to_graph("CCO"), smiles_to_graph("C[C@H](N)O")])
    assert batch.num_atoms == [3, 4]
    assert batch.batch.tolist() == [0, 0, 0, 1, 1, 1, 1]
    assert batch.edge_index[:, 4:].min() == 3  # the second molecule's edges point at nodes 3..6
    assert torch.equal(batch.x[3:], smiles_to_graph("C[C@H](N)O").x)


def test_canonical_smiles():
    assert canonical_smiles("OCC") == canonical_smiles("C(O)C") == "CCO"


@pytest.mark.parametrize("smiles", ["F/C=C/F", "C[C@H](N)O", "[H]OC([H])([H])[H]", "C/C=C\\C[C@@H](Cl)Br",
                                    "CC(=O)Oc1ccccc1C(=O)O", "[2H]C([2H])Cl", "C1CC[C@H]2CCCC[C@@H]2C1"])
def test_parsing_matches_rdkit_default_molfromsmiles(smiles):
    """Same atoms, chirality tags and stereo (hence InChIKey) as RDKit's default parse, which GraphMVP used."""
    from rdkit import Chem

    from biomedgpt.modalities.molecule import parse_smiles

    ours, reference = parse_smiles(smiles), Chem.MolFromSmiles(smiles)
    assert Chem.MolToSmiles(ours) == Chem.MolToSmiles(reference)
    assert Chem.MolToInchiKey(ours) == Chem.MolToInchiKey(reference)
    assert [a.GetChiralTag() for a in ours.GetAtoms()] == [a.GetChiralTag() for a in reference.GetAtoms()]


def test_cut_entities_are_counted_in_one_line(caplog):
    """Evaluation, batch files and training wrap their loops in `count_cut_entities`: one summary warning."""
    from biomedgpt.modalities import count_cut_entities

    big = "C" * 300
    with caplog.at_level(logging.WARNING), count_cut_entities("eval"):
        for _ in range(3):
            smiles_to_graph(big, max_atoms=256)
        logging.getLogger("biomedgpt.modalities.molecule").warning("an unrelated warning still shows")
    messages = [r.getMessage() for r in caplog.records]
    assert sum("truncated" in m and "eval: 3 proteins/molecules were cut" not in m for m in messages) == 0
    assert any(m.startswith("eval: 3 proteins/molecules were cut") for m in messages)
    assert "an unrelated warning still shows" in messages
