"""The molecule encoder: a GIN in the exact module layout of GraphMVP / Hu et al. (2020).

Parameter names (`x_embedding1/2`, `gnns.{i}.mlp.{0,2}`, `gnns.{i}.edge_embedding1/2`, `batch_norms.{i}`) are
those of the published checkpoints, so GraphMVP `model.pth` and the `mol_structure_encoder.` part of
BioMedGPT-10B load with `strict=True`. Message passing is written with `index_add_` instead of PyG so that no
compiled extension is needed; it computes the same sum aggregation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from biomedgpt.modalities.molecule import (
    NUM_ATOM_TYPES,
    NUM_BOND_DIRECTIONS,
    NUM_BOND_TYPES,
    NUM_CHIRALITY_TAGS,
    SELF_LOOP_BOND_INDEX,
)


@dataclass
class GINConfig:
    num_layer: int = 5
    emb_dim: int = 300
    drop_ratio: float = 0.0  # GraphMVP pretrains with 0; dropout here would only add noise to frozen features
    max_atoms: int = 256  # larger molecules are truncated (with a warning) before they reach the encoder

    def __post_init__(self) -> None:
        if self.num_layer < 1:
            raise ValueError(f"GINConfig.num_layer must be >= 1, got {self.num_layer}")
        if self.emb_dim < 1:
            raise ValueError(f"GINConfig.emb_dim must be >= 1, got {self.emb_dim}")
        if not 0.0 <= self.drop_ratio < 1.0:
            raise ValueError(f"GINConfig.drop_ratio must be in [0, 1), got {self.drop_ratio}")
        if self.max_atoms < 1:
            raise ValueError(f"GINConfig.max_atoms must be >= 1, got {self.max_atoms}")


class GINConv(nn.Module):
    """One GIN layer with edge features: h_i' = MLP(sum_{j in N(i) ∪ {i}} (h_j + e_ji))."""

    def __init__(self, emb_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(emb_dim, 2 * emb_dim), nn.ReLU(), nn.Linear(2 * emb_dim, emb_dim))
        self.edge_embedding1 = nn.Embedding(NUM_BOND_TYPES, emb_dim)
        self.edge_embedding2 = nn.Embedding(NUM_BOND_DIRECTIONS, emb_dim)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor, edge_attr: torch.Tensor) -> torch.Tensor:
        num_nodes = x.shape[0]
        loops = torch.arange(num_nodes, device=x.device)
        source = torch.cat([edge_index[0], loops])
        target = torch.cat([edge_index[1], loops])
        loop_attr = torch.zeros((num_nodes, 2), dtype=edge_attr.dtype, device=edge_attr.device)
        loop_attr[:, 0] = SELF_LOOP_BOND_INDEX
        attr = torch.cat([edge_attr, loop_attr])
        edge_embeddings = self.edge_embedding1(attr[:, 0]) + self.edge_embedding2(attr[:, 1])
        messages = x[source] + edge_embeddings  # [num_edges + num_nodes, emb_dim]
        aggregated = torch.zeros_like(x).index_add_(0, target, messages)
        return self.mlp(aggregated)


class GIN(nn.Module):
    """GraphMVP's `GNN` with JK = last: returns one `emb_dim` vector per heavy atom."""

    def __init__(self, config: GINConfig) -> None:
        super().__init__()
        self.config = config
        self.x_embedding1 = nn.Embedding(NUM_ATOM_TYPES, config.emb_dim)
        self.x_embedding2 = nn.Embedding(NUM_CHIRALITY_TAGS, config.emb_dim)
        self.gnns = nn.ModuleList(GINConv(config.emb_dim) for _ in range(config.num_layer))
        self.batch_norms = nn.ModuleList(nn.BatchNorm1d(config.emb_dim) for _ in range(config.num_layer))
        self.dropout = nn.Dropout(config.drop_ratio)
        nn.init.xavier_uniform_(self.x_embedding1.weight)
        nn.init.xavier_uniform_(self.x_embedding2.weight)
        for conv in self.gnns:
            nn.init.xavier_uniform_(conv.edge_embedding1.weight)
            nn.init.xavier_uniform_(conv.edge_embedding2.weight)

    @property
    def hidden_size(self) -> int:
        return self.config.emb_dim

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor, edge_attr: torch.Tensor) -> torch.Tensor:
        """x: [num_nodes, 2], edge_index: [2, num_edges], edge_attr: [num_edges, 2] → [num_nodes, emb_dim]."""
        h = self.x_embedding1(x[:, 0]) + self.x_embedding2(x[:, 1])
        last = self.config.num_layer - 1
        for layer, (conv, norm) in enumerate(zip(self.gnns, self.batch_norms)):
            h = norm(conv(h, edge_index, edge_attr))
            h = self.dropout(h if layer == last else torch.relu(h))
        return h
