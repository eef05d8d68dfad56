"""Fixtures for the server tests: a real `biomedgpt serve` process on 127.0.0.1 (tiny model, API key, a small
queue and a retrieval index), and an in-process app factory for the finer-grained checks."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time

import httpx
import pytest
from serve_helpers import API_KEY, MODEL_ID, LiveServer, build_index, free_port


@pytest.fixture(scope="session")
def live_server(tiny_model_dir, tmp_path_factory):
    """`python -m biomedgpt serve` in a subprocess, as a user starts it; stopped at the end of the session."""
    index = build_index(tmp_path_factory.mktemp("index") / "index.json.gz")
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "BIOMEDGPT_API_KEY": API_KEY}
    command = [sys.executable, "-m", "biomedgpt", "serve", "--model", str(tiny_model_dir), "--port", str(port),
               "--model-name", MODEL_ID, "--index", str(index), "--max-queue", "8", "--max-batch", "4",
               "--max-tokens-limit", "32", "--timeout", "60", "--threads", "1", "--log-level", "warning"]
    with open(log, "w") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if process.poll() is not None:
                pytest.fail(f"server exited with {process.returncode}:\n{log.read_text()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"server did not start within 90 s:\n{log.read_text()}")
            time.sleep(0.2)
        yield LiveServer(url, process.pid, API_KEY)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert "Traceback" not in log.read_text(), log.read_text()


@pytest.fixture()
def make_client(tiny_model):
    """Build the app in-process around the shared tiny model and return a started TestClient."""
    from fastapi.testclient import TestClient

    from biomedgpt.serve.app import create_app
    from biomedgpt.serve.config import ServerConfig

    clients = []

    def make(index=None, **config) -> TestClient:
        config.setdefault("model_id", MODEL_ID)
        client = TestClient(create_app(tiny_model, ServerConfig(**config), index=index))
        client.__enter__()  # runs the lifespan: starts the model worker
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)
