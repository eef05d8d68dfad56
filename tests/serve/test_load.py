"""A bounded load test on loopback: 200 requests, 16 at a time, against the live server (tiny model, batches of
4, a queue of 8; a client pauses 0.2 s after a 429 instead of the advised Retry-After): no 5xx, every valid
request answered 200 or 429 (with Retry-After), bad ones 400, memory stable."""

from __future__ import annotations

import asyncio
import json
import random

import httpx
from serve_helpers import ASPIRIN, INSULIN_B, MODEL_ID

REQUESTS = 200
CONCURRENCY = 16


def _body(i: int) -> tuple[dict, bool]:
    """Request i of a deterministic mix: plain, streamed, with molecules / proteins, and 1 in 10 invalid."""
    rng = random.Random(i)
    content = [{"type": "text", "text": f"Question {i}: what is it?"}]
    if rng.random() < 0.5:
        content.append({"type": "molecule", "smiles": rng.choice([ASPIRIN, "CCO", "c1ccccc1O"])})
    if rng.random() < 0.2:
        content.append({"type": "protein", "sequence": INSULIN_B})
    valid = i % 10 != 9
    if not valid:
        content.append({"type": "molecule", "smiles": "C1CC(("})
    body = {"model": MODEL_ID, "messages": [{"role": "user", "content": content}], "max_tokens": 4,
            "stream": i % 4 == 0}
    return body, valid


async def _one(client: httpx.AsyncClient, i: int) -> tuple[int, bool, str]:
    body, valid = _body(i)
    if not body["stream"]:
        response = await client.post("/v1/chat/completions", json=body)
        if response.status_code == 200:
            assert response.json()["choices"][0]["message"]["role"] == "assistant"
        return response.status_code, valid, response.headers.get("retry-after", "")
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        lines = [line async for line in response.aiter_lines() if line.startswith("data: ")]
        if response.status_code == 200:
            assert lines[-1] == "data: [DONE]" and "error" not in json.loads(lines[-2][6:])
        return response.status_code, valid, response.headers.get("retry-after", "")


async def _run(server, count: int, offset: int = 0) -> list[tuple[int, bool, str]]:
    limit = asyncio.Semaphore(CONCURRENCY)
    async with httpx.AsyncClient(base_url=server.url, headers=server.headers, timeout=60) as client:
        async def bounded(i: int):
            async with limit:
                result = await _one(client, i)
                if result[0] == 429:
                    await asyncio.sleep(0.2)  # a short back-off keeps the load high without a busy loop
                return result

        return await asyncio.gather(*(bounded(offset + i) for i in range(count)))


def test_load_200_requests_16_concurrent(live_server):
    asyncio.run(_run(live_server, 16, offset=10_000))  # warm up: allocator pools, tokenizer caches
    rss_before = live_server.rss_kb()
    results = asyncio.run(_run(live_server, REQUESTS))
    rss_after = live_server.rss_kb()
    statuses = [status for status, _, _ in results]
    assert all(status < 500 for status in statuses), statuses
    assert all(status in (200, 429) for status, valid, _ in results if valid), statuses
    assert all(status == 400 for status, valid, _ in results if not valid), statuses
    # 4 running + 8 waiting < 16 clients: the bound must shed some load, and the server must keep answering.
    assert statuses.count(429) >= 1 and statuses.count(200) >= 20, statuses
    assert all(int(retry) >= 1 for status, _, retry in results if status == 429)
    assert rss_after - rss_before < 64 * 1024, f"server RSS grew {rss_before} -> {rss_after} kB"
    health = httpx.get(f"{live_server.url}/health").json()
    assert health["queue"]["waiting"] == 0
    print(f"200: {statuses.count(200)}, 429: {statuses.count(429)}, 400: {statuses.count(400)}; "
          f"RSS {rss_before // 1024} -> {rss_after // 1024} MB")
