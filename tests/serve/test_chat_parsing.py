"""From OpenAI request bodies to inference `Message`s: content parts, inline tags, settings and refusals."""

import pytest

from biomedgpt.serve.chat import settings_from, split_inline_tags, to_message
from biomedgpt.serve.config import ServerConfig
from biomedgpt.serve.errors import APIError
from biomedgpt.serve.schemas import ChatCompletionRequest, ChatMessage


def request(**fields) -> ChatCompletionRequest:
    return ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "hi"}], **fields)


def test_inline_tags_are_cut_out_in_order():
    text, smiles, proteins = split_inline_tags(
        "Compare <molecule>CCO</molecule> with <MOLECULE> c1ccccc1 </MOLECULE> and <protein>MKT\nAY</protein>.")
    assert text == "Compare with and ."
    assert smiles == ["CCO", "c1ccccc1"]
    assert proteins == ["MKT\nAY"]


def test_text_without_tags_is_untouched():
    assert split_inline_tags("  a <molecule> b  ") == ("  a <molecule> b  ", [], [])


def test_content_parts_and_tags_combine():
    message = ChatMessage(role="user", content=[
        {"type": "text", "text": "What about <protein>MKV</protein>"},
        {"type": "molecule", "smiles": "CCO"},
        {"type": "protein", "sequence": "MALW"},
    ])
    converted = to_message(message, 0)
    assert converted.text == "What about"
    assert converted.smiles == ["CCO"]
    assert converted.proteins == ["MKV", "MALW"]  # in order of appearance


def test_developer_role_is_a_system_message():
    assert to_message(ChatMessage(role="developer", content="be brief"), 0).role == "system"


@pytest.mark.parametrize("content", ["say <moleculeHere>", [{"type": "text", "text": "<proteinHere>"}]])
def test_reserved_placeholders_are_refused(content):
    with pytest.raises(APIError, match="reserved string"):
        to_message(ChatMessage(role="user", content=content), 3)


def test_entities_only_on_user_messages():
    with pytest.raises(APIError, match="only be attached to user messages"):
        to_message(ChatMessage(role="assistant", content="<molecule>CCO</molecule>"), 1)


def test_settings_defaults_and_overrides():
    cfg = ServerConfig(default_max_tokens=64, max_tokens_limit=100)
    default = settings_from(request(), cfg)
    assert (default.max_new_tokens, default.temperature, default.top_p, default.repetition_penalty) == (64, 0, 1, 1.1)
    custom = settings_from(request(max_completion_tokens=9, temperature=0.7, top_p=0.5, stop="##", seed=3,
                                   repetition_penalty=1.0), cfg)
    assert (custom.max_new_tokens, custom.temperature, custom.top_p, custom.stop, custom.seed) == (9, 0.7, 0.5,
                                                                                                   ["##"], 3)


@pytest.mark.parametrize(("fields", "param"), [
    ({"max_tokens": 101}, "max_tokens"),
    ({"n": 2}, "n"),
    ({"tools": [{"type": "function"}]}, "tools"),
    ({"logprobs": True}, "logprobs"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"stop": [""]}, "stop"),
])
def test_unsupported_or_over_limit_settings_are_400(fields, param):
    with pytest.raises(APIError) as caught:
        settings_from(request(**fields), ServerConfig(max_tokens_limit=100))
    assert caught.value.status == 400 and caught.value.param == param


def test_the_models_recommended_decoding_fills_the_server_defaults_except_beams():
    recommended = {"num_beams": 4, "repetition_penalty": 1.0, "quantize": "bf16"}
    settings = settings_from(request(), ServerConfig(), recommended)
    assert (settings.repetition_penalty, settings.quantize, settings.num_beams) == (1.0, "bf16", 1)
    operator = ServerConfig(default_repetition_penalty=1.2, quantize="none")
    settings = settings_from(request(), operator, recommended)
    assert (settings.repetition_penalty, settings.quantize) == (1.2, "none")
    assert settings_from(request(repetition_penalty=1.3), operator, recommended).repetition_penalty == 1.3


def test_server_wide_engine_and_quantize():
    settings = settings_from(request(), ServerConfig(engine="hf", quantize="none"))
    assert (settings.engine, settings.quantize) == ("hf", "none")
    with pytest.raises(ValueError, match="quantize"):
        ServerConfig(quantize="int3")


def test_embedding_groups_bound_the_padded_size():
    from biomedgpt.serve.embeddings import EmbeddingInput, _groups

    inputs = [EmbeddingInput("protein", "A" * n, n) for n in (1000, 1000, 10, 3000, 3000, 3000)]
    groups = _groups(list(range(6)), inputs, budget=6000)
    assert groups == [[0, 1, 2], [3, 4], [5]]
    assert all(len(g) * max(inputs[r].tokens for r in g) <= 6000 for g in groups)
