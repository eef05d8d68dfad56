"""Throughput and peak memory of the protein-qa builder on large synthetic UniProt flat files.

The synthetic file repeats the real Swiss-Prot sample records (../shared/data/swissprot-flatfile-samples, both
old and current formats) with a fresh primary accession per copy, so the parser does the work a real
uniprot_sprot.dat asks of it. It is written under /tmp (never into the repository) at two sizes; each build runs
in a fresh process, which reports its own peak RSS (`ru_maxrss`), so that the two sizes can be compared: memory
that stays flat while the input doubles shows that the builder streams.

    .venv/bin/python benchmarks/data_builders.py                      # 200,000 and 400,000 entries
    .venv/bin/python benchmarks/data_builders.py --sizes 20000 40000  # a quick run

Writes benchmarks/results/data_builders.{json,md}. Targets (issue 3): >= 2,000 entries/s, peak RSS < 300 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SAMPLES = Path(os.environ.get("BIOMEDGPT_SHARED_DATA", REPO.parent / "shared" / "data")) / "swissprot-flatfile-samples"
RESULTS = REPO / "benchmarks" / "results"

# Runs in the child process: import, build, then report timings and the process's own peak RSS.
CHILD = r"""
import json, resource, sys, time
start = time.perf_counter()
from biomedgpt.data.protein_qa import build_protein_qa
import biomedgpt.modalities.protein  # the builder imports it (and torch) lazily; count it in the baseline
imported = time.perf_counter()
rss_after_import = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
usage = resource.getrusage(resource.RUSAGE_SELF)
cpu_before = usage.ru_utime + usage.ru_stime
summary = build_protein_qa([sys.argv[1]], sys.argv[2], show_progress=False)
done = time.perf_counter()
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"summary": summary.as_dict(), "import_s": imported - start, "build_s": done - imported,
                  "build_cpu_s": usage.ru_utime + usage.ru_stime - cpu_before,
                  "rss_after_import_mb": rss_after_import,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def sample_entries() -> list[bytes]:
    """Every entry of the sample files, each ending with its '//' line."""
    entries = []
    for path in sorted(SAMPLES.iterdir()):
        if path.name == "SOURCE.md":
            continue
        for chunk in re.split(rb"(?m)^//[ \t]*\r?\n?", path.read_bytes()):
            if chunk.strip():
                entries.append(chunk.rstrip(b"\n") + b"\n//\n")
    return entries


def write_synthetic(path: Path, count: int, entries: list[bytes]) -> int:
    """Write `count` entries cycling through the samples, the primary accession replaced by a unique one."""
    accession = re.compile(rb"(?m)^AC   [^;\s]+;")
    with open(path, "wb", buffering=1 << 22) as handle:
        for number in range(count):
            entry = entries[number % len(entries)]
            handle.write(accession.sub(b"AC   S%07d;" % number, entry, count=1))
    return path.stat().st_size


def run_build(flat: Path, output: Path) -> dict:
    result = subprocess.run([sys.executable, "-c", CHILD, str(flat), str(output)], capture_output=True, text=True,
                            cwd=REPO, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[200_000, 400_000], help="entries per file")
    parser.add_argument("--tmp", default=tempfile.gettempdir(), help="where the synthetic files go")
    args = parser.parse_args()
    entries = sample_entries()
    rows = []
    for size in args.sizes:
        flat = Path(args.tmp) / f"biomedgpt_synthetic_sprot_{size}.dat"
        output = Path(args.tmp) / f"biomedgpt_synthetic_sprot_{size}.jsonl"
        try:
            started = time.perf_counter()
            nbytes = write_synthetic(flat, size, entries)
            print(f"wrote {size:,} entries ({nbytes / 1e9:.2f} GB) in {time.perf_counter() - started:.0f} s",
                  file=sys.stderr)
            measured = run_build(flat, output)
            summary = measured["summary"]
            row = {"entries": size, "input_gb": round(nbytes / 1e9, 3), "records_written": summary["records"],
                   "entries_written": summary["written"], "skipped": summary["skipped"],
                   "build_s": round(measured["build_s"], 1),
                   "entries_per_s": round(size / measured["build_s"]),
                   "build_cpu_s": round(measured["build_cpu_s"], 1),
                   "entries_per_cpu_s": round(size / measured["build_cpu_s"]),
                   "records_per_s": round(summary["records"] / measured["build_s"]),
                   "input_mb_per_s": round(nbytes / 1e6 / measured["build_s"], 1),
                   "rss_after_import_mb": round(measured["rss_after_import_mb"], 1),
                   "peak_rss_mb": round(measured["peak_rss_mb"], 1)}
            print(json.dumps(row), file=sys.stderr)
            rows.append(row)
        finally:
            flat.unlink(missing_ok=True)
            output.unlink(missing_ok=True)
    write_results(rows, entries)
    return 0


def write_results(rows: list[dict], entries: list[bytes]) -> None:
    machine = {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform(),
               "load_average_at_end": [round(x, 2) for x in os.getloadavg()]}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "data_builders.json").write_text(json.dumps(
        {"benchmark": "protein-qa builder on synthetic UniProt flat files", "sample_entries": len(entries),
         "command": "python benchmarks/data_builders.py --sizes " + " ".join(str(r["entries"]) for r in rows),
         "machine": machine, "runs": rows, "targets": {"entries_per_s": 2000, "peak_rss_mb": 300}}, indent=2) + "\n")
    lines = ["# protein-qa builder: throughput and peak memory", "",
             f"Synthetic flat files repeating the {len(entries)} real sample entries with fresh accessions; "
             f"each build in a fresh process. Machine: {machine['cpus']} CPUs, Python {machine['python']}, "
             f"load average at the end {machine['load_average_at_end']}.", "",
             "| entries | input GB | records written | build s (wall) | entries/s (wall) | records/s (wall) | MB/s "
             "| entries per CPU-s | RSS after imports MB | peak RSS MB |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['entries']:,} | {r['input_gb']} | {r['records_written']:,} | {r['build_s']} | "
                     f"{r['entries_per_s']:,} | {r['records_per_s']:,} | {r['input_mb_per_s']} | "
                     f"{r['entries_per_cpu_s']:,} | "
                     f"{r['rss_after_import_mb']} | {r['peak_rss_mb']} |")
    lines += ["", "Targets: >= 2,000 entries/s and peak RSS < 300 MB at both sizes. The machine is shared: wall-clock",
              "rates depend on the load average (above); entries per CPU-second do not. The RSS after imports is",
              "mostly torch, which `biomedgpt.modalities.protein` imports; the build itself adds the rest.", ""]
    (RESULTS / "data_builders.md").write_text("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
