"""Fuzzing the live server from its own OpenAPI document: 1,050 generated requests, not one 5xx.

- schemathesis, negative mode (bodies and queries that violate the schema): chat 200, embeddings 100, depict 100;
- schemathesis, positive mode (schema-valid bodies with odd values, run through the model): chat 100;
- hypothesis: raw bytes and arbitrary JSON thrown at both POST endpoints: 550.
Half of the JSON-object bodies get the right `model` name, so the fuzz reaches past the model check into
content parts, limits, SMILES and sequence parsing, and generation.
"""

from __future__ import annotations

import json

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.core import NOT_SET
from serve_helpers import MODEL_ID


def fuzz_settings(examples: int) -> settings:
    # derandomize: the same cases every run (CI stays reproducible); no example database, no shrinking phase.
    return settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                    suppress_health_check=list(HealthCheck), phases=[Phase.generate])


@pytest.fixture(scope="module")
def api(live_server):
    document = httpx.get(f"{live_server.url}/openapi.json", headers=live_server.headers).json()
    client = httpx.Client(base_url=live_server.url, headers=live_server.headers, timeout=60)
    yield schemathesis.openapi.from_dict(document), client
    client.close()


def _send(client: httpx.Client, case, fix_model: bool, positive: bool) -> httpx.Response:
    body, headers = case.body, {}
    if case.media_type:
        headers["content-type"] = case.media_type
    if isinstance(body, dict):
        if fix_model:
            body = {**body, "model": MODEL_ID}
        if positive and case.path.endswith("/chat/completions"):
            body = {**body, "max_tokens": 1, "max_completion_tokens": None}  # keep generation short
    content = None if body is NOT_SET else body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.request(case.method, case.formatted_path, params=case.query or None, content=content,
                          headers=headers)


def _fuzz(api, method: str, path: str, mode: GenerationMode, examples: int) -> list[int]:
    schema, client = api
    statuses: list[int] = []

    @fuzz_settings(examples)
    @given(case=schema[path][method].as_strategy(generation_mode=mode), fix_model=st.booleans())
    def run(case, fix_model):
        response = _send(client, case, fix_model, positive=mode == GenerationMode.POSITIVE)
        statuses.append(response.status_code)
        assert response.status_code < 500, (case.body, case.query, response.text)

    run()
    return statuses


@pytest.mark.parametrize(("method", "path", "mode", "examples"), [
    ("POST", "/v1/chat/completions", GenerationMode.NEGATIVE, 200),
    ("POST", "/v1/embeddings", GenerationMode.NEGATIVE, 100),
    ("GET", "/depict", GenerationMode.NEGATIVE, 100),
    ("POST", "/v1/chat/completions", GenerationMode.POSITIVE, 100),
])
def test_schema_fuzz_never_5xx(api, method, path, mode, examples):
    statuses = _fuzz(api, method, path, mode, examples)
    assert len(statuses) >= examples * 0.9, f"only {len(statuses)} cases ran"
    assert any(400 <= status < 500 for status in statuses)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)


def test_raw_bytes_and_arbitrary_json_never_5xx(api):
    _, client = api
    count = []

    @fuzz_settings(550)
    @given(path=st.sampled_from(["/v1/chat/completions", "/v1/embeddings"]),
           payload=st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()))
    def run(path, payload):
        response = client.post(path, content=payload, headers={"content-type": "application/json"})
        count.append(response.status_code)
        assert response.status_code < 500, (payload, response.text)
        assert response.status_code == 200 or "error" in response.json()

    run()
    assert len(count) >= 500
