"""Server throughput and latency at concurrency 1, 4 and 16, against a plain loop over `generate` in the same run.

    .venv/bin/python benchmarks/serve_load.py --model small --max-tokens 32 --threads 1

1. Baseline: this process loads the model and answers the prompts one by one with `generate_batch(..., batch_size=1)`
   (a plain loop over the model's generate, no HTTP), once before and once after the server runs.
2. Server: `python -m biomedgpt serve` in a subprocess on 127.0.0.1; an async client keeps `c` requests in flight
   (non-streaming, greedy, `max_tokens` each) and records each latency; then one streamed request measures the
   time to the first token.
Generated tokens are counted the same way on both sides (the answer re-encoded, as the server's `usage` does).
`--threads` pins the CPU threads of both sides (OMP_NUM_THREADS): on a machine whose cores other processes keep
busy, two spinning OpenMP threads run ~10x slower than one (measured on the 2-core development machine).
Writes benchmarks/results/serve_load.json and .md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

RESULTS = Path(__file__).resolve().parent / "results"
MOLECULES = ["CC(=O)Oc1ccccc1C(=O)O", "CN1C=NC2=C1C(=O)N(C(=O)N2C)C", "CC(C)Cc1ccc(cc1)C(C)C(=O)O", "CCO",
             "C1=CC=C(C=C1)O", "OC(=O)CC(O)(CC(O)=O)C(O)=O", "CC(=O)NC1=CC=C(O)C=C1", "C(C1C(C(C(C(O1)O)O)O)O)O"]
QUESTIONS = ["What is this molecule used for?", "Describe this molecule.", "Is this molecule toxic?",
             "What class of compounds does this belong to?"]


def prompt(i: int) -> tuple[str, str]:
    return QUESTIONS[i % len(QUESTIONS)], MOLECULES[i % len(MOLECULES)]


def plain_loop(model, count: int, max_tokens: int) -> dict:
    from biomedgpt.inference import GenerationSettings, Message, generate_batch

    settings = GenerationSettings(max_new_tokens=max_tokens, repetition_penalty=1.1)
    generate_batch(model, [[Message("user", "warm up", [MOLECULES[0]])]], settings, batch_size=1)
    tokens, latencies = 0, []
    start = time.perf_counter()
    for i in range(count):
        question, smiles = prompt(i)
        t0 = time.perf_counter()
        answer = generate_batch(model, [[Message("user", question, [smiles])]], settings, batch_size=1)[0]
        latencies.append(time.perf_counter() - t0)
        tokens += min(max_tokens, len(model.tokenizer(answer, add_special_tokens=False)["input_ids"]))
    wall = time.perf_counter() - start
    return {"requests": count, "wall_s": wall, "tokens": tokens, "tokens_per_s": tokens / wall,
            "p50_s": statistics.median(latencies)}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def load(url: str, model_id: str, concurrency: int, count: int, max_tokens: int) -> dict:
    gate = asyncio.Semaphore(concurrency)
    latencies, tokens, statuses = [], 0, []

    async def one(client: httpx.AsyncClient, i: int) -> None:
        nonlocal tokens
        question, smiles = prompt(i)
        body = {"model": model_id, "max_tokens": max_tokens,
                "messages": [{"role": "user", "content": [{"type": "text", "text": question},
                                                          {"type": "molecule", "smiles": smiles}]}]}
        async with gate:
            t0 = time.perf_counter()
            response = await client.post("/v1/chat/completions", json=body)
            latencies.append(time.perf_counter() - t0)
        statuses.append(response.status_code)
        if response.status_code == 200:
            tokens += response.json()["usage"]["completion_tokens"]

    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        before = (await client.get("/health")).json()["queue"]
        start = time.perf_counter()
        await asyncio.gather(*(one(client, i) for i in range(count)))
        wall = time.perf_counter() - start
        after = (await client.get("/health")).json()["queue"]
    mean_batch = (after["completed"] - before["completed"]) / max(1, after["batches"] - before["batches"])
    return {"concurrency": concurrency, "requests": count, "ok": statuses.count(200), "wall_s": wall,
            "mean_batch": mean_batch,
            "requests_per_s": count / wall, "p50_s": percentile(latencies, 0.5), "p95_s": percentile(latencies, 0.95),
            "tokens": tokens, "tokens_per_s": tokens / wall}


async def first_token(url: str, model_id: str, max_tokens: int) -> dict:
    question, smiles = prompt(0)
    body = {"model": model_id, "max_tokens": max_tokens, "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": f"{question} <molecule>{smiles}</molecule>"}]}
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        t0 = time.perf_counter()
        first = None
        tokens = 0
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            async for line in response.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                chunk = json.loads(line[len("data: "):])
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
                if first is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                    first = time.perf_counter() - t0
        total = time.perf_counter() - t0
        return {"time_to_first_token_s": first, "total_s": total, "tokens": tokens, "tokens_per_s": tokens / total}


@contextlib.contextmanager
def server(model: str, max_batch: int, threads: int | None):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    process = subprocess.Popen([sys.executable, "-m", "biomedgpt", "serve", "--model", model, "--port", str(port),
                                "--model-name", "bench", "--max-queue", "64", "--max-batch", str(max_batch),
                                "--log-level", "warning", *(["--threads", str(threads)] if threads else [])], env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            if process.poll() is not None:
                raise RuntimeError("server exited")
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="small")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--baseline-requests", type=int, default=6)
    parser.add_argument("--levels", default="1:6,4:12,16:32", help="concurrency:requests pairs")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for both sides (OMP_NUM_THREADS)")
    args = parser.parse_args()
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # before torch is imported (load_model below)

    from biomedgpt.inference import load_model

    started, load_at_start = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), os.getloadavg()[0]
    model = load_model(args.model)
    # The plain loop runs before and after the server (other processes may share the CPU: the mean of the two
    # is the reference for the ratios).
    before = plain_loop(model, args.baseline_requests, args.max_tokens)
    print(f"plain loop: {before['tokens_per_s']:.2f} tokens/s", flush=True)
    runs = []
    with server(args.model, args.max_batch, args.threads) as url:
        asyncio.run(load(url, "bench", 1, 1, 4))  # warm up
        for level in args.levels.split(","):
            concurrency, count = (int(x) for x in level.split(":"))
            run = asyncio.run(load(url, "bench", concurrency, count, args.max_tokens))
            runs.append(run)
            print(json.dumps(run), flush=True)
        ttft = asyncio.run(first_token(url, "bench", args.max_tokens))
    after = plain_loop(model, args.baseline_requests, args.max_tokens)
    print(f"plain loop again: {after['tokens_per_s']:.2f} tokens/s", flush=True)
    base = {"requests": before["requests"] + after["requests"], "wall_s": before["wall_s"] + after["wall_s"],
            "tokens": before["tokens"] + after["tokens"], "p50_s": (before["p50_s"] + after["p50_s"]) / 2,
            "before_tokens_per_s": before["tokens_per_s"], "after_tokens_per_s": after["tokens_per_s"]}
    base["tokens_per_s"] = base["tokens"] / base["wall_s"]
    result = {"model": args.model, "max_tokens": args.max_tokens, "max_batch": args.max_batch, "threads": args.threads,
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "date": started,
              "load_average_at_start": load_at_start, "load_average_at_end": os.getloadavg()[0],
              "plain_loop": base, "server": runs, "stream": ttft,
              "command": " ".join(["python", "benchmarks/serve_load.py", *sys.argv[1:]])}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "serve_load.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "serve_load.md").write_text(markdown(result))
    print(markdown(result))


def markdown(result: dict) -> str:
    base = result["plain_loop"]
    lines = [f"# Server load: `{result['model']}`, greedy, max_tokens {result['max_tokens']}, "
             f"max_batch {result['max_batch']}, threads {result['threads'] or 'default'}", "",
             f"{result['machine']}, started {result['date']} (1-min load average {result['load_average_at_start']:.1f} "
             f"at the start, {result['load_average_at_end']:.1f} at the end: other processes shared the CPU). "
             f"Command: `{result['command']}`", "",
             "| setup | requests | mean batch | requests/s | p50 latency (s) | p95 latency (s) | generated tokens/s "
             "| vs plain loop |",
             "|---|---|---|---|---|---|---|---|",
             f"| plain loop over generate, no server (before: {base['before_tokens_per_s']:.2f}, after: "
             f"{base['after_tokens_per_s']:.2f} tokens/s) | {base['requests']} | 1 | "
             f"{base['requests'] / base['wall_s']:.3f} | {base['p50_s']:.2f} | – | {base['tokens_per_s']:.2f} "
             "| 1.00× |"]
    for run in result["server"]:
        lines.append(f"| server, concurrency {run['concurrency']} | {run['requests']} ({run['ok']} ok) | "
                     f"{run['mean_batch']:.1f} | {run['requests_per_s']:.3f} | {run['p50_s']:.2f} | "
                     f"{run['p95_s']:.2f} | "
                     f"{run['tokens_per_s']:.2f} | {run['tokens_per_s'] / base['tokens_per_s']:.2f}× |")
    stream = result["stream"]
    lines += ["", f"Streaming, concurrency 1: first token after {stream['time_to_first_token_s']:.2f} s, "
                  f"whole answer ({stream['tokens']} tokens) {stream['total_s']:.2f} s "
                  f"({stream['tokens_per_s']:.2f} tokens/s).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
