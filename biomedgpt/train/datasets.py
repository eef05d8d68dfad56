"""Training data for each stage: file readers and in-memory datasets that collate into objective batches.

Every dataset is indexable, knows each item's length (for length-grouped batching) and collates a list of
indices into a batch. Random masking is seeded per (seed, epoch, item index), never by the global RNG, so a
batch is the same whether it is built by one process or split across several, and after a resume.

Formats (`.gz` accepted for text and JSONL):
- lm: `.txt` (documents separated by blank lines) or `.jsonl` (one document per line in `data.text_field`);
- align / finetune: `.jsonl` QA records (biomedgpt.data.records), multiple-choice records turned into QA;
- encoder-molecule: `.smi`/`.txt` (SMILES first on each line), `.csv`/`.tsv` with a `smiles` column, or QA JSONL;
- encoder-protein: `.fasta`/`.fa`, `.txt` (one sequence per line), `.csv`/`.tsv` with a `sequence`/`protein`
  column, or QA JSONL.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from biomedgpt.constants import IGNORE_INDEX
from biomedgpt.data.collate import Example, collate, end_of_turn
from biomedgpt.data.records import MCQRecord, QARecord, RecordError, parse_mcq, parse_qa
from biomedgpt.errors import InvalidSequenceError, InvalidSmilesError, UserError
from biomedgpt.modalities import count_cut_entities
from biomedgpt.modalities.molecule import MoleculeGraph, batch_graphs, smiles_to_graph
from biomedgpt.modalities.protein import PAD_ID, normalize_sequence, tokenize_sequence
from biomedgpt.train.objectives import (
    MaskedGraphBatch,
    MaskedProteinBatch,
    TextBatch,
    mask_atoms,
    mask_residues,
)

logger = logging.getLogger(__name__)


def item_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A generator private to one item in one epoch (tuples of ints hash the same in every process)."""
    return torch.Generator().manual_seed(hash((seed, epoch, index)) & 0x7FFF_FFFF_FFFF)


def _open_text(path: Path):
    if not path.is_file():
        raise UserError(f"training data file not found: {path}")
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8")


def _base_suffix(path: Path) -> str:
    return Path(path.stem).suffix if path.suffix == ".gz" else path.suffix


def _jsonl(path: Path) -> Iterator[tuple[str, dict]]:
    with _open_text(path) as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                where = f"{path}:{number}"
                try:
                    yield where, json.loads(line)
                except json.JSONDecodeError as err:
                    raise RecordError(f"{where}: invalid JSON ({err.msg} at column {err.colno})") from None


def _column(path: Path, names: tuple[str, ...]) -> Iterator[str]:
    with _open_text(path) as handle:
        sample = handle.read(65536)
        handle.seek(0)
        delimiter = "\t" if _base_suffix(path) == ".tsv" else csv.Sniffer().sniff(sample, ",|\t;").delimiter
        reader = csv.DictReader(handle, delimiter=delimiter)
        column = next((c for c in reader.fieldnames or [] if c.strip().lower() in names), None)
        if column is None:
            raise UserError(f"{path}: no column named {' or '.join(names)} (columns: {reader.fieldnames})")
        for row in reader:
            if row[column] and row[column].strip():
                yield row[column].strip()


def _limited(items: Iterator, limit: int | None) -> list:
    out = []
    for item in items:
        if limit is not None and len(out) >= limit:
            break
        out.append(item)
    return out


# ---------------------------------------------------------------------------------------------- readers
def read_documents(path: Path, text_field: str) -> Iterator[str]:
    if _base_suffix(path) == ".jsonl":
        for where, data in _jsonl(path):
            text = data.get(text_field) if isinstance(data, dict) else None
            if not isinstance(text, str):
                raise RecordError(f"{where}: missing text field {text_field!r} (set data.text_field)")
            if text.strip():
                yield text
        return
    with _open_text(path) as handle:
        for block in handle.read().split("\n\n"):
            if block.strip():
                yield block.strip()


def read_records(path: Path) -> Iterator[QARecord | MCQRecord]:
    """QA and multiple-choice records from one JSONL file (the kind is decided per line by `options`)."""
    for where, data in _jsonl(path):
        yield parse_mcq(data, where) if isinstance(data, dict) and "options" in data else parse_qa(data, where)


def read_smiles(path: Path) -> Iterator[str]:
    suffix = _base_suffix(path)
    if suffix == ".jsonl":
        for record in read_records(path):
            yield from getattr(record, "molecules", [])
    elif suffix in (".csv", ".tsv"):
        yield from _column(path, ("smiles",))
    else:
        with _open_text(path) as handle:
            for line in handle:
                fields = line.split()
                if fields and fields[0].lower() != "smiles":
                    yield fields[0]


def read_sequences(path: Path) -> Iterator[str]:
    suffix = _base_suffix(path)
    if suffix == ".jsonl":
        for record in read_records(path):
            yield from getattr(record, "proteins", [])
    elif suffix in (".csv", ".tsv"):
        yield from _column(path, ("sequence", "protein", "seq"))
    elif suffix in (".fasta", ".fa", ".faa"):
        from Bio import SeqIO

        with _open_text(path) as handle:
            for entry in SeqIO.parse(handle, "fasta"):
                yield str(entry.seq)
    else:
        with _open_text(path) as handle:
            yield from (line.strip() for line in handle if line.strip())


def mcq_to_qa(record: MCQRecord) -> QARecord:
    """A multiple-choice record as a QA pair answered by its option letter, with the very prompt that
    evaluation uses (`biomedgpt.evaluate.multiple_choice.format_question`), so the letter token trained here
    is the token the evaluation scores."""
    from biomedgpt.evaluate.multiple_choice import format_question

    return QARecord(id=record.id, question=format_question(record), answer=record.answer)


# ---------------------------------------------------------------------------------------------- datasets
def split_off(dataset, fraction: float, seed: int):
    """(train, validation) by a seeded random choice of `fraction` of the items (at least one)."""
    count = max(1, int(round(len(dataset) * fraction)))
    if count >= len(dataset):
        raise UserError(f"data.validation_fraction={fraction} leaves no training data ({len(dataset)} items)")
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed)).tolist()
    return dataset.subset(sorted(order[count:])), dataset.subset(sorted(order[:count]))


class PackedText:
    """Documents tokenised, joined with the end-of-text token and cut into `block` tokens (sequence packing:
    no padding, every position is a target). blocks: [N, block]."""

    def __init__(self, blocks: torch.Tensor) -> None:
        self.blocks = blocks

    @classmethod
    def from_files(cls, files: Sequence[str], tokenizer, block: int, text_field: str, limit: int | None):
        ids: list[int] = []
        eos = tokenizer.eos_token_id
        for path in files:
            docs = _limited(read_documents(Path(path), text_field), limit)
            for start in range(0, len(docs), 512):
                for tokens in tokenizer(docs[start : start + 512], add_special_tokens=False)["input_ids"]:
                    ids += tokens + ([eos] if eos is not None else [])
        count = len(ids) // block
        if count == 0:
            raise UserError(f"{', '.join(files)}: only {len(ids)} tokens, fewer than one block of {block}")
        return cls(torch.tensor(ids[: count * block], dtype=torch.long).view(count, block))

    def __len__(self) -> int:
        return self.blocks.shape[0]

    def subset(self, indices: Sequence[int]) -> PackedText:
        return PackedText(self.blocks[list(indices)])

    def lengths(self) -> list[int]:
        return [self.blocks.shape[1]] * len(self)

    def collate(self, indices: Sequence[int], epoch: int) -> TextBatch:
        rows = self.blocks[list(indices)]
        return TextBatch(rows, torch.ones_like(rows), rows.clone())


class QAExamples:
    """QA records tokenised with the model's prompt template; only the answer (+ end of turn) is a target."""

    def __init__(self, examples: list[Example], pad_id: int) -> None:
        self.examples = examples
        self.pad_id = pad_id

    @classmethod
    def from_files(cls, files: Sequence[str], model, max_length: int, limit: int | None) -> QAExamples:
        examples: list[Example] = []
        skipped = {"invalid entity": 0, "prompt longer than data.max_length": 0}
        eot = end_of_turn(model.tokenizer)
        with count_cut_entities("QA records"):
            for path in files:
                examples += cls._examples(Path(path), model, eot, max_length, limit, skipped)
        if any(skipped.values()):
            logger.warning("skipped records: %s", {k: v for k, v in skipped.items() if v})
        if not examples:
            raise UserError(f"no usable QA records in {', '.join(files)} (skipped: {skipped})")
        return cls(examples, model.tokenizer.pad_token_id)

    @staticmethod
    def _examples(path: Path, model, eot: str, max_length: int, limit: int | None, skipped: dict) -> list[Example]:
        """Tokenise one file's records; count (in `skipped`) those with a bad entity or an over-long prompt."""
        from biomedgpt.inference import Message, build_example

        examples = []
        for record in _limited(read_records(path), limit):
            if isinstance(record, MCQRecord):
                record = mcq_to_qa(record)
            message = Message("user", record.question, record.molecules, record.proteins)
            try:
                example = build_example(model, [message], answer=record.answer + eot, leave_one_out=True)
            except (InvalidSmilesError, InvalidSequenceError) as err:
                skipped["invalid entity"] += 1
                logger.warning("skipping record %s: %s", record.id, err)
                continue
            if sum(label == IGNORE_INDEX for label in example.labels) >= max_length:
                skipped["prompt longer than data.max_length"] += 1
                continue
            example.input_ids, example.labels = example.input_ids[:max_length], example.labels[:max_length]
            examples.append(example)
        return examples

    def __len__(self) -> int:
        return len(self.examples)

    def subset(self, indices: Sequence[int]) -> QAExamples:
        return QAExamples([self.examples[i] for i in indices], self.pad_id)

    def lengths(self) -> list[int]:
        return [len(e.input_ids) for e in self.examples]

    def collate(self, indices: Sequence[int], epoch: int) -> TextBatch:
        chosen = [self.examples[i] for i in indices]
        batch = collate(chosen, self.pad_id, "right")
        return TextBatch(batch.input_ids, batch.attention_mask, batch.labels,
                         [g for e in chosen for g in e.molecules], [s for e in chosen for s in e.proteins])


def _valid_entities(raw: Iterator[str], parse, limit: int | None, kind: str, files) -> list:
    """Parse each distinct entry (QA files repeat a molecule/protein once per question), skipping bad ones."""
    out, bad = [], 0
    with count_cut_entities(kind):
        for text in dict.fromkeys(raw):
            if limit is not None and len(out) >= limit:
                break
            try:
                out.append(parse(text))
            except (InvalidSmilesError, InvalidSequenceError):
                bad += 1
    if bad:
        logger.warning("skipped %d invalid %s entries", bad, kind)
    if not out:
        raise UserError(f"no valid {kind} entries in {', '.join(files)}")
    return out


class MaskedMolecules:
    """Molecule graphs for GIN attribute masking."""

    def __init__(self, graphs: list[MoleculeGraph], ratio: float, seed: int) -> None:
        self.graphs, self.ratio, self.seed = graphs, ratio, seed

    @classmethod
    def from_files(cls, files, max_atoms: int, ratio: float, seed: int, limit: int | None) -> MaskedMolecules:
        raw = (s for path in files for s in read_smiles(Path(path)))
        return cls(_valid_entities(raw, lambda s: smiles_to_graph(s, max_atoms), limit, "SMILES", files), ratio, seed)

    def __len__(self) -> int:
        return len(self.graphs)

    def subset(self, indices: Sequence[int]) -> MaskedMolecules:
        return MaskedMolecules([self.graphs[i] for i in indices], self.ratio, self.seed)

    def lengths(self) -> list[int]:
        return [g.num_atoms for g in self.graphs]

    def collate(self, indices: Sequence[int], epoch: int) -> MaskedGraphBatch:
        graphs, positions, targets, offset = [], [], [], 0
        for index in indices:
            graph = self.graphs[index]
            x, masked = mask_atoms(graph, self.ratio, item_generator(self.seed, epoch, index))
            graphs.append(MoleculeGraph(graph.smiles, x, graph.edge_index, graph.edge_attr))
            positions.append(masked + offset)
            targets.append(graph.x[masked, 0])
            offset += graph.num_atoms
        return MaskedGraphBatch(batch_graphs(graphs), torch.cat(positions), torch.cat(targets))


class MaskedProteins:
    """Protein sequences (cut to the encoder's `max_residues`) for ESM-2 masked language modelling."""

    def __init__(self, sequences: list[str], ratio: float, seed: int) -> None:
        self.sequences, self.ratio, self.seed = sequences, ratio, seed

    @classmethod
    def from_files(cls, files, max_residues: int, ratio: float, seed: int, limit: int | None) -> MaskedProteins:
        raw = (s for path in files for s in read_sequences(Path(path)))
        parse = lambda s: normalize_sequence(s, max_residues)  # noqa: E731
        return cls(_valid_entities(raw, parse, limit, "protein sequence", files), ratio, seed)

    def __len__(self) -> int:
        return len(self.sequences)

    def subset(self, indices: Sequence[int]) -> MaskedProteins:
        return MaskedProteins([self.sequences[i] for i in indices], self.ratio, self.seed)

    def lengths(self) -> list[int]:
        return [len(s) + 2 for s in self.sequences]

    def collate(self, indices: Sequence[int], epoch: int) -> MaskedProteinBatch:
        rows = [mask_residues(torch.tensor(tokenize_sequence(self.sequences[i])), self.ratio,
                              item_generator(self.seed, epoch, i)) for i in indices]
        width = max(len(inputs) for inputs, _ in rows)
        input_ids = torch.full((len(rows), width), PAD_ID, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for row, (inputs, targets) in enumerate(rows):
            input_ids[row, : len(inputs)], labels[row, : len(inputs)] = inputs, targets
            attention_mask[row, : len(inputs)] = 1
        return MaskedProteinBatch(input_ids, attention_mask, labels)
