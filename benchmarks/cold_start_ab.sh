#!/bin/bash
# Cold start of two checkouts, interleaved (this machine's timings drift by ±0.5 s between runs, so an A/B
# comparison must alternate): new `biomedgpt ask` processes, aspirin question, to the first token.
#
#   git worktree add /tmp/before <commit>
#   bash benchmarks/cold_start_ab.sh /tmp/before . 10 > benchmarks/results/session9/cold_start_ab.txt
#
# Both run with this checkout's .venv (each tree's own biomedgpt package is imported from its working directory).
set -euo pipefail
py="$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/python"
a=$(cd "$1" && pwd); b=$(cd "$2" && pwd); repeats=${3:-10}
errors=$(mktemp); trap 'rm -f "$errors"' EXIT
for _ in $(seq 1 "$repeats"); do
  for tree in "$a" "$b"; do
    start=$(date +%s.%N)
    if ! (cd "$tree" && "$py" -m biomedgpt.cli ask --evidence 0 --max-new-tokens 1 \
        --smiles "CC(=O)OC1=CC=CC=C1C(=O)O" "What is this molecule?" >/dev/null 2>"$errors"); then
      echo "biomedgpt ask failed in $tree:" >&2; cat "$errors" >&2; exit 1
    fi
    end=$(date +%s.%N)
    echo "$tree $("$py" -c "print(round($end - $start, 3))")"
  done
done | "$py" -c '
import statistics, sys
times = {}
for line in sys.stdin:
    print(line, end="")
    tree, seconds = line.rsplit(maxsplit=1)
    times.setdefault(tree, []).append(float(seconds))
for tree, values in times.items():
    print(f"# {tree}: best {min(values):.2f} s, median {statistics.median(values):.2f} s ({len(values)} runs)")
'
