"""The app in-process (real FastAPI app, real model worker thread, tiny model): shapes, limits, errors, auth,
CORS, embeddings, depiction, batching, queueing and timeouts."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from serve_helpers import ASPIRIN, INSULIN_B, MODEL_ID, build_index

from biomedgpt.inference import GenerationSettings, Message, build_example, generate_batch
from biomedgpt.serve.app import STATIC_DIR
from biomedgpt.serve.engine import Engine, Job


def chat(client, messages, **fields):
    return client.post("/v1/chat/completions", json={"model": MODEL_ID, "messages": messages, **fields})


def user(content):
    return [{"role": "user", "content": content}]


def block_worker(client) -> threading.Event:
    """Occupy the model worker until the returned event is set (requests then queue up behind it)."""
    release = threading.Event()
    client.app.state.engine.submit(Job("call", asyncio.new_event_loop(), function=release.wait))
    time.sleep(0.05)
    return release


def test_page_and_assets_are_local(make_client):
    client = make_client()
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for asset in ("app.js", "style.css"):
        assert client.get(f"/static/{asset}").status_code == 200
    for path in STATIC_DIR.iterdir():  # no CDN, no remote fonts: every asset is served by us
        assert "http://" not in path.read_text() and "https://" not in path.read_text(), path
    assert client.get("/static/../app.py").status_code == 404


def test_health_and_models(make_client):
    client = make_client()
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["model"] == MODEL_ID and health["auth"] is False
    assert client.get("/v1/models").json()["data"][0]["id"] == MODEL_ID
    assert client.get(f"/v1/models/{MODEL_ID}").status_code == 200
    assert client.get("/v1/models/other").json()["error"]["code"] == "model_not_found"


def test_completion_shape_and_usage(make_client, tiny_model):
    client = make_client()
    messages = [{"role": "user", "content": [{"type": "text", "text": "Describe it."},
                                             {"type": "molecule", "smiles": ASPIRIN}]}]
    response = chat(client, messages, max_tokens=6)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "chat.completion" and body["model"] == MODEL_ID and "evidence" not in body
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert body["choices"][0]["finish_reason"] in ("stop", "length")
    prompt = len(build_example(tiny_model, [Message("user", "Describe it.", [ASPIRIN])]).input_ids)
    assert body["usage"]["prompt_tokens"] == prompt
    assert body["usage"]["total_tokens"] == prompt + body["usage"]["completion_tokens"]
    assert 0 <= body["usage"]["completion_tokens"] <= 6


def test_stream_matches_plain_completion(make_client):
    client = make_client()
    fields = {"max_tokens": 12, "temperature": 1.0, "seed": 7}
    plain = chat(client, user(f"<molecule>{ASPIRIN}</molecule> What is it?"), **fields).json()
    with client.stream("POST", "/v1/chat/completions",
                       json={"model": MODEL_ID, "messages": user(f"<molecule>{ASPIRIN}</molecule> What is it?"),
                             "stream": True, "stream_options": {"include_usage": True}, **fields}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line[len("data: "):] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text.strip() == plain["choices"][0]["message"]["content"] and text.strip()
    assert chunks[-2]["choices"][0]["finish_reason"] in ("stop", "length")
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["prompt_tokens"] == plain["usage"]["prompt_tokens"]


@pytest.mark.parametrize(("body", "status", "expected"), [
    (b"{not json", 400, "not valid JSON"),
    ({"model": MODEL_ID}, 400, "messages: Field required"),
    ({"model": MODEL_ID, "messages": []}, 400, "messages"),
    ({"model": "gpt-4", "messages": user("hi")}, 404, "model 'gpt-4' not found"),
    ({"model": MODEL_ID, "messages": user("<molecule>C1CC</molecule> ?")}, 400, "invalid SMILES 'C1CC'"),
    ({"model": MODEL_ID, "messages": user([{"type": "protein", "sequence": "MKV*Q"}])}, 400, "position 4"),
    ({"model": MODEL_ID, "messages": user("<molecule>C</molecule>" * 9)}, 400, "limit is 8"),
    ({"model": MODEL_ID, "messages": user(f"<protein>{'A' * 1023}</protein>")}, 400, "1023 residues"),
    ({"model": MODEL_ID, "messages": user("x"), "max_tokens": 10**6}, 400, "the limit is 512"),
    ({"model": MODEL_ID, "messages": user("x"), "temperature": -1}, 400, "temperature"),
    ({"model": MODEL_ID, "messages": user("x" * 5000)}, 400, "limit is 1000"),
    ({"model": MODEL_ID, "messages": [{"role": "tool", "content": "x"}]}, 400, "messages.0.role"),
    ({"model": MODEL_ID, "messages": user([{"type": "image_url", "image_url": {"url": "x"}}])}, 400, "messages.0"),
])
def test_bad_requests_get_openai_errors(make_client, body, status, expected):
    client = make_client(max_prompt_tokens=1000)
    kwargs = {"content": body, "headers": {"content-type": "application/json"}} if isinstance(body, bytes) \
        else {"json": body}
    response = client.post("/v1/chat/completions", **kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert expected in error["message"] and error["type"] == "invalid_request_error"
    assert set(error) == {"message", "type", "param", "code"}


def test_unknown_path_and_method(make_client):
    client = make_client()
    assert client.get("/v1/nothing").json()["error"]["message"] == "unknown path /v1/nothing"
    assert client.get("/v1/chat/completions").status_code == 405


def test_body_size_limit_declared_and_chunked(make_client):
    client = make_client(max_body_bytes=1000)
    big = json.dumps({"model": MODEL_ID, "messages": user("x" * 2000)}).encode()
    response = client.post("/v1/chat/completions", content=big, headers={"content-type": "application/json"})
    assert response.status_code == 413 and response.json()["error"]["code"] == "body_too_large"
    chunked = client.post("/v1/chat/completions", content=iter([big[:600], big[600:]]),
                          headers={"content-type": "application/json"})
    assert chunked.status_code == 413


def test_api_key_required_on_api_paths_only(make_client):
    client = make_client(api_key="s3cret")
    missing = client.get("/v1/models")
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert missing.json()["error"]["code"] == "invalid_api_key"
    assert client.get("/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/v1/models", headers={"Authorization": "Basic s3cret"}).status_code == 401
    assert client.get("/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert client.get("/depict", params={"smiles": "CCO"}).status_code == 401
    assert client.get("/health").json()["auth"] is True
    assert client.get("/").status_code == 200


def test_cors_off_by_default_and_on_when_configured(make_client):
    origin = {"Origin": "http://lab.example"}
    closed = make_client().get("/v1/models", headers=origin)
    assert "access-control-allow-origin" not in closed.headers
    opened = make_client(cors_origins=["http://lab.example"])
    preflight = opened.options("/v1/chat/completions", headers={**origin, "Access-Control-Request-Method": "POST"})
    assert preflight.headers["access-control-allow-origin"] == "http://lab.example"
    assert "access-control-allow-origin" not in opened.get("/v1/models", headers={"Origin": "http://evil.example"}).headers


def test_embeddings_kinds_widths_and_encodings(make_client, tiny_model):
    client = make_client()
    inputs = [f"<molecule>{ASPIRIN}</molecule>", f"<protein>{INSULIN_B}</protein>", "aspirin", ASPIRIN]
    body = client.post("/v1/embeddings", json={"model": MODEL_ID, "input": inputs}).json()
    vectors = [np.array(item["embedding"]) for item in body["data"]]
    assert [len(v) for v in vectors] == [tiny_model.config.molecule.emb_dim,
                                         tiny_model.prot_structure_encoder.config.hidden_size,
                                         tiny_model.llm.config.hidden_size, tiny_model.llm.config.hidden_size]
    assert all(abs(np.linalg.norm(v) - 1) < 1e-5 for v in vectors)
    assert body["usage"]["prompt_tokens"] > 0
    as_base64 = client.post("/v1/embeddings", json={"model": MODEL_ID, "input": inputs[:1],
                                                    "encoding_format": "base64"}).json()
    decoded = np.frombuffer(base64.b64decode(as_base64["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(decoded, vectors[0], rtol=1e-6)
    forced = client.post("/v1/embeddings", json={"model": MODEL_ID, "input": ASPIRIN, "input_type": "molecule"})
    np.testing.assert_allclose(forced.json()["data"][0]["embedding"], vectors[0], rtol=1e-5)
    other = client.post("/v1/embeddings", json={"model": MODEL_ID, "input": "<molecule>CCO</molecule>"}).json()
    assert not np.allclose(other["data"][0]["embedding"], vectors[0])


@pytest.mark.parametrize(("fields", "expected"), [
    ({"input": "<molecule>C1CC</molecule>"}, "invalid SMILES"),
    ({"input": []}, "must not be empty"),
    ({"input": ["x"] * 65}, "limit is 64"),
    ({"input": "x", "dimensions": 8}, "dimensions is not supported"),
    ({"input": "<protein>MK1</protein>"}, "position 3"),
    ({"input": [1, 2]}, "input"),
])
def test_embedding_errors(make_client, fields, expected):
    response = make_client().post("/v1/embeddings", json={"model": MODEL_ID, **fields})
    assert response.status_code == 400 and expected in response.json()["error"]["message"]


def test_depiction_svg_and_errors(make_client):
    client = make_client()
    svg = client.get("/depict", params={"smiles": ASPIRIN})
    assert svg.status_code == 200 and svg.headers["content-type"].startswith("image/svg+xml")
    assert "<svg" in svg.text and "</svg>" in svg.text
    bad = client.get("/depict", params={"smiles": "C1CC"})
    assert bad.status_code == 400 and "invalid SMILES" in bad.json()["error"]["message"]
    assert client.get("/depict", params={"smiles": "CCO", "width": 5}).status_code == 400
    assert client.get("/depict").status_code == 400


def test_concurrent_requests_share_one_generate_call(make_client, tiny_model):
    client = make_client(max_batch=4)
    questions = ["Question AA?", "Question BB?", "Question CC?", "Question DD?"]
    before = client.app.state.engine.stats()["batches"]
    release = block_worker(client)
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(chat, client, user(q), max_tokens=8) for q in questions]
        deadline = time.monotonic() + 10
        while client.app.state.engine.stats()["waiting"] < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
        release.set()
        answers = [f.result().json()["choices"][0]["message"]["content"] for f in futures]
    settings = GenerationSettings(max_new_tokens=8, repetition_penalty=1.1)
    expected = generate_batch(tiny_model, [[Message("user", q)] for q in questions], settings, batch_size=4)
    assert answers == expected
    assert client.app.state.engine.stats()["batches"] == before + 2  # the blocker, then one batch of four


def test_full_queue_is_429_with_retry_after(make_client):
    client = make_client(max_queue=1)
    release = block_worker(client)
    with ThreadPoolExecutor(1) as pool:
        queued = pool.submit(chat, client, user("first"), max_tokens=2)
        while client.app.state.engine.stats()["waiting"] < 1:
            time.sleep(0.01)
        rejected = chat(client, user("second"), max_tokens=2)
        release.set()
        assert queued.result().status_code == 200
    assert rejected.status_code == 429 and int(rejected.headers["retry-after"]) >= 1
    assert rejected.json()["error"]["type"] == "rate_limit_error"


def test_timeout_is_503_and_other_clients_are_served(make_client):
    client = make_client(request_timeout_s=0.5)
    release = block_worker(client)
    started = time.monotonic()
    response = chat(client, user("slow"), max_tokens=2)
    assert response.status_code == 503 and response.json()["error"]["code"] == "timeout"
    assert "retry-after" in response.headers and time.monotonic() - started < 3
    release.set()
    assert chat(client, user("next"), max_tokens=2).status_code == 200


def test_abandoned_stream_stops_decoding(tiny_model):
    """A client that goes away mid-stream frees the worker at once instead of after max_tokens."""

    async def scenario() -> float:
        engine = Engine(tiny_model)
        engine.start()
        try:
            job = engine.open_stream([Message("user", "go")], GenerationSettings(max_new_tokens=2000, temperature=1,
                                                                                 seed=0))
            reader = engine.read_stream(job, deadline=time.monotonic() + 60)
            await reader.__anext__()
            await reader.aclose()  # what Starlette does when the client disconnects
            started = time.monotonic()
            while engine.stats()["completed"] == 0:
                await asyncio.sleep(0.01)
            return time.monotonic() - started
        finally:
            engine.stop()

    assert asyncio.run(scenario()) < 1.0  # 2,000 tiny-model tokens take several seconds


def test_evidence_from_index(make_client, tmp_path):
    from biomedgpt.retrieval import load_index

    client = make_client(index=load_index(build_index(tmp_path / "index.json.gz")))
    body = chat(client, user(f"<molecule>{ASPIRIN}</molecule> <protein>{INSULIN_B}</protein> What?"),
                max_tokens=2).json()
    molecule, protein = body["evidence"]
    assert molecule["type"] == "molecule" and molecule["query"] == ASPIRIN
    assert molecule["neighbors"][0]["id"] == "aspirin" and molecule["neighbors"][0]["similarity"] == 1.0
    assert "analgesic" in molecule["neighbors"][0]["annotation"]
    assert protein["neighbors"][0]["id"] == "insulin-b"
    assert chat(client, user("no entities"), max_tokens=2).json()["evidence"] == []


def test_batch_window_merges_requests_that_arrive_just_after(tiny_model):
    """After a shared batch, the worker waits `batch_window_s` for more requests, so closed-loop clients (each
    sending its next request right after its answer) keep filling whole batches."""

    async def scenario() -> int:
        engine = Engine(tiny_model, max_batch=4, batch_window_s=2.0)
        engine.start()
        settings = GenerationSettings(max_new_tokens=2)
        try:
            release = threading.Event()
            engine.submit(Job("call", asyncio.get_running_loop(), function=release.wait))
            pair = [asyncio.ensure_future(engine.generate([Message("user", q)], settings, time.monotonic() + 60))
                    for q in ("one", "two")]
            await asyncio.sleep(0.05)
            release.set()
            await asyncio.gather(*pair)  # ran as one batch of two
            before = engine.stats()["batches"]
            first = asyncio.ensure_future(engine.generate([Message("user", "three")], settings, time.monotonic() + 60))
            await asyncio.sleep(0.1)  # arrives inside the window
            await engine.generate([Message("user", "four")], settings, time.monotonic() + 60)
            await first
            return engine.stats()["batches"] - before
        finally:
            engine.stop()

    assert asyncio.run(scenario()) == 1


@pytest.mark.parametrize("options", [{"engine": "hf"}, {"quantize": "int8"}])
def test_server_wide_decode_options(make_client, options):
    response = chat(make_client(**options), user(f"<molecule>{ASPIRIN}</molecule> What?"), max_tokens=4)
    assert response.status_code == 200, response.text


def test_stream_past_its_deadline_ends_with_an_error_event(make_client):
    client = make_client(request_timeout_s=0.5)
    release = block_worker(client)
    try:
        with client.stream("POST", "/v1/chat/completions",
                           json={"model": MODEL_ID, "messages": user("slow"), "stream": True}) as response:
            assert response.status_code == 200  # the queue had room: the stream started before the deadline
            events = [line[len("data: "):] for line in response.iter_lines() if line.startswith("data: ")]
    finally:
        release.set()
    assert json.loads(events[0])["choices"][0]["delta"]["role"] == "assistant"
    assert json.loads(events[-1])["error"]["code"] == "timeout" and "[DONE]" not in events
