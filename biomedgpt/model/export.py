"""Export a trained model folder for shipping: only the weights we trained, the evidence index, checksums.

    python -m biomedgpt.model.export runs/small/finetune-rag/model models/biomedgpt-small

With `--index-records`, the folder also gets its own evidence index (`index.json.gz`); without, the model uses the
repository's `models/evidence/index.json.gz` (the default model does, so git holds one copy of it).

The evidence index is built only from records whose `source` is in `--index-sources` (default: the sets whose
license allows redistribution with attribution: ChEBI-20 (CC BY 4.0), the FAPM Swiss-Prot GO tables and DeepLoc
(MIT / UniProt CC BY 4.0)); research-only sets such as PCdes are never shipped.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from biomedgpt.constants import EVIDENCE_INDEX_NAME

SHIPPABLE_SOURCES = ("chebi20-validation", "fapm-val", "fapm-test", "deeploc_valid")
MODEL_FILES = ("config.json", "model.safetensors")


def build_evidence_index(
    index_records: list[Path], path: Path, index_sources: tuple[str, ...] = SHIPPABLE_SOURCES
):
    """Nearest-neighbour index over the shippable records of the training pool, saved at `path`."""
    from biomedgpt.data.records import read_qa
    from biomedgpt.retrieval import RetrievalIndex

    records = [r for source in index_records for r in read_qa(source) if r.source in index_sources]
    index = RetrievalIndex.from_records(records)
    index.save(path)
    return index


def export_model(
    source: Path, target: Path, index_records: list[Path] | None, index_sources: tuple[str, ...] = SHIPPABLE_SOURCES,
    generation: dict | None = None,
) -> dict:
    """Copy config + encoder/adapter weights + a LoRA adapter if any (never an LM copy: the base LM is referenced
    by id), build the evidence index, write SHA256SUMS. Returns sizes and counts for the model card.

    `generation` (e.g. {"num_beams": 4}) is the decoding the model was evaluated with, recorded in its config so
    that `ask`, `chat`, `batch` and `eval` use it by default; None keeps the source's."""
    from biomedgpt.config import BioMedGPTConfig
    from biomedgpt.io import atomic_path, write_checksums

    config = BioMedGPTConfig.load(source / "config.json")
    if config.lm.name_or_path == "lm":
        raise ValueError(f"{source} holds a modified LM copy (lm/); export ships only encoders and adapters")
    if generation is not None:  # validated before anything is written
        config = BioMedGPTConfig.from_dict({**config.to_dict(), "generation": dict(generation)})
    files = list(MODEL_FILES)
    if config.lm.lora is not None:  # a LoRA adapter over the base LM (a few MB) ships with the model
        from biomedgpt.model.biomedgpt import LORA_FILES

        files += [f"{config.lm.lora}/{name}" for name in LORA_FILES]
    for name in files:
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / name, target / name)
    if generation is not None:
        with atomic_path(target / "config.json") as tmp:
            config.save(tmp)
    names = list(files)
    index = None
    if index_records:  # else the model uses the repository's models/evidence/ index (no second copy in git)
        index = build_evidence_index(index_records, target / EVIDENCE_INDEX_NAME, index_sources)
        names.append(EVIDENCE_INDEX_NAME)
    write_checksums(target, names)
    return {
        "files": {name: (target / name).stat().st_size for name in names},
        "index_molecules": len(index.molecules) if index else 0,
        "index_proteins": len(index.proteins) if index else 0,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, nargs="?", help="a trained model folder (save_pretrained output)")
    parser.add_argument("target", type=Path, nargs="?", help="where to write the shippable model folder")
    parser.add_argument("--index-only", type=Path, metavar="PATH",
                        help="only build the evidence index at PATH (e.g. models/evidence/index.json.gz)")
    parser.add_argument("--index-records", type=Path, nargs="+",
                        help="QA JSONL of the pool, for an evidence index inside the model folder (without it, the "
                             "model uses the repository's models/evidence/index.json.gz)")
    parser.add_argument("--index-sources", nargs="+", default=list(SHIPPABLE_SOURCES),
                        help="record sources allowed into the shipped index")
    parser.add_argument("--generation", nargs="+", metavar="KEY=VALUE",
                        help="recommended decoding recorded in the config, e.g. num_beams=4 repetition_penalty=1.0 "
                             "quantize=bf16 (the settings its scores were measured with)")
    args = parser.parse_args(argv)
    if args.index_only:
        if not args.index_records:
            parser.error("--index-only needs --index-records")
        index = build_evidence_index(args.index_records, args.index_only, tuple(args.index_sources))
        print(f"{args.index_only}: {len(index.molecules)} molecules, {len(index.proteins)} proteins, "
              f"{args.index_only.stat().st_size / 1e6:.1f} MB")
        return 0
    if args.source is None or args.target is None:
        parser.error("give SOURCE and TARGET, or --index-only PATH")
    try:
        summary = export_model(args.source, args.target, args.index_records, tuple(args.index_sources),
                               _parse_generation(parser, args.generation))
    except ValueError as err:
        parser.error(str(err))
    for name, size in summary["files"].items():
        print(f"{name}: {size / 1e6:.1f} MB")
    if args.index_records:
        print(f"evidence index: {summary['index_molecules']} molecules, {summary['index_proteins']} proteins")
    return 0


def _parse_generation(parser: argparse.ArgumentParser, items: list[str] | None) -> dict | None:
    """["num_beams=4", "quantize=bf16"] -> {"num_beams": 4, "quantize": "bf16"} (numbers parsed as JSON)."""
    import json

    if items is None:
        return None
    settings = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"--generation takes KEY=VALUE items, got {item!r}")
        try:
            settings[key] = json.loads(value)
        except json.JSONDecodeError:
            settings[key] = value
    return settings


if __name__ == "__main__":
    sys.exit(main())
