"""Peak host memory of loading a sharded fp32 checkpoint into bf16: our streaming loader vs a naive load.

Writes a synthetic Llama-shaped HF folder (config.json, `pytorch_model-0000X-of-0000N.bin`, index JSON) of about
`--size-mb` MB in fp32, then loads it in a fresh subprocess per method and reads that process's peak RSS
(`VmHWM` in /proc/self/status) against its RSS just before loading:

- streaming: `biomedgpt.model.published.load_hf_lm(folder, dtype="bfloat16")` (meta init, mmap, cast per tensor);
- naive: what the reference loader did: build the model in fp32, `torch.load` every shard into one state dict,
  `load_state_dict`, then cast to bf16.

    .venv/bin/python benchmarks/load_memory.py --size-mb 1000 --shards 4 --out benchmarks/results/load_memory.json

The test `tests/model/test_published_memory.py` runs the streaming half of this script.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MB = 1 << 20


def llama_config(size_mb: float) -> dict:
    """A Llama config of about `size_mb` MB in fp32: hidden 1024, vocabulary 32000, as many layers as fit."""
    hidden, inter, vocab = 1024, 2816, 32000
    per_layer = 4 * hidden * hidden + 3 * hidden * inter + 2 * hidden
    layers = max(1, round((size_mb * MB / 4 - 2 * vocab * hidden - hidden) / per_layer))
    return {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": hidden,
            "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": 16,
            "num_key_value_heads": 16, "vocab_size": vocab, "max_position_embeddings": 2048,
            "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "torch_dtype": "float32"}


def write_checkpoint(folder: Path, size_mb: float, shards: int) -> dict:
    """Write the synthetic folder shard by shard (the writer never holds more than one shard)."""
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    config = llama_config(size_mb)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    with init_empty_weights():
        skeleton = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config))
    shapes = [(name, tuple(p.shape)) for name, p in skeleton.named_parameters()]
    total = sum(torch.Size(s).numel() * 4 for _, s in shapes)
    budget, names = total / shards, [f"pytorch_model-{i:05d}-of-{shards:05d}.bin" for i in range(1, shards + 1)]
    weight_map, shard, shard_bytes, index, sizes = {}, {}, 0, 0, []
    for position, (name, shape) in enumerate(shapes):
        shard[name] = torch.empty(shape).fill_(tensor_value(position))  # cheap to write; values only identify
        shard_bytes += shard[name].numel() * 4
        weight_map[name] = names[index]
        last = position == len(shapes) - 1
        if last or (shard_bytes >= budget and index < shards - 1):
            torch.save(shard, folder / names[index])
            sizes.append((folder / names[index]).stat().st_size)
            shard, shard_bytes, index = {}, 0, index + 1
    (folder / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return {"fp32_bytes": total, "bf16_bytes": total // 2, "largest_shard_bytes": max(sizes), "shards": len(sizes),
            "layers": config["num_hidden_layers"]}


def tensor_value(position: int) -> float:
    """The constant the synthetic checkpoint's `position`-th tensor is filled with (exact in bf16)."""
    return (position % 64 + 1) / 64


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def child(method: str, folder: Path) -> None:
    """Runs in a fresh process: import everything, note RSS, load, print RSS figures as JSON."""
    import gc

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM  # noqa: F401 (import cost before the baseline)

    from biomedgpt.model.checkpoint import checkpoint_files
    from biomedgpt.model.published import load_hf_lm

    gc.collect()
    before = _status_kb("VmRSS")
    start = time.perf_counter()
    if method == "streaming":
        model, _, _ = load_hf_lm(folder, dtype="bfloat16")
    else:
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder), dtype=torch.float32)
        state = {}
        for path in checkpoint_files(folder):
            state.update(torch.load(path, map_location="cpu", weights_only=True))
        model.load_state_dict(state)
        del state
        model = model.to(torch.bfloat16)
    seconds = time.perf_counter() - start
    peak = _status_kb("VmHWM")
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    values_ok = all(bool((p == tensor_value(i)).all()) for i, (_, p) in enumerate(model.named_parameters()))
    print(json.dumps({"method": method, "rss_before": before, "peak_rss": peak, "increase": peak - before,
                      "model_bytes": params, "seconds": seconds, "dtype": str(next(model.parameters()).dtype),
                      "values_ok": values_ok}))


def measure(method: str, folder: Path) -> dict:
    """Run `child` in a fresh interpreter (so the peak belongs to this load alone)."""
    result = subprocess.run([sys.executable, __file__, "--child", method, "--folder", str(folder)],
                            capture_output=True, text=True, check=False, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"{method} load failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=float, default=1000)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--methods", default="streaming,naive")
    parser.add_argument("--folder", type=Path, default=None, help="where to write (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=None, help="write the results JSON here")
    parser.add_argument("--child", choices=["streaming", "naive"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.folder)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.folder or Path(tmp) / "synthetic-llama"
        checkpoint = write_checkpoint(folder, args.size_mb, args.shards)
        runs = [measure(method, folder) for method in args.methods.split(",")]
    result = {"checkpoint": checkpoint, "runs": runs}
    for run in runs:
        run["increase_over_bf16_plus_shard"] = run["increase"] / (checkpoint["bf16_bytes"]
                                                                  + checkpoint["largest_shard_bytes"])
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
