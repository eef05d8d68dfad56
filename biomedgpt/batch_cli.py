"""`biomedgpt batch`: answer every row of a CSV / JSONL file (see `biomedgpt.batch` for the formats)."""

from __future__ import annotations

import sys


def register(subparsers) -> None:
    from biomedgpt.inference_cli import _add_model_options

    parser = subparsers.add_parser(
        "batch", help="answer a CSV or JSONL file of questions (resumable)",
        description="Answer every row of --input (.jsonl: {id, question, molecules, proteins}; .csv with a "
                    "'question' column and optional id, molecules, proteins, entities separated by ';') into "
                    "--output (.jsonl, one record per input row, in order). Rows that cannot be answered become "
                    "error records. An interrupted run resumes from OUTPUT.partial when re-run.")
    parser.add_argument("--input", required=True, help="questions, .jsonl or .csv")
    parser.add_argument("--output", required=True, help="answers, .jsonl (written atomically at the end)")
    parser.add_argument("--batch-size", type=int, default=8, help="rows per generate call (default 8)")
    parser.add_argument("--restart", action="store_true", help="ignore the answers of an interrupted run")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_model_options(parser)
    parser.set_defaults(func=run_batch_command)


def run_batch_command(args) -> int:
    from pathlib import Path

    from biomedgpt.errors import UserError

    if not Path(args.input).is_file():  # before the heavy imports: a typo should fail at once
        raise UserError(f"input file not found: {args.input}")
    from biomedgpt.batch import read_rows, run_batch
    from biomedgpt.inference import load_model, recommended_decoding
    from biomedgpt.inference_cli import _quiet_transformers, _settings

    if Path(args.output).suffix.lower() != ".jsonl":
        raise UserError(f"--output must be a .jsonl file, got {args.output}")
    if Path(args.output).resolve() == Path(args.input).resolve():
        raise UserError("--output must differ from --input")
    _settings(args)
    read_rows(args.input)  # fail fast on bad flags or a missing or malformed file, before loading the model
    _quiet_transformers()
    model = load_model(args.model)
    settings = _settings(args, recommended_decoding(model))
    try:
        summary = run_batch(model, args.input, args.output, settings, batch_size=args.batch_size,
                            restart=args.restart, progress=not args.no_progress)
    except KeyboardInterrupt:
        print(f"interrupted: finished rows are kept in {args.output}.partial; run the same command again to "
              "resume", file=sys.stderr)
        raise
    resumed = f", {summary.resumed} from an earlier run" if summary.resumed else ""
    print(f"{summary.rows} rows: {summary.answered} answered, {summary.errors} errors{resumed} -> {args.output}",
          file=sys.stderr)
    return 0
