"""The `biomedgpt` command line. Each area of the package registers its own subcommands.

Subcommand modules expose `register(subparsers)`; they keep heavy imports (torch, transformers, RDKit)
inside the handler functions so that `biomedgpt --help` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from biomedgpt.errors import UserError

# One line per area; each module defines `register(subparsers: argparse._SubParsersAction) -> None`.
COMMAND_MODULES = (
    "biomedgpt.inference_cli",
    "biomedgpt.serve.cli",
    "biomedgpt.batch_cli",
    "biomedgpt.train.cli",
    "biomedgpt.evaluate.cli",
    "biomedgpt.data.cli",
    "biomedgpt.model.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="biomedgpt",
        description="BioMedGPT: ask questions about molecules (SMILES) and proteins (sequences) in free text.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show debug logs")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        result = args.func(args)
    except UserError as err:
        print(f"biomedgpt {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
