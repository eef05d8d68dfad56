"""Response objects in the OpenAI shapes: chat completions, stream chunks (server-sent events), embeddings."""

from __future__ import annotations

import json
import time
import uuid

from biomedgpt.serve.engine import Completion


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def chat_completion(model_id: str, completion: Completion, prompt_tokens: int, evidence: list | None) -> dict:
    body = {
        "id": completion_id(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model_id,
        "system_fingerprint": None,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": completion.text},
                     "finish_reason": completion.finish_reason, "logprobs": None}],
        "usage": usage(prompt_tokens, completion.completion_tokens),
    }
    if evidence is not None:
        body["evidence"] = evidence
    return body


class ChunkWriter:
    """Formats the `chat.completion.chunk` events of one streamed answer (they share id and created time)."""

    def __init__(self, model_id: str) -> None:
        self.base = {"id": completion_id(), "object": "chat.completion.chunk", "created": int(time.time()),
                     "model": model_id, "system_fingerprint": None}

    def chunk(self, delta: dict, finish_reason: str | None = None, **extra) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
        return sse({**self.base, "choices": [choice], **extra})

    def usage_chunk(self, prompt_tokens: int, completion_tokens: int) -> str:
        return sse({**self.base, "choices": [], "usage": usage(prompt_tokens, completion_tokens)})


def sse(data: dict | str) -> str:
    """One server-sent event; the OpenAI stream ends with the literal `data: [DONE]`."""
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {text}\n\n"


def embedding_list(model_id: str, vectors: list, prompt_tokens: int) -> dict:
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
        "model": model_id,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }
