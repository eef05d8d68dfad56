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
    """Run one command in this process and return its exit status (what tests and other Python code call;
    `argv` None reads the process's command line)."""
    return _run(argv)[0]


def entry() -> None:
    """The `biomedgpt` program (console script, `python -m biomedgpt`): `main`, then the process ends. Commands
    that set `exit_at_once` end it with `_exit_now`, unless a profiler or tracer (cProfile, coverage) is attached,
    which writes its data at the normal exit; commands that set `fast_start` (`ask`, `chat`) defer the parts of
    `import torch` that inference never runs (`biomedgpt.startup`)."""
    status, args = _run(None, program=True)
    if getattr(args, "exit_at_once", False) and sys.getprofile() is None and sys.gettrace() is None:
        _exit_now(status)
    sys.exit(status)


def _run(argv: Sequence[str] | None, program: bool = False) -> tuple[int, argparse.Namespace]:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0, args
    if program and getattr(args, "fast_start", False):
        # Before the command imports torch: a new process that answers one question (`biomedgpt.startup`).
        from biomedgpt.startup import defer_torch_extras

        defer_torch_extras()
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
    return status, args


def _exit_now(status: int) -> None:
    """End the process without Python's interpreter teardown, which after `import torch` takes 0.5-0.8 s on a
    2-core CPU (measured: a bare `import torch` script, 0.55-0.85 s from its last line to the process's end;
    0.09 s with this). Only for commands that set `exit_at_once` (`ask`, `chat`), whose every write to disk (the
    compiled decode step, the converted LM, downloads) has finished, atomically, before the command returns and
    which leave no thread behind that writes: only stdout and stderr are flushed here. A command that starts
    background writers must not set it."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except OSError:  # e.g. the reader went away (`biomedgpt ask ... | head -c 1`); Python exits 120 then
            status = status or 120
    os._exit(status)


if __name__ == "__main__":
    entry()
