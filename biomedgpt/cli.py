"""The `biomedgpt` command line. Each area of the package registers its own subcommands.

Subcommand modules expose `register(subparsers)`; they keep heavy imports (torch, transformers, RDKit)
inside the handler functions so that `biomedgpt --help` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
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
    """Run one command; `argv` None reads the process's command line (and lets commands that opt in end the
    process at once, see `_exit_now`), a list runs in-process and returns the exit status (tests)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        status = int(args.func(args) or 0)
    except UserError as err:
        print(f"biomedgpt {args.command}: error: {err}", file=sys.stderr)
        status = 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        status = 130
    if argv is None and getattr(args, "exit_at_once", False):
        _exit_now(status)
    return status


def _exit_now(status: int) -> None:
    """End the process without Python's interpreter teardown, which after `import torch` takes 0.5-0.8 s on a
    2-core CPU (measured: a bare `import torch` script, 0.55-0.85 s from its last line to the process's end;
    0.09 s with this). Only for commands that set `exit_at_once` (`ask`, `chat`): they write nothing but
    stdout and stderr, which are flushed here, and hold no files or workers that need closing."""
    logging.shutdown()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:  # the reader went away (`biomedgpt ask ... | head -1`): nothing left to tell it
        status = status or 1
    os._exit(status)


if __name__ == "__main__":
    sys.exit(main())
