"""The official `openai` Python package as the client of a live `biomedgpt serve` on 127.0.0.1."""

from __future__ import annotations

import numpy as np
import openai
import pytest
from serve_helpers import ASPIRIN, INSULIN_B, MODEL_ID


@pytest.fixture()
def client(live_server):
    return openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=live_server.api_key, max_retries=0, timeout=60)


def test_models(client):
    assert [m.id for m in client.models.list()] == [MODEL_ID]


def test_plain_completion_with_molecule_part_and_evidence(client):
    completion = client.chat.completions.create(
        model=MODEL_ID, max_tokens=8, temperature=1.0, seed=3,
        messages=[{"role": "system", "content": "You are a chemist."},
                  {"role": "user", "content": [{"type": "text", "text": "What is this molecule used for?"}]}],
        extra_body={"messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is this molecule used for?"}, {"type": "molecule", "smiles": ASPIRIN}]}]},
    )
    assert completion.object == "chat.completion" and completion.model == MODEL_ID
    choice = completion.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert completion.usage.prompt_tokens > 20 and completion.usage.completion_tokens <= 8
    evidence = completion.model_extra["evidence"]  # our extra field, kept by the client's models
    assert evidence[0]["neighbors"][0]["id"] == "aspirin"


def test_inline_tags_for_plain_text_clients(client):
    completion = client.chat.completions.create(
        model=MODEL_ID, max_tokens=4,
        messages=[{"role": "user", "content": f"Function of <protein>{INSULIN_B}</protein>?"}])
    assert completion.model_extra["evidence"][0]["type"] == "protein"
    assert completion.usage.prompt_tokens > len(INSULIN_B)  # one prompt position per residue (+ <cls>, <eos>)


def test_streaming_completion(client):
    messages = [{"role": "user", "content": f"Describe <molecule>{ASPIRIN}</molecule>"}]
    # Greedy, the random tiny model emits one whitespace token after another: each must arrive as its own chunk.
    chunks = list(client.chat.completions.create(model=MODEL_ID, max_tokens=16, messages=messages, stream=True,
                                                 stream_options={"include_usage": True}))
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) >= 8, pieces
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens > 20
    # Sampled with a seed, the streamed text equals the plain completion's.
    kwargs = {"model": MODEL_ID, "max_tokens": 16, "temperature": 1.0, "seed": 11, "messages": messages}
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(stream=True, **kwargs)
                       if c.choices)
    plain = client.chat.completions.create(**kwargs).choices[0].message.content
    assert streamed and streamed.strip() == plain  # the plain answer is whitespace-stripped


def test_embeddings(client):
    response = client.embeddings.create(model=MODEL_ID, input=[f"<molecule>{ASPIRIN}</molecule>",
                                                               f"<molecule>{ASPIRIN}</molecule>",
                                                               "<molecule>CCO</molecule>", "plain text"])
    vectors = [np.array(d.embedding) for d in response.data]  # the client asks for base64 and decodes it
    assert len(vectors[0]) == len(vectors[2]) != len(vectors[3])
    np.testing.assert_allclose(vectors[0], vectors[1], rtol=1e-6)
    assert abs(float(vectors[0] @ vectors[0]) - 1) < 1e-5 and float(vectors[0] @ vectors[2]) < 0.9999
    floats = client.embeddings.create(model=MODEL_ID, input="CCO", encoding_format="float",
                                      extra_body={"input_type": "molecule"})
    np.testing.assert_allclose(floats.data[0].embedding, vectors[2], rtol=1e-5)


def test_wrong_api_key_is_rejected(live_server):
    bad = openai.OpenAI(base_url=f"{live_server.url}/v1", api_key="not-the-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        bad.models.list()
    assert caught.value.status_code == 401 and caught.value.code == "invalid_api_key"


def test_client_sees_openai_errors(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": "<molecule>C1CC"
                                                                                               "</molecule>"}])
    assert "invalid SMILES" in caught.value.message
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
