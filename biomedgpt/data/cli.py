"""`biomedgpt data …`: build QA / multiple-choice JSONL from raw datasets, check train/test leakage, split.

Thin shells over `biomedgpt.data.{molecule_qa, protein_qa, mcq, leakage, splits}`; heavy imports stay inside the
handlers so that `biomedgpt --help` stays instant.
"""

from __future__ import annotations

import argparse
import json
import sys


def _common(parser: argparse.ArgumentParser, exclude_help: str) -> None:
    parser.add_argument("-o", "--output", required=True, help="output JSONL (written atomically)")
    parser.add_argument("--exclude", action="append", default=[], metavar="FILE", help=exclude_help)
    parser.add_argument("--rejects", metavar="FILE", help="write every skipped input item with its reason (JSONL)")
    parser.add_argument("--summary-json", metavar="FILE", help="also write the counts as JSON")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="show a progress bar with items/s (default: when stderr is a terminal)")


def register(subparsers) -> None:
    data = subparsers.add_parser("data", help="build datasets, check train/test leakage, split",
                                 description="Build QA and multiple-choice JSONL files from raw datasets, "
                                             "check them for train/test leakage, and split them.")
    commands = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)

    mol = commands.add_parser("molecule-qa", help="PubChemQA-style records from SMILES + description tables",
                              description="ChEBI-20 / PCdes (CID<TAB>SMILES<TAB>description) or any TSV/CSV "
                                          "with SMILES and description columns → QA JSONL.")
    mol.add_argument("inputs", nargs="+", metavar="INPUT")
    mol.add_argument("--source", action="append", default=[], help="source name (one for all, or one per input)")
    mol.add_argument("--question", default=None, help="the question asked of every molecule")
    mol.add_argument("--format", default="auto", choices=("auto", "tsv", "csv"))
    mol.add_argument("--smiles-column"), mol.add_argument("--text-column"), mol.add_argument("--id-column")
    mol.add_argument("--keep-duplicates", action="store_true",
                     help="keep repeated InChIKeys (for an evaluation set that must keep its published size)")
    _common(mol, "drop molecules whose InChIKey is in FILE (a table or QA JSONL; repeatable)")
    mol.set_defaults(func=run_molecule_qa)

    prot = commands.add_parser("protein-qa", help="UniProtQA-style records from flat files and GO/location sets",
                               description="UniProt flat files (.dat/.txt, gzipped or not), FAPM GO tables, "
                                           "InstructProtein GO TSVs and DeepLoc TSVs → QA JSONL.")
    prot.add_argument("inputs", nargs="+", metavar="INPUT")
    prot.add_argument("--format", default="auto", choices=("auto", "uniprot", "fapm", "go-tsv", "deeploc"))
    prot.add_argument("--source", help="source name (default: uniprot for flat files, else the file name)")
    prot.add_argument("--tasks", help="flat-file questions to ask, comma-separated (function,name,family,location)")
    prot.add_argument("--aspect", choices=("mf", "bp", "cc"), help="GO aspect, if the file name does not say")
    prot.add_argument("--keep-duplicates", action="store_true",
                      help="keep table rows repeating a (task, sequence) pair (an evaluation set's published size)")
    _common(prot, "drop proteins whose exact sequence is in FILE (a table or QA JSONL; repeatable)")
    prot.set_defaults(func=run_protein_qa)

    mcq = commands.add_parser("mcq", help="PubMedQA / MedMCQA / MedQA → multiple-choice JSONL")
    mcq.add_argument("dataset", choices=("pubmedqa", "medmcqa", "medqa"))
    mcq.add_argument("inputs", nargs="+", metavar="INPUT")
    mcq.add_argument("--index-base", type=int, default=1, choices=(0, 1),
                     help="MedMCQA 'cop' index base: 1 in the original release (default), 0 in the HF copy")
    _common(mcq, "drop questions whose normalised text is in FILE (a multiple-choice JSONL; repeatable)")
    mcq.set_defaults(func=run_mcq)

    check = commands.add_parser("check", help="exact and near duplicates between TRAIN and TEST",
                                description="Usage: check TRAIN TEST, or check TRAIN... --against TEST.... "
                                            "Molecules by InChIKey and Morgan Tanimoto, proteins by sequence and "
                                            "identity, multiple-choice items by normalised question text.")
    check.add_argument("files", nargs="+", metavar="FILE")
    check.add_argument("--against", nargs="+", metavar="TEST", help="test file(s); then every FILE is TRAIN")
    check.add_argument("--tanimoto", type=float, default=0.9, help="near-duplicate molecules (default 0.9)")
    check.add_argument("--identity", type=float, default=0.9, help="near-duplicate proteins (default 0.9)")
    check.add_argument("--align", action="store_true", help="confirm protein estimates with true alignments")
    check.add_argument("--filtered", metavar="OUT", help="write TRAIN without its exact duplicates of TEST")
    check.add_argument("--drop-near", action="store_true", help="with --filtered, drop near duplicates too")
    check.add_argument("--json", metavar="FILE", help="write the report as JSON")
    check.add_argument("--fail-on-leak", action="store_true", help="exit 1 when TRAIN has an exact duplicate")
    check.set_defaults(func=run_check)

    split = commands.add_parser("split", help="scaffold split (molecules) or identity-cluster split (proteins)")
    split.add_argument("input", help="a QA JSONL")
    split.add_argument("--by", required=True, choices=("scaffold", "identity"))
    split.add_argument("--fractions", default="0.8,0.1,0.1", help="train,valid,test (default 0.8,0.1,0.1)")
    split.add_argument("--identity", type=float, default=0.5, help="cluster proteins above this identity")
    split.add_argument("--seed", type=int, default=0)
    split.add_argument("-o", "--output-dir", required=True, help="writes train/valid/test.jsonl here")
    split.set_defaults(func=run_split)


def _finish(summary, args, unit: str) -> int:
    from biomedgpt.io import atomic_write_text

    if not summary.balanced:  # a builder bug, never a user error: say so loudly
        raise AssertionError(f"counts do not add up: {summary.as_dict()}")
    print(f"{args.output}: {summary.format(unit)}")
    if args.rejects:
        print(f"rejects: {args.rejects}")
    if args.summary_json:
        atomic_write_text(args.summary_json, json.dumps(summary.as_dict(), indent=2) + "\n")
    return 0


def run_molecule_qa(args) -> int:
    from biomedgpt.data.molecule_qa import DEFAULT_QUESTION, build_molecule_qa

    summary = build_molecule_qa(args.inputs, args.output, sources=args.source or None,
                                question=args.question or DEFAULT_QUESTION, exclude=args.exclude,
                                rejects_path=args.rejects, fmt=args.format, smiles_column=args.smiles_column,
                                text_column=args.text_column, id_column=args.id_column,
                                keep_duplicates=args.keep_duplicates, show_progress=args.progress)
    return _finish(summary, args, "rows")


def run_protein_qa(args) -> int:
    from biomedgpt.data.protein_qa import build_protein_qa

    tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip()) if args.tasks else None
    summary = build_protein_qa(args.inputs, args.output, fmt=args.format, source=args.source, tasks=tasks,
                               aspect=args.aspect, exclude=args.exclude, rejects_path=args.rejects,
                               keep_duplicates=args.keep_duplicates, show_progress=args.progress)
    return _finish(summary, args, "entries/rows")


def run_mcq(args) -> int:
    from biomedgpt.data.mcq import build_mcq

    summary = build_mcq(args.dataset, args.inputs, args.output, exclude=args.exclude, rejects_path=args.rejects,
                        index_base=args.index_base, show_progress=args.progress)
    return _finish(summary, args, "questions")


def run_check(args) -> int:
    from biomedgpt.data.leakage import check_leakage, load_items, write_filtered
    from biomedgpt.errors import UserError
    from biomedgpt.io import atomic_write_text

    if args.against:
        train_paths, test_paths = args.files, args.against
    elif len(args.files) == 2:
        train_paths, test_paths = args.files[:1], args.files[1:]
    else:
        raise UserError("give TRAIN TEST, or TRAIN... --against TEST...")
    if args.filtered and len(train_paths) != 1:
        raise UserError("--filtered needs exactly one TRAIN file")
    train = [item for path in train_paths for item in load_items(path)]
    test = [item for path in test_paths for item in load_items(path)]
    report = check_leakage(train, test, tanimoto=args.tanimoto, min_identity=args.identity, align=args.align)
    print(f"TRAIN: {', '.join(train_paths)}\nTEST: {', '.join(test_paths)}")
    print(report.format())
    if args.json:
        atomic_write_text(args.json, json.dumps(report.as_dict(), indent=2) + "\n")
    if args.filtered:
        drop = report.leaking | (report.near if args.drop_near else set())
        counts = write_filtered(train_paths[0], args.filtered, drop)
        print(f"{args.filtered}: kept {counts['kept']:,}, dropped {counts['dropped']:,}")
    if args.fail_on_leak and report.leaking:
        print(f"leak: {len(report.leaking):,} TRAIN items have an exact duplicate in TEST", file=sys.stderr)
        return 1
    return 0


def run_split(args) -> int:
    from biomedgpt.data.splits import split_file
    from biomedgpt.errors import UserError

    try:
        fractions = tuple(float(f) for f in args.fractions.split(","))
    except ValueError:
        raise UserError(f"--fractions must be three numbers like 0.8,0.1,0.1, got {args.fractions!r}") from None
    counts = split_file(args.input, args.output_dir, by=args.by, fractions=fractions,
                        min_identity=args.identity, seed=args.seed)
    print(", ".join(f"{name}: {count:,}" for name, count in counts.items()))
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m biomedgpt.data.cli …`: the same subcommands without loading the other areas' CLIs."""
    from biomedgpt.errors import UserError

    parser = argparse.ArgumentParser(prog="python -m biomedgpt.data.cli", description="biomedgpt data commands")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["data", *(sys.argv[1:] if argv is None else argv)])
    try:
        return int(args.func(args) or 0)
    except UserError as err:
        print(f"biomedgpt data {args.data_command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
