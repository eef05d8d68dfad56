"""The training objectives, as modules the loop (and DDP) can wrap: each maps a batch to (loss_sum, targets).

Returning the *sum* of per-target losses and the number of targets (rather than a mean) lets the loop
normalise by the target count of the whole global batch (all processes, all accumulation steps), so that
2 processes x batch B give the same gradient as 1 process x batch 2B, token for token.

- `CausalLMObjective`: next-token cross entropy on the LM (stages lm, align, finetune), through the splice.
  Logits are computed only at positions that have a label: in alignment most positions are prompt and
  placeholders, and the 49k-wide output layer would otherwise dominate the step.
- `AtomMaskingObjective`: GIN attribute masking (Hu et al. 2020): predict the atom type of masked atoms.
- `ProteinMLMObjective`: ESM-2 masked-LM on our `EsmModel` (the head's decoder is tied to its embeddings).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from biomedgpt.constants import IGNORE_INDEX
from biomedgpt.modalities.molecule import MASK_ATOM_INDEX, MoleculeBatch, MoleculeGraph, batch_graphs
from biomedgpt.modalities.protein import ESM_VOCAB_SIZE, MASK_ID, ProteinBatch, batch_sequences

NUM_PREDICTED_ATOM_TYPES = 119  # Hu et al.: atom types 0..118 (the mask index 119 is never a target)
ESM_MASKABLE_IDS = torch.arange(4, 29)  # residue letters L..O: random replacements draw from these


# ---------------------------------------------------------------------------------------------- batches
@dataclass
class TextBatch:
    """Tokens for a causal-LM step. `input_ids`, `attention_mask`, `labels`: [B, T] (labels unshifted, as in
    HF). `graphs` / `sequences` are the entities behind the placeholders, in row-major placeholder order."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    graphs: list[MoleculeGraph] = field(default_factory=list)
    sequences: list[str] = field(default_factory=list)

    def num_targets(self) -> int:
        return int((self.labels[:, 1:] != IGNORE_INDEX).sum())

    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())


@dataclass
class MaskedGraphBatch:
    """Molecules with some atoms' types replaced by the mask index. `targets`: [M] true types of the masked
    atoms; `positions`: [M] their node indices in `molecules`."""

    molecules: MoleculeBatch
    positions: torch.Tensor
    targets: torch.Tensor

    def num_targets(self) -> int:
        return int(self.targets.numel())

    def num_tokens(self) -> int:
        return int(self.molecules.x.shape[0])


@dataclass
class MaskedProteinBatch:
    """ESM-2 tokens with masking applied. `input_ids`, `attention_mask`, `labels`: [P, L]."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor

    def num_targets(self) -> int:
        return int((self.labels != IGNORE_INDEX).sum())

    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())


# ---------------------------------------------------------------------------------------------- masking
def mask_atoms(graph: MoleculeGraph, ratio: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick at least one atom to mask: returns (masked x [N, 2], masked node indices [M])."""
    n = graph.num_atoms
    count = max(1, int(round(n * ratio)))
    positions = torch.randperm(n, generator=generator)[:count].sort().values
    x = graph.x.clone()
    x[positions, 0] = MASK_ATOM_INDEX
    x[positions, 1] = 0
    return x, positions


def mask_residues(tokens: torch.Tensor, ratio: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT/ESM masking of one tokenised protein (<cls> residues <eos>): `ratio` of the residues become
    targets; of those 80% are replaced by <mask>, 10% by a random residue, 10% left as they are.
    Returns (input ids [L], labels [L] with IGNORE_INDEX off target)."""
    residues = tokens.numel() - 2
    count = max(1, int(round(residues * ratio)))
    positions = torch.randperm(residues, generator=generator)[:count] + 1
    labels = torch.full_like(tokens, IGNORE_INDEX)
    labels[positions] = tokens[positions]
    inputs = tokens.clone()
    roll = torch.rand(count, generator=generator)
    random_ids = ESM_MASKABLE_IDS[torch.randint(len(ESM_MASKABLE_IDS), (count,), generator=generator)]
    inputs[positions] = torch.where(roll < 0.8, torch.full_like(random_ids, MASK_ID),
                                    torch.where(roll < 0.9, random_ids, tokens[positions]))
    return inputs, labels


@contextlib.contextmanager
def batchnorm_safe(gin: nn.Module, num_nodes: int):
    """BatchNorm cannot compute batch statistics from a single node in training mode: for such a batch (one
    single-atom molecule, e.g. water) use the running statistics instead of failing."""
    if not (gin.training and num_nodes < 2):
        yield
        return
    norms = [m for m in gin.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.eval()
    try:
        yield
    finally:
        for norm in norms:
            norm.train()


def run_gin(gin: nn.Module, molecules: MoleculeBatch) -> torch.Tensor:
    """The GIN in its own dtype: its scatter-add is not autocast-safe, and it is tiny next to the LM."""
    device_type = molecules.x.device.type
    with batchnorm_safe(gin, int(molecules.x.shape[0])), torch.autocast(device_type, enabled=False):
        return gin(molecules.x, molecules.edge_index, molecules.edge_attr)


# ---------------------------------------------------------------------------------------------- encoder cache
class EncoderCache:
    """Raw (un-projected) encoder outputs per molecule / protein, computed once with the frozen encoders.

    The adapters still run every step on the cached outputs, so they train as usual while an alignment epoch
    costs only the LM. Keys are the SMILES string / normalised sequence; values [atoms, D] / [L + 2, D].
    Only valid while the encoders are frozen and in eval mode (the loop guarantees both).
    """

    def __init__(self, model, dtype: torch.dtype = torch.float32, chunk: int = 32) -> None:
        self.model = model
        self.dtype = dtype
        self.chunk = chunk
        self.molecules: dict[str, torch.Tensor] = {}
        self.proteins: dict[str, torch.Tensor] = {}
        self.hits = 0
        self.misses = 0

    @torch.no_grad()
    def molecule_outputs(self, graphs: list[MoleculeGraph], device: torch.device) -> torch.Tensor:
        missing = list({g.smiles: g for g in graphs if g.smiles not in self.molecules}.values())
        self.misses += len(missing)
        self.hits += len(graphs) - len(missing)
        gin = self.model.mol_structure_encoder
        for start in range(0, len(missing), self.chunk):
            part = missing[start : start + self.chunk]
            nodes = run_gin(gin, batch_graphs(part).to(device))
            for graph, rows in zip(part, nodes.split([g.num_atoms for g in part])):
                self.molecules[graph.smiles] = rows.to(self.dtype).cpu()
        return torch.cat([self.molecules[g.smiles] for g in graphs]).to(device)

    @torch.no_grad()
    def protein_outputs(self, sequences: list[str], device: torch.device) -> torch.Tensor:
        missing = list(dict.fromkeys(s for s in sequences if s not in self.proteins))
        self.misses += len(missing)
        self.hits += len(sequences) - len(missing)
        esm = self.model.prot_structure_encoder
        for start in range(0, len(missing), self.chunk):
            part = missing[start : start + self.chunk]
            proteins = batch_sequences(part).to(device)
            hidden = esm(input_ids=proteins.input_ids, attention_mask=proteins.attention_mask).last_hidden_state
            for row, sequence in enumerate(part):
                self.proteins[sequence] = hidden[row, : len(sequence) + 2].to(self.dtype).cpu()
        return torch.cat([self.proteins[s] for s in sequences]).to(device)


# ---------------------------------------------------------------------------------------------- objectives
def token_cross_entropy_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), targets, reduction="sum")


def _cache_kwarg(decoder: nn.Module) -> str:
    """transformers 5.x renamed `past_key_values` to `cache` in the decoder's forward."""
    import inspect

    return "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"


class CausalLMObjective(nn.Module):
    """Next-token loss of BioMedGPT on a `TextBatch`. `cache` (optional) replaces the frozen encoders.

    With `frozen_lm_prefix` (only valid while the LM's weights are frozen), the prompt tokens that every row of
    a batch shares before its first placeholder (system prompt, template) are run once, without gradient, and
    reused as a KV cache: nothing trainable can influence them, so the loss is the same, for less compute."""

    MIN_PREFIX = 8

    def __init__(self, model, cache: EncoderCache | None = None, frozen_lm_prefix: bool = False) -> None:
        super().__init__()
        self.model = model
        self.cache = cache
        self.frozen_lm_prefix = frozen_lm_prefix
        self._prefixes: dict[tuple[int, ...], object] = {}

    def _features(self, batch: TextBatch, device: torch.device):
        model = self.model
        molecule_features = protein_features = None
        if batch.graphs:
            if self.cache is not None:
                raw = self.cache.molecule_outputs(batch.graphs, device)
            else:
                raw = run_gin(model.mol_structure_encoder, batch_graphs(batch.graphs).to(device))
            molecule_features = model.proj_mol(raw.to(model.proj_mol.weight.dtype))
        if batch.sequences:
            if self.cache is not None:
                raw = self.cache.protein_outputs(batch.sequences, device)
            else:
                proteins: ProteinBatch = batch_sequences(batch.sequences).to(device)
                hidden = model.prot_structure_encoder(
                    input_ids=proteins.input_ids, attention_mask=proteins.attention_mask
                ).last_hidden_state
                raw = hidden[proteins.attention_mask.bool()]
            protein_features = model.proj_prot(raw.to(model.proj_prot.weight.dtype))
        return molecule_features, protein_features

    def _shared_prefix(self, input_ids: torch.Tensor, labels: torch.Tensor) -> int:
        """Length of the prefix identical in every row, free of placeholders and ending before the position
        that predicts the first target (0 when too short to be worth it)."""
        if not self.frozen_lm_prefix:
            return 0
        predicts_target = torch.zeros_like(labels, dtype=torch.bool)
        predicts_target[:, :-1] = labels[:, 1:] != IGNORE_INDEX
        stop = (input_ids < 0) | (input_ids != input_ids[:1]) | predicts_target
        first = torch.where(stop.any(0), stop.float().argmax(1).min(), torch.tensor(input_ids.shape[1]))
        length = min(int(first.min()), input_ids.shape[1] - 1)
        return length if length >= self.MIN_PREFIX else 0

    def _prefix_cache(self, decoder: nn.Module, prefix_ids: torch.Tensor, rows: int):
        """The KV cache of `prefix_ids` ([1, P]), computed once per distinct prefix, repeated for `rows`."""
        import copy

        key = tuple(prefix_ids[0].tolist())
        if key not in self._prefixes:
            if len(self._prefixes) >= 16:
                self._prefixes.clear()
            with torch.no_grad():
                embeds = self.model.llm.get_input_embeddings()(prefix_ids)
                output = decoder(inputs_embeds=embeds, use_cache=True)
                self._prefixes[key] = getattr(output, _cache_kwarg(decoder))
        cache = copy.deepcopy(self._prefixes[key])
        cache.batch_repeat_interleave(rows)
        return cache

    def forward(self, batch: TextBatch) -> tuple[torch.Tensor, torch.Tensor]:
        model = self.model
        device = model.device
        input_ids = batch.input_ids.to(device)
        attention_mask = batch.attention_mask.to(device)
        molecule_features, protein_features = self._features(batch, device)
        embeds = model.embed(input_ids, molecule_features=molecule_features, protein_features=protein_features)
        llm = model.llm.get_base_model() if hasattr(model.llm, "get_base_model") else model.llm
        decoder = llm.get_decoder()
        labels = batch.labels.to(device)
        start = self._shared_prefix(input_ids, labels)
        if start:
            rows, width = input_ids.shape
            positions = torch.arange(start, width, device=device).unsqueeze(0).expand(rows, -1)
            cache = self._prefix_cache(decoder, input_ids[:1, :start], rows)
            hidden = decoder(inputs_embeds=embeds[:, start:], attention_mask=attention_mask, position_ids=positions,
                             use_cache=True, **{_cache_kwarg(decoder): cache}).last_hidden_state  # [B, T - P, H]
        else:
            hidden = decoder(inputs_embeds=embeds, attention_mask=attention_mask, use_cache=False).last_hidden_state
        # Position t predicts token t + 1; prefix positions never have a target (they precede every answer).
        targets = labels[:, start + 1 :]
        keep = targets != IGNORE_INDEX
        logits = llm.get_output_embeddings()(hidden[:, :-1][keep])  # [targets, vocab]
        return token_cross_entropy_sum(logits, targets[keep]), keep.sum()


class AtomMaskingObjective(nn.Module):
    """Attribute masking for the GIN: a linear head predicts the type of each masked atom."""

    def __init__(self, gin: nn.Module) -> None:
        super().__init__()
        self.gin = gin
        self.head = nn.Linear(gin.config.emb_dim, NUM_PREDICTED_ATOM_TYPES)

    def forward(self, batch: MaskedGraphBatch) -> tuple[torch.Tensor, torch.Tensor]:
        device = self.head.weight.device
        nodes = run_gin(self.gin, batch.molecules.to(device))
        logits = self.head(nodes[batch.positions.to(device)])
        return token_cross_entropy_sum(logits, batch.targets.to(device)), batch.targets.new_tensor(len(batch.targets))


class ProteinMLMObjective(nn.Module):
    """ESM-2 masked language modelling on our `EsmModel`, with the transformers `EsmLMHead`."""

    def __init__(self, esm: nn.Module) -> None:
        from transformers.models.esm.modeling_esm import EsmLMHead

        super().__init__()
        self.esm = esm
        self.head = EsmLMHead(esm.config)
        self.head.decoder.weight = esm.embeddings.word_embeddings.weight  # tied, as in ESM-2
        if esm.config.vocab_size != ESM_VOCAB_SIZE:
            raise ValueError(f"protein encoder vocab {esm.config.vocab_size} != ESM-2 alphabet {ESM_VOCAB_SIZE}")

    def forward(self, batch: MaskedProteinBatch) -> tuple[torch.Tensor, torch.Tensor]:
        device = self.head.bias.device
        labels = batch.labels.to(device)
        hidden = self.esm(
            input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device)
        ).last_hidden_state
        keep = labels != IGNORE_INDEX
        return token_cross_entropy_sum(self.head(hidden[keep]), labels[keep]), keep.sum()
