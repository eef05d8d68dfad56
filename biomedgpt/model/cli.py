"""`biomedgpt convert` (published checkpoints → our model folder) and `biomedgpt inspect` (parameters and memory)."""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers) -> None:
    convert = subparsers.add_parser(
        "convert", help="convert published weights (OpenBioMed BioMedGPT-10B) into a biomedgpt model folder",
        description="Read the published checkpoint shard by shard (memory-mapped, weights_only=True), cast it while "
                    "loading, and write a biomedgpt model folder (config.json, model.safetensors, lm/ with "
                    "safetensors shards, SHA256SUMS). Peak host memory: about the model in --dtype plus one file.")
    convert.add_argument("checkpoint", nargs="+", help="biomedgpt_10b.pth (or its parts, each a state-dict file)")
    convert.add_argument("--from", dest="source", required=True, choices=["openbiomed"],
                         help="layout of the input: openbiomed = the OpenBioMed BioMedGPT-10B state dict")
    convert.add_argument("--lm-dir", required=True,
                         help="the BioMedGPT-LM-7B folder (its config.json and tokenizer files are used)")
    convert.add_argument("--esm-config", default=None,
                         help="ESM-2 config folder or hub id (default: the published ESM-2 config matching the "
                              "checkpoint's depth and width, esm2_t36_3B_UR50D for the release)")
    convert.add_argument("--out", required=True, help="output model folder")
    convert.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    convert.add_argument("--sha256", action="append", default=[], metavar="HEX",
                         help="expected sha256 of each checkpoint file, in order (verified before loading)")
    convert.add_argument("--max-shard-size", default="5GB", help="LM safetensors shard size (default 5GB)")
    convert.add_argument("--force", action="store_true", help="replace --out if it exists")
    convert.set_defaults(func=run_convert)

    inspect = subparsers.add_parser(
        "inspect", help="parameters per part, dtypes and memory estimates for inference and each training stage",
        description="Describe a model without loading its weights: a preset (tiny, small, biomedgpt-10b), a "
                    "biomedgpt model folder, an HF LM folder (e.g. BioMedGPT-LM-7B) or an OpenBioMed .pth file.")
    inspect.add_argument("model", help="preset name, model folder, HF LM folder or .pth file")
    inspect.add_argument("--lm-dir", default=None, help="for a .pth: the LM folder whose config to use")
    inspect.add_argument("--batch-size", type=int, default=1)
    inspect.add_argument("--seq-len", type=int, default=2048, help="tokens per sequence (default 2048)")
    inspect.add_argument("--lora-rank", type=int, default=16)
    inspect.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"],
                         help="weights and compute dtype of the estimates (default bfloat16)")
    inspect.add_argument("--json", action="store_true", help="print JSON instead of a table")
    inspect.set_defaults(func=run_inspect)


def run_convert(args: argparse.Namespace) -> int:
    import time

    from biomedgpt.model.published import convert_openbiomed

    start = time.perf_counter()
    report = convert_openbiomed(args.checkpoint, args.lm_dir, args.out, esm_config=args.esm_config,
                                dtype=args.dtype, sha256=args.sha256, max_shard_size=args.max_shard_size,
                                overwrite=args.force)
    print(report.summary(), file=sys.stderr)
    print(f"wrote {args.out} in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return 0


def run_inspect(args: argparse.Namespace) -> int:
    from biomedgpt.model.inspect import Workload, inspect_model

    work = Workload(batch_size=args.batch_size, seq_len=args.seq_len, lora_rank=args.lora_rank, dtype=args.dtype)
    result = inspect_model(args.model, work, lm_dir=args.lm_dir)
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "text"}, indent=2))
    else:
        print(result["text"])
    return 0
