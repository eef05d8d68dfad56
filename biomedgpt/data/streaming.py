"""What every dataset builder shares: bounded line reading, honest counting, rejects files, progress bars.

Builders stream their input (uniprot_sprot.dat is ~3 GB; PubChem description dumps are larger), so memory must
not grow with the input. The invariant every build keeps is `read == written + sum(skipped.values())`: a bad
record is never fatal and never silently lost — it is counted under a reason and, with a rejects file, written
out with that reason, its file and its line number.
"""

from __future__ import annotations

import gzip
import json
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from biomedgpt.errors import UserError

MAX_LINE_BYTES = 1 << 20  # 1 MiB: far above any real record line, far below what would hurt memory
REJECT_TEXT_CHARS = 2000  # a rejected record's text is kept up to this length in the rejects file
_READ_CHUNK = 1 << 16


def open_binary(path: str | Path) -> IO[bytes]:
    """Open a file for binary reading, transparently un-gzipping it when it starts with the gzip magic bytes."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no such file: {path}")
    handle = open(path, "rb")
    if handle.peek(2)[:2] == b"\x1f\x8b":
        handle.close()
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return handle


@dataclass
class Line:
    """One physical line: `text` without its line ending, or `error` when it is too long or not UTF-8."""

    number: int
    text: str
    error: str | None = None


def read_lines(path: str | Path, max_line_bytes: int = MAX_LINE_BYTES) -> Iterator[Line]:
    """Yield the lines of a (possibly gzipped) text file with bounded memory.

    A line longer than `max_line_bytes` is not held in memory: its first bytes are kept (for the rejects file),
    the rest is skipped, and it comes back with an `error`. Non-UTF-8 bytes also give an `error` (with the text
    decoded leniently), so one bad line never stops the caller.
    """
    with open_binary(path) as handle:
        number = 0
        while True:
            raw = handle.readline(max_line_bytes + 1)
            if not raw:
                return
            number += 1
            error = None
            if len(raw) > max_line_bytes and not raw.endswith(b"\n"):
                size = len(raw)
                while True:  # drain the rest of the over-long line in fixed-size pieces
                    rest = handle.readline(_READ_CHUNK)
                    size += len(rest)
                    if not rest or rest.endswith(b"\n"):
                        break
                raw = raw[:REJECT_TEXT_CHARS]
                error = f"line too long ({size:,} bytes; the limit is {max_line_bytes:,})"
            raw = raw.rstrip(b"\r\n")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                text = raw.decode("utf-8", errors="replace")
                error = error or f"not valid UTF-8 (byte {raw[err.start]:#04x} at column {err.start + 1})"
            yield Line(number, text, error)


@dataclass
class BuildSummary:
    """Counts for one build. `read` counts input items (rows, entries, questions); each ends up either
    `written` (it produced at least one output record) or skipped under exactly one reason."""

    read: int = 0
    written: int = 0
    records: int = 0  # output records; a UniProt entry can give up to four, so this may exceed `written`
    skipped: Counter = field(default_factory=Counter)

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())

    @property
    def balanced(self) -> bool:
        return self.read == self.written + self.skipped_total

    def as_dict(self) -> dict[str, Any]:
        return {"read": self.read, "written": self.written, "records": self.records,
                "skipped": dict(sorted(self.skipped.items())), "skipped_total": self.skipped_total}

    def format(self, unit: str = "items") -> str:
        lines = [f"read {self.read:,} {unit}: written {self.written:,} ({self.records:,} records), "
                 f"skipped {self.skipped_total:,}"]
        lines += [f"  skipped {count:,}: {reason}" for reason, count in self.skipped.most_common()]
        return "\n".join(lines)


class Rejects(AbstractContextManager):
    """Counts rejected items in a `BuildSummary` and, when given a path, writes each one as a JSON line
    `{"file", "line", "reason", "text"}` (text capped at REJECT_TEXT_CHARS). Written atomically on close."""

    def __init__(self, summary: BuildSummary, path: str | Path | None = None) -> None:
        self.summary = summary
        self.path = Path(path) if path else None
        self._atomic = None
        self._handle: IO[str] | None = None

    def __enter__(self) -> Rejects:
        if self.path is not None:
            from biomedgpt.io import atomic_path

            self._atomic = atomic_path(self.path)
            tmp = self._atomic.__enter__()
            self._handle = open(tmp, "w", encoding="utf-8")
        return self

    def __exit__(self, *exc_info) -> None:
        if self._handle is not None:
            self._handle.close()
            self._atomic.__exit__(*exc_info)

    def reject(self, reason: str, where: tuple[str, int] | None = None, text: str = "",
               detail: str | None = None) -> None:
        """Count one skipped item under `reason` (a short category); `detail` (e.g. RDKit's message) goes to
        the rejects file only, so that the summary groups similar failures together."""
        self.summary.skipped[reason] += 1
        if self._handle is not None:
            entry = {"file": where[0] if where else None, "line": where[1] if where else None,
                     "reason": reason if detail is None else f"{reason}: {detail}",
                     "text": text[:REJECT_TEXT_CHARS]}
            if len(text) > REJECT_TEXT_CHARS:
                entry["text_truncated_from"] = len(text)
            self._handle.write(json.dumps(entry, ensure_ascii=False) + "\n")


def progress(description: str, unit: str, enabled: bool | None = None):
    """A tqdm bar on stderr showing items/s; by default shown only when stderr is a terminal."""
    from tqdm import tqdm

    if enabled is None:
        enabled = sys.stderr.isatty()
    return tqdm(desc=description, unit=f" {unit}", unit_scale=True, disable=not enabled, file=sys.stderr,
                mininterval=0.5)
