"""`biomedgpt serve`: load one model and run the HTTP API + web page under uvicorn."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

ENV_API_KEY = "BIOMEDGPT_API_KEY"
logger = logging.getLogger(__name__)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve", help="OpenAI-compatible HTTP API and web page",
        description="Serve a model over an OpenAI-compatible HTTP API (/v1/chat/completions, /v1/embeddings, "
                    "/v1/models, /health) with a web page at /. Binds 127.0.0.1 unless --host says otherwise.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default=None,
                        help="model folder or preset (tiny, small, biomedgpt-10b); default: $BIOMEDGPT_MODEL, "
                             "else the shipped biomedgpt-small")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (0.0.0.0 exposes it to the network)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", default=None,
                        help=f"require 'Authorization: Bearer KEY' on /v1 (default: ${ENV_API_KEY} if set; "
                             "prefer the variable: command lines are visible to other users)")
    parser.add_argument("--model-name", default=None,
                        help="the model id clients send (default: the folder or preset name)")
    parser.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                        help="allow browser pages from this origin (repeatable; default: CORS off)")
    parser.add_argument("--index", default=None, metavar="PATH",
                        help="retrieval index (biomedgpt.retrieval) for the 'evidence' field of answers "
                             "(default: the model folder's index.json.gz, when it ships one)")
    parser.add_argument("--max-queue", type=int, default=32, help="waiting requests before 429")
    parser.add_argument("--max-batch", type=int, default=8, help="requests answered by one generate call")
    parser.add_argument("--timeout", type=float, default=120.0, help="per-request timeout, seconds")
    parser.add_argument("--max-tokens-limit", type=int, default=512, help="highest max_tokens a client may ask")
    parser.add_argument("--max-prompt-tokens", type=int, default=2048)
    parser.add_argument("--max-body-bytes", type=int, default=1 << 20)
    parser.add_argument("--engine", choices=("fast", "hf"), default=None,
                        help="decode loop for every request (default: the inference default, see docs/performance.md)")
    parser.add_argument("--quantize", choices=("none", "bf16", "int8", "int4"), default=None,
                        help="LM weight precision for the fast engine (default none)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for the model (OMP_NUM_THREADS; default: torch's choice, one per core); "
                             "1 is much faster when other processes keep the cores busy")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    parser.set_defaults(func=run_serve)


def _model_name(model_arg: str | None) -> str:
    from biomedgpt.inference import default_model_path

    name = model_arg or default_model_path()
    return Path(name).name if Path(name).expanduser().is_dir() else name


def run_serve(args) -> int:
    if args.threads is not None:
        if args.threads < 1:
            from biomedgpt.errors import UserError

            raise UserError(f"--threads must be >= 1, got {args.threads}")
        # Before torch is imported: OpenMP reads it once, for every thread (the worker and its stream threads).
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import uvicorn

    from biomedgpt.errors import UserError
    from biomedgpt.inference import default_model_path, load_model
    from biomedgpt.inference_cli import _quiet_transformers
    from biomedgpt.retrieval import load_index, model_index_path
    from biomedgpt.serve.app import create_app
    from biomedgpt.serve.config import ServerConfig

    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be in [0, 65535], got {args.port}")
    try:
        cfg = ServerConfig(
            model_id=args.model_name or _model_name(args.model),
            api_key=args.api_key or os.environ.get(ENV_API_KEY) or None,
            cors_origins=list(args.cors_origin), max_queue=args.max_queue, max_batch=args.max_batch,
            request_timeout_s=args.timeout, max_tokens_limit=args.max_tokens_limit,
            max_prompt_tokens=args.max_prompt_tokens,
            max_body_bytes=args.max_body_bytes, engine=args.engine, quantize=args.quantize)
    except ValueError as err:
        raise UserError(str(err)) from None
    index = load_index(args.index).read_proteins() if args.index else None  # before the model: fails fast
    _quiet_transformers()
    model = load_model(args.model)
    if index is None:  # the model's own (it reads evidence in its prompts), else the default for its folder
        index_path = None if model.evidence_index is not None else model_index_path(args.model or default_model_path())
        index = load_index(index_path) if index_path else model.evidence_index
    for loaded in (index, model.evidence_index):  # a broken file fails now, not at the first protein question
        if loaded is not None:
            loaded.read_proteins()  # (a no-op for an index already read)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not cfg.api_key:
        logger.warning("serving on %s without an API key: anyone who can reach it can use it", args.host)
    app = create_app(model, cfg, index)
    print(f"biomedgpt serve: model {cfg.model_id!r} on http://{args.host}:{args.port}/ "
          f"(API key {'required' if cfg.api_key else 'off'}, evidence {'on' if index else 'off'})", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=5)
    return 0
