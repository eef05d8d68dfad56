"""`/v1/embeddings`: one vector per input, from the encoder that fits the input's kind.

- molecule (`<molecule>SMILES</molecule>`, or input_type "molecule"): the mean over atoms of the GIN's node
  outputs (the molecule encoder's own space, `emb_dim` wide: 300 for `small`), before the adapter.
- protein (`<protein>SEQ</protein>`, or input_type "protein"): the mean over residues (without <cls>/<eos>) of
  the ESM encoder's last hidden state (`hidden_size` wide: 320 for `small`), before the adapter.
- text: the mean over tokens of the LM's last hidden layer (`hidden_size` wide: 576 for `small`).
Every vector is L2-normalised, as OpenAI's are, so a dot product is a cosine similarity. Vectors of different
kinds live in different spaces (and widths): compare molecules with molecules, proteins with proteins.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass

import torch

from biomedgpt.serve.config import ServerConfig
from biomedgpt.serve.errors import APIError
from biomedgpt.serve.schemas import EmbeddingRequest

MAX_POSITIONS_PER_FORWARD = 8192  # padded positions (inputs x longest) per encoder call
_WHOLE_TAG_RE = re.compile(r"^\s*<(molecule|protein)>(.*)</\1>\s*$", re.DOTALL | re.IGNORECASE)


@dataclass
class EmbeddingInput:
    kind: str  # "molecule", "protein" or "text"
    value: str  # SMILES, normalised sequence, or text
    tokens: int  # for `usage`: text tokens, atoms or residues (one prompt position each in a chat)


def parse_inputs(model, request: EmbeddingRequest, cfg: ServerConfig) -> list[EmbeddingInput]:
    """Validate every input before any model work (CPU only: RDKit parsing, sequence checks, tokenising)."""
    from biomedgpt.modalities.molecule import parse_smiles
    from biomedgpt.modalities.protein import normalize_sequence

    if request.dimensions is not None:
        raise APIError(400, "dimensions is not supported: vector sizes are fixed by the encoders", param="dimensions")
    texts = [request.input] if isinstance(request.input, str) else list(request.input)
    if not texts:
        raise APIError(400, "input must not be empty", param="input")
    if len(texts) > cfg.max_embedding_inputs:
        raise APIError(400, f"{len(texts)} inputs; the limit is {cfg.max_embedding_inputs}", param="input")
    inputs = []
    for i, text in enumerate(texts):
        match = _WHOLE_TAG_RE.match(text)
        kind = request.input_type if request.input_type != "auto" else (match.group(1).lower() if match else "text")
        value = match.group(2).strip() if match else text
        where = f"input.{i}" if not isinstance(request.input, str) else "input"
        if kind == "molecule":
            if model.mol_structure_encoder is None:
                raise APIError(400, "this model has no molecule encoder", param=where)
            tokens = parse_smiles(value).GetNumAtoms()
            limit = cfg.max_atoms or model.config.molecule.max_atoms
            if tokens > limit:
                raise APIError(400, f"{where}: molecule has {tokens} heavy atoms; the limit is {limit}", param=where)
        elif kind == "protein":
            if model.prot_structure_encoder is None:
                raise APIError(400, "this model has no protein encoder", param=where)
            value = normalize_sequence(value, max_residues=10**9)
            tokens = len(value)
            limit = cfg.max_residues or model.config.protein.max_residues
            if len(value) > limit:
                raise APIError(400, f"{where}: protein of {len(value)} residues; the limit is {limit}", param=where)
        else:
            if not value.strip():
                raise APIError(400, f"{where}: empty text", param=where)
            tokens = len(model.tokenizer(value, add_special_tokens=False)["input_ids"])
            if tokens > cfg.max_prompt_tokens:
                raise APIError(400, f"{where}: {tokens} tokens; the limit is {cfg.max_prompt_tokens}", param=where)
        inputs.append(EmbeddingInput(kind, value, tokens))
    return inputs


@torch.no_grad()
def _molecule_vectors(model, smiles: list[str]) -> torch.Tensor:
    from biomedgpt.modalities.molecule import batch_graphs, smiles_to_graph

    graphs = batch_graphs([smiles_to_graph(s, max_atoms=model.config.molecule.max_atoms) for s in smiles])
    graphs = graphs.to(model.device)
    nodes = model.mol_structure_encoder(graphs.x, graphs.edge_index, graphs.edge_attr).float()  # [atoms, emb]
    sums = torch.zeros(len(smiles), nodes.shape[1], device=nodes.device).index_add_(0, graphs.batch, nodes)
    return sums / torch.tensor(graphs.num_atoms, device=nodes.device).unsqueeze(1)  # [N, emb]


@torch.no_grad()
def _protein_vectors(model, sequences: list[str]) -> torch.Tensor:
    from biomedgpt.modalities.protein import batch_sequences

    batch = batch_sequences(sequences).to(model.device)
    hidden = model.prot_structure_encoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    hidden = hidden.last_hidden_state.float()  # [P, L, D]
    residues = batch.attention_mask.clone()
    residues[:, 0] = 0  # <cls>
    residues[torch.arange(len(sequences)), batch.attention_mask.sum(1) - 1] = 0  # <eos>
    weights = residues.unsqueeze(-1).float()
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)  # [P, D]


@torch.no_grad()
def _text_vectors(model, texts: list[str]) -> torch.Tensor:
    tokenizer = model.tokenizer
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] or [tokenizer.pad_token_id] for t in texts]
    width = max(len(i) for i in ids)
    input_ids = torch.full((len(ids), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, tokens in enumerate(ids):
        input_ids[row, : len(tokens)] = torch.tensor(tokens)
        mask[row, : len(tokens)] = 1
    base = model.llm.base_model  # the decoder stack without the LM head: no [T, vocab] logits computed
    hidden = base(input_ids=input_ids.to(model.device), attention_mask=mask.to(model.device)).last_hidden_state
    weights = mask.to(hidden.device).unsqueeze(-1).float()
    return (hidden.float() * weights).sum(1) / weights.sum(1)  # [T, hidden]


def _groups(rows: list[int], inputs: list[EmbeddingInput], budget: int = MAX_POSITIONS_PER_FORWARD) -> list[list[int]]:
    """Split rows into consecutive groups whose padded size (rows x longest) stays within `budget` positions, so
    64 long proteins never become one forward pass with gigabytes of attention scores."""
    groups: list[list[int]] = []
    for row in rows:
        group = groups[-1] if groups else None
        if group and (len(group) + 1) * max(inputs[r].tokens for r in [*group, row]) <= budget:
            group.append(row)
        else:
            groups.append([row])
    return groups


def compute_embeddings(model, inputs: list[EmbeddingInput]) -> list[torch.Tensor]:
    """Vectors in input order (each kind in batches of bounded size); run on the model worker thread."""
    vectors: list[torch.Tensor | None] = [None] * len(inputs)
    for kind, encode in (("molecule", _molecule_vectors), ("protein", _protein_vectors), ("text", _text_vectors)):
        rows = [i for i, item in enumerate(inputs) if item.kind == kind]
        for group in _groups(rows, inputs):
            for row, vector in zip(group, encode(model, [inputs[i].value for i in group])):
                vectors[row] = torch.nn.functional.normalize(vector, dim=0).cpu()
    return vectors


def encode_vector(vector: torch.Tensor, encoding_format: str) -> list[float] | str:
    """A list of floats, or (encoding_format "base64", the official client's default) little-endian float32."""
    if encoding_format == "base64":
        return base64.b64encode(vector.to(torch.float32).numpy().astype("<f4").tobytes()).decode()
    return vector.tolist()

