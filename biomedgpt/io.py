"""Small file helpers shared by checkpoints, data builders and batch jobs: atomic writes and checksums."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename, on error it is
    removed. A reader therefore sees either the old file or the complete new one, never a partial write."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty staging folder beside `path`; on success it replaces `path` (any old folder is removed
    first), on error it is deleted. Readers never see a half-written model folder."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield staging
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def write_checksums(directory: str | Path, names: list[str], filename: str = "SHA256SUMS") -> None:
    """Write `sha256  name` lines (the `sha256sum` format) for files in `directory`."""
    directory = Path(directory)
    lines = [f"{sha256_file(directory / name)}  {name}" for name in sorted(names)]
    atomic_write_text(directory / filename, "\n".join(lines) + "\n")


def verify_checksums(directory: str | Path, filename: str = "SHA256SUMS") -> list[str]:
    """Check every file listed in `directory/SHA256SUMS`; return the names checked. Raises ValueError on a
    mismatch or a missing file, naming it. No checksum file means nothing to verify."""
    directory = Path(directory)
    listing = directory / filename
    if not listing.is_file():
        return []
    checked = []
    for line in listing.read_text().splitlines():
        if not line.strip():
            continue
        expected, name = line.split(maxsplit=1)
        name = name.lstrip("*")
        if not (directory / name).is_file():
            raise ValueError(f"{directory}: {name} is listed in {filename} but missing")
        actual = sha256_file(directory / name)
        if actual != expected:
            raise ValueError(f"{directory / name}: sha256 {actual} does not match {filename} ({expected})")
        checked.append(name)
    return checked
