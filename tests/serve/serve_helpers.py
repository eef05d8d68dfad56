"""Shared helpers of the server tests (constants, a live-server handle, a small retrieval index)."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

API_KEY = "test-key-0123456789"
MODEL_ID = "tiny"
ASPIRIN = "CC(=O)Oc1ccccc1C(=O)O"
INSULIN_B = "FVNQHLCGSHLVEALYLVCGERGFFYTPKT"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LiveServer:
    url: str
    pid: int
    api_key: str

    @property
    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.api_key}"}

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")


def build_index(path: Path) -> Path:
    """A small real retrieval index: three known molecules and one protein with annotations."""
    from biomedgpt.data.records import QARecord
    from biomedgpt.retrieval import RetrievalIndex

    records = [
        QARecord("aspirin", "Describe this molecule.", "Aspirin is a salicylate used as an analgesic.",
                 molecules=[ASPIRIN]),
        QARecord("salicylic-acid", "Describe this molecule.", "Salicylic acid is a plant hormone.",
                 molecules=["OC(=O)c1ccccc1O"]),
        QARecord("ethanol", "Describe this molecule.", "Ethanol is a primary alcohol.", molecules=["CCO"]),
        QARecord("insulin-b", "What does this protein do?", "Insulin B chain: glucose uptake.", proteins=[INSULIN_B]),
    ]
    RetrievalIndex.from_records(records).save(path)
    return path
