"""Training throughput and memory, measured with the real training loop.

    .venv/bin/python benchmarks/train_throughput.py align-cache   # align samples/s with vs without the caches
    .venv/bin/python benchmarks/train_throughput.py align-step    # align step cost per cache mode, interleaved
    .venv/bin/python benchmarks/train_throughput.py lm            # SmolLM2-135M lm-stage tokens/s vs matmul FLOP/s
    .venv/bin/python benchmarks/train_throughput.py memory        # stage 2 of BioMedGPT-10B: GPU memory per device

Results go to benchmarks/results/train_<name>.json (and .md). Each run takes a few minutes on 2 CPU cores.
`align-cache` reads data/build/{molecule,protein}_qa_train.jsonl (scripts/build_training_data.sh builds them).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"


def _machine() -> dict:
    return {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "load_average_1min": os.getloadavg()[0], "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def _write(name: str, result: dict, markdown: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"train_{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"train_{name}.md").write_text(markdown)
    print(markdown)


def _run(stage: str, settings: dict) -> tuple[dict, list[dict]]:
    from biomedgpt.train.config import build_config, merge
    from biomedgpt.train.loop import train
    from biomedgpt.train.stages import STAGE_DEFAULTS

    with tempfile.TemporaryDirectory() as tmp:
        config = build_config(merge(STAGE_DEFAULTS[stage], {**settings, "stage": stage, "output_dir": tmp,
                                                             "progress": False}))
        summary = train(config)
        rows = [json.loads(line) for line in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
    return summary, [r for r in rows if "loss" in r]


# ---------------------------------------------------------------------------------------------- align cache
def _align_data(directory: Path, per_kind: int) -> Path:
    """`per_kind` molecule and `per_kind` protein QA records (proteins of <= 200 residues) from data/build."""
    from biomedgpt.data.records import read_qa, write_jsonl

    build = REPO / "data" / "build"
    molecules = [r for _, r in zip(range(per_kind), read_qa(build / "molecule_qa_train.jsonl"))]
    proteins = []
    for record in read_qa(build / "protein_qa_train.jsonl"):
        if len(record.proteins[0]) <= 200:
            proteins.append(record)
        if len(proteins) == per_kind:
            break
    path = directory / "align.jsonl"
    write_jsonl(path, molecules + proteins)
    return path


def bench_align_cache(args) -> None:
    """Steady-state samples/s of the align stage (small preset) over epoch 2, where the cache is warm. The two
    modes alternate (`--repeats` rounds) so that a change in machine load hits both alike."""
    modes = {"encoder cache + prompt-prefix cache": (True, True), "encoder cache only": (True, False),
             "no cache": (False, False)}
    runs: dict[str, list[dict]] = {mode: [] for mode in modes}
    steps_per_epoch = args.records // args.batch
    with tempfile.TemporaryDirectory() as tmp:
        data = _align_data(Path(tmp), args.records // 2)
        for _ in range(args.repeats):
            for mode, (cache, prefix) in modes.items():
                settings = {"model": "small", "cache_encoder_outputs": cache, "cache_prompt_prefix": prefix,
                            "seed": 0, "threads": args.threads,
                            "data": {"train": [str(data)], "max_length": 512},
                            "schedule": {"batch_size": args.batch, "max_steps": 2 * steps_per_epoch,
                                         "save_every": 1000}}
                summary, rows = _run("align", settings)
                first, last = rows[steps_per_epoch - 1], rows[-1]
                seconds = last["elapsed_s"] - first["elapsed_s"]
                runs[mode].append({
                    "samples_per_s_epoch2": steps_per_epoch * args.batch / seconds,
                    "tokens_per_s_epoch2": (last["tokens"] - first["tokens"]) / seconds,
                    "final_loss": summary["loss"], "encoder_cache": summary["encoder_cache"],
                    "load_average_1min": os.getloadavg()[0]})
    mean = {mode: sum(r["samples_per_s_epoch2"] for r in rs) / len(rs) for mode, rs in runs.items()}
    tokens = {mode: sum(r["tokens_per_s_epoch2"] for r in rs) / len(rs) for mode, rs in runs.items()}
    speedup = {mode: mean[mode] / mean["no cache"] for mode in modes}
    result = {"machine": _machine(), "model": "small", "records": args.records, "batch_size": args.batch,
              "threads": args.threads, "runs": runs, "mean_samples_per_s": mean, "speedup": speedup}
    md = ("# align stage: encoder-output cache (small preset, CPU)\n\n"
          f"{args.records} QA records (half molecule, half protein <= 200 residues), batch {args.batch}, "
          f"threads {args.threads or 'default'}; second epoch (cache warm); modes alternated {args.repeats}x.\n\n"
          "| mode | samples/s (mean) | tokens/s (mean) | per run | vs no cache |\n|---|---|---|---|---|\n"
          + "".join(f"| {mode} | {mean[mode]:.3f} | {tokens[mode]:.1f} | "
                    + ", ".join(f"{r['samples_per_s_epoch2']:.3f}" for r in runs[mode])
                    + f" | {speedup[mode]:.2f}x |\n" for mode in runs)
          + f"\nLoad average (1 min) at the end: {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} cores (shared machine).\n"
          f"Command: `.venv/bin/python benchmarks/train_throughput.py align-cache --repeats {args.repeats}"
          + (f" --threads {args.threads}" if args.threads else "") + "`\n")
    _write("align_cache" + (f"_threads{args.threads}" if args.threads else ""), result, md)


def bench_align_step(args) -> None:
    """Seconds per align training step (forward + backward, frozen LM) for each cache mode, measured in one
    process on the same batches with the modes interleaved round by round, so a change in machine load hits
    every mode alike. The caches are warmed first (steady state: epoch 2 onwards)."""
    import statistics

    from biomedgpt.inference import load_model
    from biomedgpt.train.datasets import QAExamples
    from biomedgpt.train.objectives import CausalLMObjective, EncoderCache

    model = load_model("small")
    model.requires_grad_(False)
    for adapter in (model.proj_mol, model.proj_prot):
        adapter.requires_grad_(True)
    model.train()
    for encoder in (model.mol_structure_encoder, model.prot_structure_encoder):
        encoder.eval()
    with tempfile.TemporaryDirectory() as tmp:
        data = QAExamples.from_files([str(_align_data(Path(tmp), args.records // 2))], model, 512, None)
    batches = [data.collate(list(range(i, i + args.batch)), 1) for i in range(0, len(data) - args.batch + 1,
                                                                            args.batch)]
    cache = EncoderCache(model)
    modes = {"encoder cache + prompt-prefix cache": CausalLMObjective(model, cache, frozen_lm_prefix=True),
             "encoder cache only": CausalLMObjective(model, cache),
             "no cache": CausalLMObjective(model)}
    times: dict[str, list[float]] = {mode: [] for mode in modes}
    for round_index in range(args.rounds + 1):  # round 0 warms the caches and is not counted
        for mode, objective in modes.items():
            for batch in batches:
                start = time.perf_counter()
                loss, _ = objective(batch)
                loss.backward()
                model.zero_grad(set_to_none=True)
                if round_index:
                    times[mode].append(time.perf_counter() - start)
    median = {mode: statistics.median(values) for mode, values in times.items()}
    samples = {mode: args.batch / value for mode, value in median.items()}
    result = {"machine": _machine(), "model": "small", "records": len(data), "batch_size": args.batch,
              "threads": torch.get_num_threads(), "rounds": args.rounds, "seconds_per_step": times,
              "median_seconds_per_step": median, "samples_per_s": samples,
              "speedup_vs_no_cache": {mode: median["no cache"] / value for mode, value in median.items()}}
    md = ("# align step cost by cache mode (small preset, frozen LM, CPU)\n\n"
          f"{len(data)} QA records (half molecule, half protein <= 200 residues) in batches of {args.batch}; "
          f"forward + backward; modes interleaved over {args.rounds} rounds after a warm-up round; "
          f"threads {torch.get_num_threads()}.\n\n| mode | median s/step | samples/s | vs no cache |\n"
          "|---|---|---|---|\n"
          + "".join(f"| {mode} | {median[mode]:.2f} | {samples[mode]:.3f} | "
                    f"{result['speedup_vs_no_cache'][mode]:.2f}x |\n" for mode in modes)
          + f"\nLoad average (1 min) at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (shared).\n"
          "Command: `.venv/bin/python benchmarks/train_throughput.py align-step"
          + (f" --threads {args.threads}" if args.threads else "") + "`\n")
    _write("align_step" + (f"_threads{args.threads}" if args.threads else ""), result, md)


# ---------------------------------------------------------------------------------------------- lm tokens/s
def measure_matmul_flops(size: int = 1024, seconds: float = 5.0, device: str = "cpu",
                         dtype: torch.dtype = torch.float32) -> float:
    """FLOP/s of square matmuls (the machine's practical peak): fp32 with torch's default threads on a CPU; on a
    GPU call it with the dtype training computes in (bf16 autocast) and a size that fills the chip."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    sync()
    return 2 * size**3 * count / (time.perf_counter() - start)


def training_flops_per_token(llm, seq_len: int) -> float:
    """6 N (forward + backward through every weight matrix, incl. the output layer) + attention scores:
    12 x layers x seq_len x hidden (Kaplan et al. 2020; the causal mask is not discounted)."""
    config = llm.config
    matmul_params = sum(p.numel() for name, p in llm.named_parameters() if "norm" not in name)
    if getattr(config, "tie_word_embeddings", False):
        matmul_params += 0  # the tied matrix is used once (output layer); the lookup is not a matmul
    else:
        matmul_params -= llm.get_input_embeddings().weight.numel()
    return 6 * matmul_params + 12 * config.num_hidden_layers * seq_len * config.hidden_size


def bench_lm(args) -> None:
    from biomedgpt.inference import load_model

    cuda = torch.cuda.is_available()  # the loop then trains on the GPU with bf16 autocast (precision: auto)
    matmul = (measure_matmul_flops(8192, device="cuda", dtype=torch.bfloat16) if cuda else measure_matmul_flops())
    source = args.data or REPO.parent / "shared" / "data" / "biomed-text-corpus" / "corpus.jsonl.gz"
    settings = {"model": args.model, "seed": 0, "threads": args.threads,
                "data": {"train": [str(source)], "max_length": args.seq, "limit": 400},
                "schedule": {"batch_size": args.batch, "max_steps": args.steps, "save_every": 1000}}
    summary, rows = _run("lm", settings)
    per_token = training_flops_per_token(load_model(args.model).llm, args.seq)
    steady = rows[1:]  # the first step includes one-time allocation
    seconds = steady[-1]["elapsed_s"] - rows[0]["elapsed_s"]
    tokens_per_s = (steady[-1]["tokens"] - rows[0]["tokens"]) / seconds
    achieved = tokens_per_s * per_token
    device = torch.cuda.get_device_name() if cuda else "CPU"
    result = {"machine": {**_machine(), "device": device}, "model": f"{args.model}: all LM weights trainable, AdamW",
              "batch": args.batch, "seq_len": args.seq, "steps": args.steps, "tokens_per_s": tokens_per_s,
              "train_flops_per_token": per_token, "achieved_flops": achieved, "matmul_flops": matmul,
              "fraction_of_matmul_peak": achieved / matmul, "final_loss": summary["loss"]}
    peak = "8192^2 bf16" if cuda else "1024^2 fp32"
    md = (f"# lm stage throughput: {args.model} on {device}\n\n"
          f"batch {args.batch} x {args.seq} tokens, {args.steps} steps (first excluded), "
          f"{'bf16 autocast' if cuda else 'fp32'}, AdamW.\n\n"
          f"| tokens/s | training FLOP/token | achieved GFLOP/s | matmul GFLOP/s ({peak}) | fraction |\n"
          f"|---|---|---|---|---|\n| {tokens_per_s:.1f} | {per_token / 1e9:.3f} G | {achieved / 1e9:.1f} | "
          f"{matmul / 1e9:.1f} | {achieved / matmul:.1%} |\n\n"
          f"Machine load average at start: {result['machine']['load_average_1min']}.\n"
          "Command: `python benchmarks/train_throughput.py " + " ".join(sys.argv[1:]) + "`\n")
    _write("lm" + ("_cuda" if cuda else "") + (f"_threads{args.threads}" if args.threads else ""), result, md)


# ---------------------------------------------------------------------------------------------- memory
def bench_memory(args) -> None:
    from biomedgpt.train.memory_estimate import stage2_estimate

    result = stage2_estimate(batch=args.batch, seq_len=args.seq, gpus=8)
    _write("memory_10b_stage2", result, result.pop("markdown"))


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    align = sub.add_parser("align-cache")
    align.add_argument("--records", type=int, default=8)
    align.add_argument("--batch", type=int, default=4)
    align.add_argument("--repeats", type=int, default=2)
    align.set_defaults(func=bench_align_cache)
    step = sub.add_parser("align-step")
    step.add_argument("--records", type=int, default=8)
    step.add_argument("--batch", type=int, default=4)
    step.add_argument("--rounds", type=int, default=4)
    step.set_defaults(func=bench_align_step)
    lm = sub.add_parser("lm")
    lm.add_argument("--batch", type=int, default=8)
    lm.add_argument("--seq", type=int, default=128)
    lm.add_argument("--steps", type=int, default=5)
    lm.add_argument("--model", default="small", help="model folder or preset (default small: SmolLM2-135M)")
    lm.add_argument("--data", type=Path, default=None,
                    help="text JSONL (default ../shared/data/biomed-text-corpus/corpus.jsonl.gz)")
    lm.set_defaults(func=bench_lm)
    memory = sub.add_parser("memory")
    memory.add_argument("--batch", type=int, default=4)
    memory.add_argument("--seq", type=int, default=1024)
    memory.set_defaults(func=bench_memory)
    for command in (align, step, lm):
        command.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
