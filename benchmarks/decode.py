"""Decode speed of the small preset's LM (SmolLM2-135M-Instruct): our fast loop vs HF `generate`, against the
memory-bandwidth bound; batched throughput; cold start of `biomedgpt ask`; quality of the quantized weights; the
default model's beam search as `biomedgpt eval` runs it (`--parts beam`).

    BIOMEDGPT_CACHE=/tmp/bmcache .venv/bin/python benchmarks/decode.py            # everything (~5 min quiet)
    .venv/bin/python benchmarks/decode.py --parts speed --repeats 5               # one part

Everything in one run, engines interleaved and the best of `--repeats` kept per engine, because the machine is
shared and noisy: compare the ratios. Results: benchmarks/results/decode.json and decode.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
PROMPTS = [
    "Write a detailed essay about the history, chemistry and medical uses of aspirin.",
    "Explain how insulin regulates blood sugar, step by step, for a first-year student.",
    "What are enzymes? Give several examples from human digestion and describe what each one does.",
    "Describe the structure of DNA and how it is copied when a cell divides.",
]
QUANT_MODES = ("none", "bf16", "int8", "int4")


def copy_bandwidth(megabytes: int = 512, repeats: int = 10) -> float:
    """Bytes moved per second (read + write) by a large tensor copy: the memory bound for decoding."""
    src = torch.ones(megabytes * 2**20 // 4)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - start)
    return 2 * src.numel() * 4 / best


def read_bandwidth(megabytes: int = 512, repeats: int = 10) -> float:
    """Bytes read per second by a large tensor sum: what a decode step does with its weights (reads only, no
    writes). Usually above the copy figure, so the bound it gives is the stricter one."""
    src = torch.ones(megabytes * 2**20 // 4)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        src.sum()
        best = min(best, time.perf_counter() - start)
    return src.numel() * 4 / best


@contextlib.contextmanager
def native_step(engine: str):
    """Engine "fast-torch" is the fast loop with its decode steps in PyTorch (the compiled batch-1 step off)."""
    from biomedgpt.model.native import ENV_DISABLE

    old = os.environ.get(ENV_DISABLE)
    if engine == "fast-torch":
        os.environ[ENV_DISABLE] = "0"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(ENV_DISABLE, None)
        else:
            os.environ[ENV_DISABLE] = old


def _inputs(model, prompts):
    from biomedgpt.data.collate import collate
    from biomedgpt.inference import Message, build_example

    examples = [build_example(model, [Message("user", p)]) for p in prompts]
    return collate(examples, model.tokenizer.pad_token_id, "left").model_inputs()


def _timed(model, inputs, engine, quantize, new_tokens, criteria=None) -> tuple[float, int]:
    kwargs = dict(max_new_tokens=new_tokens, do_sample=False, temperature=None, top_p=None, top_k=None)
    if criteria is not None:
        kwargs["stopping_criteria"] = criteria
    with native_step(engine):
        start = time.perf_counter()
        out = model.generate(**inputs, engine=engine.split("-")[0], quantize=quantize, **kwargs)
        elapsed = time.perf_counter() - start
    produced = int((out != model.tokenizer.pad_token_id).sum()) if out.shape[0] > 1 else out.numel()
    return elapsed, produced


def _clock():
    """A stopping criterion that never stops but timestamps every decode step (both engines call it once per
    token), so decode speed is measured inside one run, without the prefill."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    class Clock(StoppingCriteria):
        def __init__(self):
            self.stamps: list[float] = []

        def __call__(self, input_ids, scores, **kwargs):
            self.stamps.append(time.perf_counter())
            return torch.zeros(input_ids.shape[0], dtype=torch.bool)

    clock = Clock()
    return clock, StoppingCriteriaList([clock])


def decode_rate(model, inputs, engine, quantize, new_tokens) -> dict:
    """Tokens/s between the first and the last decoded token (prefill excluded), and 1 / the median step time
    (robust to a neighbour's burst of load)."""
    clock, criteria = _clock()
    elapsed, produced = _timed(model, inputs, engine, quantize, new_tokens, criteria)
    steps = [b - a for a, b in zip(clock.stamps, clock.stamps[1:])]
    return {"tokens_per_s": len(steps) / (clock.stamps[-1] - clock.stamps[0]),
            "median_step_tokens_per_s": 1 / statistics.median(steps), "tokens": produced, "seconds": elapsed,
            "first_token_s": elapsed - (clock.stamps[-1] - clock.stamps[0])}


def hf_int8_dynamic(model):
    """The ANCHORS reference: HF generate on torch.ao dynamic int8 quantization of the LM's linear layers."""
    import copy

    quantized = copy.deepcopy(model)
    quantized.llm = torch.ao.quantization.quantize_dynamic(quantized.llm, {torch.nn.Linear}, dtype=torch.qint8)
    return quantized


def bench_speed(model, args, bandwidth, read_bw) -> dict:
    """Batch-1 decode rates per engine and weights, against the bounds (bandwidth / weight bytes per token).

    Engine "fast" runs its decode steps in the compiled step (`biomedgpt.model.native`) for none/bf16/int8 weights
    and in PyTorch for int4; "fast-torch" is the same loop with every step in PyTorch."""
    from biomedgpt.model.fast_decode import packed_lm

    inputs = _inputs(model, PROMPTS[:1])
    engines = [("hf", "none", model)] + [("fast", mode, model) for mode in QUANT_MODES]
    engines += [("fast-torch", mode, model) for mode in QUANT_MODES if mode != "int4"]
    if args.hf_int8:
        engines.append(("hf-int8-dynamic", "none", hf_int8_dynamic(model)))
    for engine, mode, m in engines:  # warm-up: packs the weights, builds the native step, first-call allocations
        _timed(m, inputs, engine, mode, 4)
    runs: dict[str, list[dict]] = {}
    for _ in range(args.repeats):
        for engine, mode, m in engines:
            key = f"{engine}/{mode}"
            runs.setdefault(key, []).append(decode_rate(m, inputs, engine, mode, args.new_tokens))
    hf_best = max(r["tokens_per_s"] for r in runs["hf/none"])
    results = {}
    for key, rs in runs.items():
        rates = [r["tokens_per_s"] for r in rs]
        mode = key.split("/")[1]
        nbytes = packed_lm(model.llm, mode).nbytes_per_token
        best = max(rates)
        results[key] = {
            "best_tokens_per_s": round(best, 2), "median_tokens_per_s": round(statistics.median(rates), 2),
            "all": [round(x, 2) for x in rates],
            "best_median_step_tokens_per_s": round(max(r["median_step_tokens_per_s"] for r in rs), 2),
            "tokens": [r["tokens"] for r in rs], "weight_bytes_per_token": nbytes,
            "bound_tokens_per_s": round(bandwidth / nbytes, 1),
            "fraction_of_bound": round(best * nbytes / bandwidth, 3),
            "read_bound_tokens_per_s": round(read_bw / nbytes, 1),
            "fraction_of_read_bound": round(best * nbytes / read_bw, 3),
            "vs_hf_fp32": round(best / hf_best, 2), "first_token_s": round(min(r["first_token_s"] for r in rs), 3),
        }
    return results


def matmul_peak(repeats: int = 10) -> float:
    """FLOP/s of a large float32 matrix product in PyTorch (MKL/oneDNN) on the benchmark's threads: what the
    machine's cores can do at best, so that (this / FLOPs per token) bounds the aggregate decode rate of any batch."""
    a, w = torch.randn(1024, 576), torch.randn(1536, 576)
    for _ in range(3):
        a @ w.T
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ w.T
        best = min(best, time.perf_counter() - start)
    return 2 * a.shape[0] * a.shape[1] * w.shape[0] / best


def bench_batches(model, args, flops_peak: float) -> dict:
    """Aggregate tokens/s over a batch of prompts of different lengths (left padding, per-row stopping): the decode
    rate (prefill excluded, every row's token counted, as at batch 1) and new tokens per second of the whole call
    (prefill included). Engine "fast" runs batches through the compiled batched step, "fast-torch" in PyTorch."""
    results = {}
    modes = args.batch_modes.split(",")
    engines = [("hf", "none")] + [("fast", mode) for mode in modes]
    engines += [("fast-torch", mode) for mode in modes if mode != "int4"]
    from biomedgpt.model.fast_decode import packed_lm

    packed = packed_lm(model.llm, "none")  # 2 FLOPs per weight of every product (the embedding is a lookup)
    flops_per_token = 2 * (sum(p.weight.numel() for layer in packed.layers for p in layer.linears)
                           + packed.lm_head.weight.numel())
    for engine, mode in engines:
        decode, whole = {}, {}
        for size in args.batch_sizes:
            if engine == "hf" and size > 8:
                continue  # slow; the anchor compares HF at batch 8
            prompts = [PROMPTS[i % len(PROMPTS)] + " " * (i // len(PROMPTS)) for i in range(size)]
            inputs = _inputs(model, prompts)
            _timed(model, inputs, engine, mode, 2)  # warm-up (packing, first allocations of this shape)
            runs = [decode_rate(model, inputs, engine, mode, args.batch_new_tokens) for _ in range(args.repeats)]
            decode[size] = round(max(r["tokens_per_s"] for r in runs) * size, 1)
            whole[size] = round(max(r["tokens"] / r["seconds"] for r in runs), 1)
        base = decode[min(decode)]
        results[f"{engine}/{mode}"] = {
            "decode_tokens_per_s": decode, "decode_vs_batch_1": {k: round(v / base, 2) for k, v in decode.items()},
            "tokens_per_s_with_prefill": whole}
    results["compute_bound"] = {"matmul_GFLOPs": round(flops_peak / 1e9, 1), "flops_per_token": flops_per_token,
                                "tokens_per_s": round(flops_peak / flops_per_token, 1)}
    return results


def bench_compile(model, mode: str = "int8", steps: int = 16) -> dict:
    """What `torch.compile` of the decode step would buy: compile time of the first call and the steady step
    time, next to the eager step (one layer loop over a static cache, dynamic start position)."""
    from biomedgpt.model.fast_decode import _rope_at, packed_lm

    packed = packed_lm(model.llm, mode)
    cos_all, sin_all = packed.rope_tables(torch.arange(64 + steps)[None])
    x = packed.embed[torch.tensor([[42]])].to(packed.residual_dtype)

    def run(forward, cache) -> list[float]:
        times = []
        for i in range(steps):
            start = time.perf_counter()
            forward(x, _rope_at(cos_all, sin_all, torch.tensor([[32 + i]])), cache, 32 + i, None)
            times.append(time.perf_counter() - start)
        return times

    with torch.inference_mode():
        eager = run(packed.forward, packed.new_cache(1, 64 + steps))
        compiled_forward = torch.compile(packed.forward, dynamic=True)
        compiled = run(compiled_forward, packed.new_cache(1, 64 + steps))
    return {"mode": mode, "eager_step_ms": round(1e3 * statistics.median(eager), 2),
            "compile_first_call_s": round(compiled[0], 1),
            "compiled_step_ms": round(1e3 * statistics.median(compiled[2:]), 2)}


ASPIRIN = "CC(=O)Oc1ccccc1C(=O)O"
# What a user runs after `make demo`: the default model (its recommended decoding: 4 beams, bf16) on a molecule
# question and on a plain one; then the `small` preset (transformers' classes: presets are built, not loaded).
COLD_START_RUNS = [
    ("default model, aspirin question, first token", ["--max-new-tokens", "1", "--smiles", ASPIRIN,
                                                      "What is this molecule used for?"]),
    ("default model, 'What is insulin?', up to 64 tokens", ["--max-new-tokens", "64", "What is insulin?"]),
    ("small preset, first token", ["--model", "small", "--max-new-tokens", "1", "What is aspirin used for?"]),
]


def bench_cold_start(args) -> dict:
    """Wall and CPU time of new `biomedgpt ask` processes (LM conversion already cached)."""
    exe = [sys.executable, "-m", "biomedgpt", "ask", "--timing", "--evidence", "0"]
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {}))
    results = {}
    for label, extra in COLD_START_RUNS:
        times, cpu = [], []
        for _ in range(args.repeats):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            subprocess.run(exe + extra, check=True, capture_output=True, env=env)
            times.append(time.perf_counter() - start)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
        # CPU seconds (user + system) barely depend on other jobs' load, unlike wall time on a shared machine.
        results[label] = {"best_s": round(min(times), 2), "median_s": round(statistics.median(times), 2),
                          "cpu_s": round(min(cpu), 2)}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "biomedgpt", "--help"], check=True, capture_output=True)
    results["help_s"] = round(time.perf_counter() - start, 2)
    return results


BEAM_DATA = Path(__file__).resolve().parents[1] / "data" / "build" / "molecule_qa_test.jsonl"
BEAM_BATCH = 8  # what benchmarks/run_default_model.sh passes to `biomedgpt eval` for ChEBI-20


def bench_beam(args) -> dict:
    """The default model with its recommended decoding (4 beams, bf16) on ChEBI-20 test molecules at batch 8, as
    `biomedgpt eval` runs it: wall seconds per molecule (best of repeats)."""
    from biomedgpt.inference import REPO_MODEL_DIR, GenerationSettings, Message, generate_batch, load_model

    if not BEAM_DATA.is_file():
        return {"skipped": f"{BEAM_DATA} not found (scripts/build_training_data.sh builds it)"}
    model = load_model(REPO_MODEL_DIR, lite=True)
    with BEAM_DATA.open(encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle][args.beam_offset : args.beam_offset + args.beam_items]
    conversations = [[Message("user", r["question"], r["molecules"], r["proteins"])] for r in records]
    settings = GenerationSettings.for_model(model, max_new_tokens=160)
    generate_batch(model, conversations[:2], settings, batch_size=2)  # warm-up (packing the weights)
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        answers = generate_batch(model, conversations, settings, batch_size=BEAM_BATCH)
        times.append(time.perf_counter() - start)
    tokens = sum(len(model.tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers)
    return {"items": len(records), "first_item": args.beam_offset, "batch_size": BEAM_BATCH,
            "settings": f"{settings.num_beams} beams, {settings.quantize or 'model dtype'}, max 160 new tokens",
            "best_s": round(min(times), 2), "median_s": round(statistics.median(times), 2),
            "best_s_per_item": round(min(times) / len(records), 3), "answer_tokens": tokens}


def markdown(report: dict) -> str:
    """The report as Markdown tables (what docs/performance.md quotes)."""
    lines = ["# Decode benchmark (small preset, SmolLM2-135M-Instruct)\n", f"Command: `{report['command']}`  ",
             f"Machine: {report['machine']}  ",
             f"Copy bandwidth (read + write): {report['copy_bandwidth_GBps']} GB/s; "
             f"read bandwidth (sum): {report.get('read_bandwidth_GBps', '–')} GB/s\n"]
    if "batch1_decode" in report:
        lines += ["## Batch 1 decode (prefill excluded; best of repeats, interleaved)\n",
                  "Bound = bandwidth / weight bytes read per token; *copy* is the issue's definition, *read* the "
                  "stricter one (a decode step only reads its weights).\n",
                  "| engine/weights | tokens/s (best) | median | 1/median step | × HF fp32 | weight MB/token "
                  "| copy bound | of copy bound | read bound | of read bound |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for key, r in report["batch1_decode"].items():
            lines.append(f"| {key} | {r['best_tokens_per_s']} | {r['median_tokens_per_s']} | "
                         f"{r['best_median_step_tokens_per_s']} | {r['vs_hf_fp32']} | "
                         f"{r['weight_bytes_per_token'] / 1e6:.0f} | {r['bound_tokens_per_s']} | "
                         f"{r['fraction_of_bound']:.0%} | {r.get('read_bound_tokens_per_s', '–')} | "
                         f"{r.get('fraction_of_read_bound', 0):.0%} |")
    if "batched" in report:
        batched = {k: v for k, v in report["batched"].items() if k != "compute_bound"}
        sizes = max((r["decode_tokens_per_s"] for r in batched.values()), key=len)
        bound = report["batched"]["compute_bound"]
        lines += ["\n## Aggregate tokens/s by batch size (prompts of different lengths)\n",
                  "Decode rate (prefill excluded, as at batch 1; in brackets: × the same engine's batch-1 rate) and, "
                  "after the slash, new tokens per second of the whole call (prefill included). Compute bound: "
                  f"{bound['matmul_GFLOPs']} GFLOP/s (a large float32 PyTorch matmul on the same threads) / "
                  f"{bound['flops_per_token'] / 1e6:.0f} MFLOP per token = **{bound['tokens_per_s']} tokens/s** for "
                  "any batch.\n",
                  "| engine/weights | " + " | ".join(f"batch {k}" for k in sizes) + " |", "|---|" + "---|" * len(sizes)]
        for key, r in batched.items():
            cells = [f"{r['decode_tokens_per_s'][k]} ({r['decode_vs_batch_1'][k]}×) / "
                     f"{r['tokens_per_s_with_prefill'][k]}" if k in r["decode_tokens_per_s"] else "–" for k in sizes]
            lines.append(f"| {key} | " + " | ".join(cells) + " |")
    if "quality" in report:
        lines += ["\n## Quality of the quantized weights vs fp32\n",
                  f"Setup: {report['quality']['setup']}\n",
                  "| weights | perplexity | change | top-1 agreement | greedy tokens equal to fp32 (per prompt) |",
                  "|---|---|---|---|---|"]
        for mode, r in report["quality"].items():
            if mode != "setup":
                lines.append(f"| {mode} | {r['perplexity']} | {r['perplexity_change']:+.2%} | "
                             f"{r['top1_agreement']:.2%} | {r['greedy_prefix_agreement']} |")
    if "compile" in report:
        c = report["compile"]
        lines += ["\n## torch.compile of the decode step\n",
                  f"Weights {c['mode']}: eager step {c['eager_step_ms']} ms; compiled step {c['compiled_step_ms']} ms "
                  f"after a first call (compilation) of {c['compile_first_call_s']} s."]
    if "cold_start" in report:
        c = report["cold_start"]
        lines += ["\n## Cold start (new process, LM conversion cached)\n",
                  "| what | best wall s | median wall s | CPU s (user + sys) |", "|---|---|---|---|"]
        lines += [f"| {k} | {v['best_s']} | {v['median_s']} | {v['cpu_s']} |" for k, v in c.items()
                  if isinstance(v, dict)]
        lines.append(f"| biomedgpt --help | {c['help_s']} | | |")
    if "beam" in report:
        b = report["beam"]
        lines += ["\n## Beam search as `eval` runs it (default model, ChEBI-20 test molecules)\n"]
        lines.append(b["skipped"] if "skipped" in b else
                     f"{b['items']} molecules from item {b['first_item']}, batch {b['batch_size']}, {b['settings']}: "
                     f"best {b['best_s']} s, median {b['median_s']} s, **{b['best_s_per_item']} s per molecule** "
                     f"({b['answer_tokens']} answer tokens).")
    return "\n".join(lines) + "\n"


def _quality(model) -> dict:
    from decode_quality import quality_report  # benchmarks/ is on sys.path when this file runs

    return quality_report(model, _inputs(model, PROMPTS))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="speed,batch,cold,quality",
                        help="comma list of speed, batch, cold, quality, beam, compile (compile: minutes)")
    parser.add_argument("--beam-items", type=int, default=16, help="ChEBI-20 test molecules the beam part decodes")
    parser.add_argument("--beam-offset", type=int, default=200, help="first of them (line of molecule_qa_test)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--batch-sizes", default="1,8,32,64")
    parser.add_argument("--batch-new-tokens", type=int, default=32)
    parser.add_argument("--batch-modes", default="none,bf16,int8,int4", help="quantize modes timed in batches")
    parser.add_argument("--hf-int8", action="store_true", help="also time HF generate on torch.ao dynamic int8")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for every engine (default: torch's own, = cores); on a busy shared "
                             "machine 1 thread is far more stable than 2 (no barrier stalls)")
    parser.add_argument("--out", default=str(RESULTS / "decode.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.batch_sizes = [int(x) for x in args.batch_sizes.split(",")]
    parts = set(args.parts.split(","))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from biomedgpt.io import atomic_write_text
    from biomedgpt.model.biomedgpt import BioMedGPT

    report = {"machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                          "torch": torch.__version__, "load_average_start": os.getloadavg()},
              "command": " ".join([Path(sys.executable).name, *sys.argv])}
    model = BioMedGPT.from_preset("small")
    bandwidth, read_bw = copy_bandwidth(), read_bandwidth()
    report["copy_bandwidth_GBps"] = round(bandwidth / 1e9, 1)
    report["read_bandwidth_GBps"] = round(read_bw / 1e9, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    steps = [("speed", "batch1_decode", lambda: bench_speed(model, args, bandwidth, read_bw)),
             ("batch", "batched", lambda: bench_batches(model, args, matmul_peak())),
             ("quality", "quality", lambda: _quality(model)),
             ("compile", "compile", lambda: bench_compile(model)),
             ("beam", "beam", lambda: bench_beam(args)),
             ("cold", "cold_start", lambda: bench_cold_start(args))]
    for part, key, run in steps:
        if part in parts:
            report[key] = run()
            report["machine"]["load_average_end"] = os.getloadavg()
            # Written after every part, so a long run that is cut short keeps what it measured.
            atomic_write_text(out, json.dumps(report, indent=2) + "\n")
            atomic_write_text(out.with_suffix(".md"), markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
