"""SMILES → molecular graph in the GraphMVP / Hu et al. (2020) feature scheme.

Why this exact scheme: the published GIN weights (GraphMVP, BioMedGPT-10B) were trained on it, so any other
featurization would make them useless. One node per heavy atom (no explicit hydrogens), two integer features per
node and two per directed bond.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from biomedgpt.errors import InvalidSmilesError

if TYPE_CHECKING:  # torch is imported where tensors are made, so text-only tools stay light
    import torch

logger = logging.getLogger(__name__)

NUM_ATOM_TYPES = 120  # atomic number - 1 for 1..118; 118 = dummy atom '*'; 119 = mask token
NUM_CHIRALITY_TAGS = 3
NUM_BOND_TYPES = 6  # single, double, triple, aromatic, self-loop, mask
NUM_BOND_DIRECTIONS = 3
DUMMY_ATOM_INDEX = 118
MASK_ATOM_INDEX = 119
SELF_LOOP_BOND_INDEX = 4
MASK_BOND_INDEX = 5
DEFAULT_MAX_ATOMS = 256
# parse_smiles swaps the handlers of the process-wide "rdkit" logger while it parses; serialise that swap so
# concurrent callers (a server's request threads and its model worker) cannot leave a stale handler behind.
_RDKIT_LOG_LOCK = threading.Lock()


@dataclass
class MoleculeGraph:
    """One molecule. `x`: [num_atoms, 2] (atom type, chirality); `edge_index`: [2, num_edges] with both
    directions of each bond; `edge_attr`: [num_edges, 2] (bond type, bond direction)."""

    smiles: str
    x: torch.Tensor
    edge_index: torch.Tensor
    edge_attr: torch.Tensor

    @property
    def num_atoms(self) -> int:
        return int(self.x.shape[0])


@dataclass
class MoleculeBatch:
    """Several graphs merged into one disconnected graph so the GIN runs once for a whole batch.

    `batch[i]` is the index of the molecule that node i belongs to; `num_atoms[k]` the node count of molecule k.
    Node order is molecule by molecule, so the flattened GIN output lines up with the placeholder positions.
    """

    x: torch.Tensor
    edge_index: torch.Tensor
    edge_attr: torch.Tensor
    batch: torch.Tensor
    num_atoms: list[int]

    @property
    def num_molecules(self) -> int:
        return len(self.num_atoms)

    def to(self, device: torch.device | str) -> MoleculeBatch:
        return MoleculeBatch(
            self.x.to(device), self.edge_index.to(device), self.edge_attr.to(device), self.batch.to(device),
            self.num_atoms,
        )


def _chem():
    from rdkit import Chem

    return Chem


class _RDKitMessages(logging.Handler):
    """Collects RDKit's own error text while parsing one SMILES, so the exception can quote its reason."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        self.messages.append(text.split("] ", 1)[-1].strip() if text.startswith("[") else text.strip())


def parse_smiles(smiles: str):
    """Parse and sanitize a SMILES string with RDKit, raising `InvalidSmilesError` with RDKit's reason."""
    from rdkit import rdBase

    Chem = _chem()
    if not isinstance(smiles, str) or not smiles.strip():
        raise InvalidSmilesError(f"invalid SMILES {smiles!r}: empty input")
    text = smiles.strip()
    rdkit_logger = logging.getLogger("rdkit")
    handler = _RDKitMessages()
    with _RDKIT_LOG_LOCK:
        rdBase.LogToPythonLogger()  # route RDKit's C++ log into Python logging so it can be captured
        saved = rdkit_logger.handlers[:], rdkit_logger.propagate
        rdkit_logger.handlers, rdkit_logger.propagate = [handler], False
        try:
            mol = Chem.MolFromSmiles(text, sanitize=False)
            if mol is not None:
                try:
                    Chem.SanitizeMol(mol)
                    mol = Chem.RemoveHs(mol)  # as MolFromSmiles' default: explicit [H] atoms are not graph nodes
                    Chem.AssignStereochemistry(mol, cleanIt=True, force=True)  # as MolFromSmiles: E/Z, R/S
                except Exception as err:  # RDKit raises several sanitization exception types
                    handler.messages.append(str(err))
                    mol = None
        finally:
            rdkit_logger.handlers, rdkit_logger.propagate = saved
    if mol is None:
        reason = "; ".join(dict.fromkeys(m for m in handler.messages if m)) or "RDKit cannot parse it"
        raise InvalidSmilesError(f"invalid SMILES {text!r}: {reason}")
    if mol.GetNumAtoms() == 0:
        raise InvalidSmilesError(f"invalid SMILES {text!r}: it has no atoms")
    return mol


def canonical_smiles(smiles: str) -> str:
    """RDKit canonical SMILES (isomeric), raising `InvalidSmilesError` on bad input."""
    return _chem().MolToSmiles(parse_smiles(smiles))


def _atom_features(atom) -> tuple[int, int]:
    Chem = _chem()
    number = atom.GetAtomicNum()
    type_index = number - 1 if 1 <= number <= 118 else DUMMY_ATOM_INDEX
    chirality = {
        Chem.rdchem.ChiralType.CHI_TETRAHEDRAL_CW: 1,
        Chem.rdchem.ChiralType.CHI_TETRAHEDRAL_CCW: 2,
    }.get(atom.GetChiralTag(), 0)  # the published table has 3 rows: every other tag reads as unspecified
    return type_index, chirality


def _bond_features(bond) -> tuple[int, int]:
    Chem = _chem()
    bond_type = {
        Chem.rdchem.BondType.SINGLE: 0,
        Chem.rdchem.BondType.DOUBLE: 1,
        Chem.rdchem.BondType.TRIPLE: 2,
        Chem.rdchem.BondType.AROMATIC: 3,
    }.get(bond.GetBondType(), 0)  # dative and other exotic bonds have no row in the published table
    direction = {
        Chem.rdchem.BondDir.ENDUPRIGHT: 1,
        Chem.rdchem.BondDir.ENDDOWNRIGHT: 2,
    }.get(bond.GetBondDir(), 0)
    return bond_type, direction


def smiles_to_graph(smiles: str, max_atoms: int = DEFAULT_MAX_ATOMS) -> MoleculeGraph:
    """Featurize one SMILES. Molecules with more than `max_atoms` heavy atoms keep their first `max_atoms`
    atoms (and the bonds among them), with a warning, so that one huge input cannot exhaust memory."""
    import torch

    mol = parse_smiles(smiles)
    atoms = [_atom_features(atom) for atom in mol.GetAtoms()]
    if len(atoms) > max_atoms:
        logger.warning("molecule %s has %d atoms; truncated to the first %d", smiles, len(atoms), max_atoms)
        atoms = atoms[:max_atoms]
    sources, targets, features = [], [], []
    for bond in mol.GetBonds():
        i, j = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
        if i >= len(atoms) or j >= len(atoms):
            continue
        feature = _bond_features(bond)
        sources += [i, j]
        targets += [j, i]
        features += [feature, feature]
    return MoleculeGraph(
        smiles=smiles,
        x=torch.tensor(atoms, dtype=torch.long).view(-1, 2),
        edge_index=torch.tensor([sources, targets], dtype=torch.long).view(2, -1),
        edge_attr=torch.tensor(features, dtype=torch.long).view(-1, 2),
    )


def batch_graphs(graphs: list[MoleculeGraph]) -> MoleculeBatch:
    """Merge graphs into one disconnected graph, offsetting edge indices (the PyG `Batch` idea, without PyG)."""
    import torch

    if not graphs:
        raise ValueError("batch_graphs needs at least one molecule")
    offsets = torch.tensor([0] + [g.num_atoms for g in graphs[:-1]]).cumsum(0)
    edge_index = torch.cat([g.edge_index + offset for g, offset in zip(graphs, offsets)], dim=1)
    num_atoms = [g.num_atoms for g in graphs]
    return MoleculeBatch(
        x=torch.cat([g.x for g in graphs]),
        edge_index=edge_index,
        edge_attr=torch.cat([g.edge_attr for g in graphs]),
        batch=torch.repeat_interleave(torch.arange(len(graphs)), torch.tensor(num_atoms)),
        num_atoms=num_atoms,
    )
