"""UniProtQA-style protein QA records: from UniProt flat files, FAPM GO-name tables and DeepLoc location sets.

From each Swiss-Prot entry (uniprot_sprot.dat, ~570k entries, ~3 GB; gzipped or not) up to four questions, as in
BioMedGPT's UniProtQA: function (CC FUNCTION), official name (DE RecName Full=), protein family (CC SIMILARITY
"Belongs to the … family") and subcellular location (CC SUBCELLULAR LOCATION). Evidence tags ({ECO:…}, and the
older "(By similarity)" / "(Potential)" / "(Probable)") and literature references ("(PubMed:…)") are stripped.

The flat-file reader streams: it holds one entry at a time (bounded: an over-long line or entry is skipped, not
loaded), decodes only that entry, and extracts the few line types it needs with regular expressions, so memory
stays flat and throughput is in the thousands of entries per second. It reads both the current line formats
(DE RecName/AltName, ECO tags) and the pre-2008 ones (a one-line DE with parenthesised alternative names).
Entries are not de-duplicated: a UniProt primary accession is unique by construction.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from biomedgpt.data.records import QARecord, write_jsonl
from biomedgpt.data.streaming import (
    MAX_LINE_BYTES,
    BuildSummary,
    Rejects,
    open_binary,
    progress,
)
from biomedgpt.errors import InvalidSequenceError, UserError

MAX_ENTRY_BYTES = 64 << 20  # the largest Swiss-Prot entries (titins) are a few MB
NO_LENGTH_CAP = 1 << 40  # keep full sequences in the data; encoders crop at their own limit

FLAT_FILE_TASKS = ("function", "name", "family", "location")
QUESTIONS = {
    "function": "What is the function of this protein?",
    "name": "What is the official name of this protein?",
    "family": "Which protein family does this protein belong to?",
    "location": "What is the subcellular location of this protein?",
}

_ECO = re.compile(r"\s*\{ECO:[^}]*\}")
_REF = r"(?:PubMed:\d+|Ref\.\s?\d+|PMID:\s?\d+)"
_LITERATURE = re.compile(rf"\s*\({_REF}(?:,\s*{_REF})*\)")
_OLD_EVIDENCE = re.compile(r"\s*\((?:By similarity|Potential|Probable|Curated)\)")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([.,;:])")
_DOUBLE_STOP = re.compile(r"\.(?:\s*\.)+")  # "family. {ECO:…}." leaves "family.." behind
_NEW_DE = re.compile(r"^\s*(?:RecName|AltName|SubName|Contains|Includes|Flags):")


@dataclass
class FlatEntry:
    """The parts of one flat-file entry the QA builder needs. `problem` is set when the entry is malformed."""

    first_line: int
    accession: str = ""
    entry_name: str = ""
    description: list[str] = field(default_factory=list)  # DE line texts
    comments: list[str] = field(default_factory=list)  # CC line texts
    organism: str = ""
    sequence: str = ""
    problem: str | None = None
    raw: str = ""  # the start of the entry, for the rejects file


def clean_text(text: str) -> str:
    """Strip evidence tags and literature references and tidy the spacing they leave behind."""
    if "{" in text:
        text = _ECO.sub("", text)
    if "(" in text:
        text = _OLD_EVIDENCE.sub("", _LITERATURE.sub("", text))
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", " ".join(text.split()))
    return _DOUBLE_STOP.sub(".", text) if ".." in text or ". ." in text else text


def join_wrapped(pieces: list[str]) -> str:
    """Join wrapped flat-file lines: UniProt breaks lines at spaces, or right after a hyphen (no space then)."""
    out = ""
    for piece in (p.strip() for p in pieces):
        if not piece:
            continue
        if out and not (out.endswith("-") and len(out) > 1 and out[-2] != " "):
            out += " "
        out += piece
    return out


_BLOCK_BYTES = 1 << 22


def _terminator(buffer: bytes, start: int) -> int:
    """Index of the next '//' that starts a line at or after `start`, or -1."""
    if buffer[start:start + 2] == b"//":
        return start
    found = buffer.find(b"\n//", start)
    return found + 1 if found >= 0 else -1


def _entry_problem(chunk: bytes, first: int) -> str | None:
    if len(chunk) <= MAX_LINE_BYTES:  # the common case: no line can be too long
        return None
    if len(chunk) > MAX_ENTRY_BYTES:
        return f"entry is larger than {MAX_ENTRY_BYTES:,} bytes"
    for offset, line in enumerate(chunk.split(b"\n")):
        if len(line) > MAX_LINE_BYTES:
            return f"line {first + offset} is longer than {MAX_LINE_BYTES:,} bytes"
    return None


def _raw_entries(path: Path) -> Iterator[tuple[int, bytes, str | None]]:
    """Split a flat file into entries at '//' lines: (first line number, raw bytes, problem or None).

    Reads 4 MB blocks and cuts them with bytes.find (no per-line Python work). At most one entry plus one block
    is held: an entry that grows past MAX_ENTRY_BYTES is dropped as it streams by and reported as too large."""
    with open_binary(path) as handle:
        buffer, line, eof = b"", 1, False
        oversized: tuple[int, bytes] | None = None  # (first line, start) of an entry being skipped
        while not eof:
            block = handle.read(_BLOCK_BYTES)
            eof = not block
            buffer += block
            start = 0
            while (end := _terminator(buffer, start)) >= 0:
                stop = buffer.find(b"\n", end)
                if stop < 0 and not eof:
                    break  # the '//' line is not complete yet
                stop = len(buffer) if stop < 0 else stop
                chunk = buffer[start:end]
                body = chunk.lstrip(b" \t\r\n")
                first = line + chunk.count(b"\n", 0, len(chunk) - len(body))
                if oversized is not None:
                    yield oversized[0], oversized[1], f"entry is larger than {MAX_ENTRY_BYTES:,} bytes"
                    oversized = None
                elif body:
                    problem = _entry_problem(body, first)
                    yield first, (body[:2000] if problem else body), problem
                line += chunk.count(b"\n") + 1
                start = stop + 1
            buffer = buffer[start:]
            if len(buffer) > MAX_ENTRY_BYTES:  # no terminator within the limit: skip the rest of this entry
                body = buffer.lstrip(b" \t\r\n")
                if oversized is None:
                    oversized = (line + buffer.count(b"\n", 0, len(buffer) - len(body)), body[:2000])
                newline = buffer.rfind(b"\n")
                # keep a trailing "\n" or "\n/" so that a '//' line split across blocks is still found; a
                # placeholder byte otherwise, so that the next block is never taken to start a line
                tail = buffer[newline:] if newline >= len(buffer) - 2 else b"x"
                line += buffer.count(b"\n", 0, len(buffer) - len(tail) if tail != b"x" else len(buffer))
                buffer = tail
        body = buffer.lstrip(b" \t\r\n")
        if oversized is not None:
            yield oversized[0], oversized[1], f"entry is larger than {MAX_ENTRY_BYTES:,} bytes"
        elif body:
            first = line + buffer.count(b"\n", 0, len(buffer) - len(body))
            yield first, body[:2000], "truncated entry: the file ends before its '//' line"


_SQ = re.compile(r"SQ   SEQUENCE\s+(\d+) AA;")


def _wanted_lines(text: str, sq_at: int) -> list[str]:
    """The header lines (ID … OX, before the references) and the CC block: the line order of the format puts
    every line the QA needs there, so references, DR, KW and FT lines (most of an entry) are never split."""
    end = len(text) if sq_at < 0 else sq_at
    header_end = min((i for i in (text.find("\nRN   ", 0, end), text.find("\nCC   ", 0, end)) if i >= 0), default=end)
    lines = text[:header_end].split("\n")
    cc_at = text.find("\nCC   ", max(header_end - 1, 0), end)
    if cc_at >= 0:
        cc_end = text.find("\nDR   ", cc_at, end)
        block = text[cc_at + 1:end if cc_end < 0 else cc_end].split("\n")
        lines += [line for line in block if line.startswith("CC   ")]
    return lines


def parse_entry(first: int, blob: bytes, problem: str | None = None) -> FlatEntry:
    """Parse the raw bytes of one entry (without its '//'). Only the lines before SQ are split, and only the
    five line types the QA needs are kept."""
    try:
        text = blob.decode("utf-8")
    except UnicodeDecodeError as err:
        line = first + blob[: err.start].count(b"\n")
        text = blob.decode("utf-8", errors="replace")
        problem = problem or f"not valid UTF-8 (byte {blob[err.start]:#04x} on line {line})"
    entry = FlatEntry(first_line=first, problem=problem, raw=text[:2000])
    if problem:
        return entry
    if not text.startswith("ID   "):
        entry.problem = "entry does not start with an ID line"
        return entry
    sq_at = text.rfind("\nSQ   ")  # near the end: searching backwards skips the features
    organism: list[str] = []
    for line in _wanted_lines(text, sq_at):
        code = line[:5]
        if code == "CC   ":
            entry.comments.append(line[5:].rstrip("\r"))
        elif code == "DE   ":
            entry.description.append(line[5:].rstrip("\r"))
        elif code == "AC   " and not entry.accession:
            entry.accession = line[5:].split(";")[0].strip()
        elif code == "OS   ":
            organism.append(line[5:])
        elif code == "ID   ":
            entry.entry_name = (line[5:].split() or [""])[0]
    entry.organism = join_wrapped(organism).rstrip(".")
    sq = _SQ.match(text, sq_at + 1) if sq_at >= 0 else None
    if not entry.accession:
        entry.problem = "no AC (accession) line"
    elif sq is None:
        entry.problem = "no SQ (sequence) line"
    else:
        header_end = text.find("\n", sq.end())
        entry.sequence = "".join(text[header_end:].split()) if header_end >= 0 else ""
        if len(entry.sequence) != int(sq.group(1)):
            entry.problem = (f"sequence length {len(entry.sequence)} does not match the SQ line "
                             f"({sq.group(1)} AA): truncated or corrupted entry")
    return entry


def iter_flat_entries(path: str | Path) -> Iterator[FlatEntry]:
    """Stream the entries of a UniProt flat file (.dat/.txt, optionally gzipped); malformed ones have `problem`."""
    for first, blob, problem in _raw_entries(Path(path)):
        yield parse_entry(first, blob, problem)


QA_TOPICS = frozenset({"FUNCTION", "SIMILARITY", "SUBCELLULAR LOCATION"})


def comment_blocks(comments: list[str], topics: frozenset[str] | None = None) -> list[tuple[str, str]]:
    """CC lines → [(topic, joined text)], e.g. ("FUNCTION", "Adapter protein …"); the copyright box is dropped.
    With `topics`, other blocks (interactions, sequence cautions, …) are skipped without being joined."""
    blocks: list[tuple[str, list[str]]] = []
    current: list[str] | None = None
    for line in comments:
        if line.startswith("-!- "):
            topic, _, rest = line[4:].partition(":")
            topic = topic.strip().upper()
            current = [rest] if topics is None or topic in topics else None
            if current is not None:
                blocks.append((topic, current))
        elif line.startswith("---") or not line.startswith(" "):
            current = None  # the "Copyrighted by the UniProt Consortium" box
        elif current is not None:
            current.append(line)
    return [(topic, join_wrapped(parts)) for topic, parts in blocks]


def official_name(description: list[str]) -> str | None:
    """The recommended name: the top-level `RecName: Full=` (current format), or the old one-line DE text
    without its parenthesised alternative names, EC numbers, (Fragment) flags and [Includes:/Contains:] parts."""
    if any(_NEW_DE.match(line) for line in description):
        for line in description:
            if line.startswith("RecName: Full="):  # child names (under Contains:/Includes:) are indented
                return clean_text(line[len("RecName: Full="):].rstrip(";")) or None
        return None
    text = join_wrapped(description).strip().rstrip(".")
    text = re.split(r"\s\[(?:Includes|Contains):", text)[0]
    depth, cut = 0, len(text)
    for index, char in enumerate(text):
        if char == "(" and depth == 0 and index > 0 and text[index - 1] == " ":
            cut = index
            break
        depth += (char == "(") - (char == ")")
    return clean_text(text[:cut]) or None


def entry_answers(entry: FlatEntry) -> dict[str, str]:
    """{task: answer} for the tasks this entry can answer (function, name, family, location)."""
    functions, families, locations = [], [], []
    for topic, text in comment_blocks(entry.comments, QA_TOPICS):
        if topic == "FUNCTION":
            functions.append(clean_text(text))
        elif topic == "SIMILARITY" and text.strip().startswith("Belongs to the"):
            families.append(clean_text(text))
        elif topic == "SUBCELLULAR LOCATION":
            locations.append(clean_text(text.split("Note=")[0]))
    answers = {"function": " ".join(functions), "name": official_name(entry.description) or "",
               "family": " ".join(families), "location": " ".join(locations)}
    return {task: answer for task, answer in answers.items() if answer}


def flat_file_records(path: str | Path, rejects: Rejects, source: str = "uniprot",
                      tasks: tuple[str, ...] = FLAT_FILE_TASKS, exclude: frozenset[str] = frozenset(),
                      bar=None) -> Iterator[QARecord]:
    """QA records from every entry of a flat file; each entry counts once (written, or skipped with a reason)."""
    from biomedgpt.modalities.protein import normalize_sequence

    summary = rejects.summary
    for entry in iter_flat_entries(path):
        summary.read += 1
        if bar is not None:
            bar.update(1)
        where = (str(path), entry.first_line)
        if entry.problem:
            rejects.reject("malformed entry", where, entry.raw, detail=entry.problem)
            continue
        try:
            sequence = normalize_sequence(entry.sequence, max_residues=NO_LENGTH_CAP)
        except InvalidSequenceError as err:
            rejects.reject("invalid sequence", where, entry.raw, detail=str(err))
            continue
        if sequence in exclude:
            rejects.reject("sequence in an excluded set", where, entry.accession)
            continue
        answers = {task: answer for task, answer in entry_answers(entry).items() if task in tasks}
        if not answers:
            rejects.reject("no annotation to ask about", where, entry.accession)
            continue
        summary.written += 1
        for task, answer in answers.items():
            summary.records += 1
            yield QARecord(id=f"{entry.accession}:{task}", source=source, proteins=[sequence],
                           question=QUESTIONS[task], answer=answer,
                           metadata={"accession": entry.accession, "task": task, "organism": entry.organism})


def build_protein_qa(inputs: list[str | Path], output: str | Path, fmt: str = "auto", source: str | None = None,
                     tasks: tuple[str, ...] | None = None, aspect: str | None = None,
                     exclude: list[str | Path] = (), rejects_path: str | Path | None = None,
                     keep_duplicates: bool = False, show_progress: bool | None = None) -> BuildSummary:
    """Build one protein QA JSONL from flat files and/or tables; returns the counts (read = written + skipped).

    `fmt`: auto | uniprot | fapm | go-tsv | deeploc. `tasks` limits the flat-file questions; `aspect` (mf/bp/cc)
    overrides the GO aspect guessed from a table's file name; `exclude` lists files (tables or QA JSONL) whose
    exact sequences must not appear in the output (the evaluation sets); `keep_duplicates` keeps table rows that
    repeat a (task, sequence) pair (for an evaluation set that must keep its published size)."""
    from biomedgpt.data.leakage import load_protein_sequences
    from biomedgpt.data.protein_tables import detect_format, table_records

    inputs = [Path(p) for p in inputs]
    for path in [*inputs, *map(Path, exclude)]:
        if not path.is_file():
            raise UserError(f"no such file: {path}")
    bad = set(tasks or ()) - set(FLAT_FILE_TASKS)
    if bad:
        raise UserError(f"unknown task(s) {sorted(bad)}; choose from {', '.join(FLAT_FILE_TASKS)}")
    excluded: set[str] = set()
    for path in exclude:
        excluded |= load_protein_sequences(path)
    formats = [detect_format(path) if fmt == "auto" else fmt for path in inputs]
    summary = BuildSummary()
    with Rejects(summary, rejects_path) as rejects, progress("protein-qa", "entries", show_progress) as bar:
        def records() -> Iterator[QARecord]:
            seen: set[bytes] = _NeverSeen() if keep_duplicates else set()
            for path, kind in zip(inputs, formats):
                stem = path.name.split(".")[0]
                name = source or (f"fapm-{stem.split('_')[0]}" if kind == "fapm" else stem)
                if kind == "uniprot":
                    yield from flat_file_records(path, rejects, source or "uniprot", tasks or FLAT_FILE_TASKS,
                                                 frozenset(excluded), bar)
                else:
                    yield from table_records(path, kind, rejects, name, aspect, frozenset(excluded), seen, bar)

        write_jsonl(output, records())
    return summary


class _NeverSeen(set):
    """A `seen` set that never remembers anything: every row counts as new (duplicates are kept)."""

    def add(self, value) -> None:
        return None
