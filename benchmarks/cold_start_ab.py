"""Cold starts of one or more checkouts, interleaved: new `biomedgpt ask` processes (aspirin question, one new
token), timed to the answer's first byte on stdout and to the process's end.

This machine's timings drift by ±0.5 s between runs, so an A/B comparison must alternate the trees. Each tree's own
`biomedgpt` package is imported from its working directory, all with this checkout's `.venv`:

    git worktree add /tmp/before <commit>
    python benchmarks/cold_start_ab.py /tmp/before . --repeats 8 > benchmarks/results/session10/cold_start_ab.txt

(Until session 9 this was `cold_start_ab.sh`, which timed the process's end only.)
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

QUESTION = ["ask", "--evidence", "0", "--max-new-tokens", "1", "--smiles", "CC(=O)OC1=CC=CC=C1C(=O)O",
            "What is this molecule?"]


def cold_start(tree: Path, python: str) -> tuple[float, float]:
    """(seconds to the first byte of the answer, seconds to the process's end) of one new process. Its stdout is
    unbuffered, so the first byte is timed when the answer is printed, not when a buffer is flushed; its stderr
    goes to a file (a pipe nobody reads could fill up and stall it)."""
    with tempfile.TemporaryFile() as errors:
        start = time.perf_counter()
        process = subprocess.Popen([python, "-m", "biomedgpt.cli", *QUESTION], cwd=tree, stdout=subprocess.PIPE,
                                   stderr=errors, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        first = process.stdout.read(1)
        first_at = time.perf_counter() - start
        process.communicate()
        end_at = time.perf_counter() - start
        if process.returncode != 0 or not first:
            errors.seek(0)
            raise SystemExit(f"biomedgpt ask failed in {tree} (exit {process.returncode}):\n"
                             f"{errors.read().decode(errors='replace')}")
    return first_at, end_at


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trees", nargs="+", type=Path, help="checkouts to compare (their biomedgpt packages)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--python", default=str(Path(__file__).resolve().parent.parent / ".venv" / "bin" / "python"))
    args = parser.parse_args()
    trees = [tree.resolve() for tree in args.trees]
    times: dict[Path, list[tuple[float, float]]] = {tree: [] for tree in trees}
    for _ in range(args.repeats):
        for tree in trees:
            first, end = cold_start(tree, args.python)
            times[tree].append((first, end))
            print(f"{tree} first byte {first:.3f} s, end {end:.3f} s", flush=True)
    for tree, values in times.items():
        firsts, ends = [v[0] for v in values], [v[1] for v in values]
        print(f"# {tree}: first byte best {min(firsts):.2f} s, median {statistics.median(firsts):.2f} s; "
              f"process end best {min(ends):.2f} s, median {statistics.median(ends):.2f} s ({len(values)} runs)")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
