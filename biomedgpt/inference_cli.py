"""`biomedgpt ask` and `biomedgpt chat`: thin shells over `biomedgpt.inference`."""

from __future__ import annotations

import argparse
import os
import sys
import time


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None,
                        help="model folder or preset (tiny, small, biomedgpt-10b); default: $BIOMEDGPT_MODEL, "
                             "else the shipped biomedgpt-small")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="answer length cap (default: the model's, else 128)")
    parser.add_argument("--temperature", type=float, default=None,
                        help="0 = greedy (default); > 0 samples (and turns off the model's beam search)")
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--repetition-penalty", type=float, default=None,
                        help="> 1 discourages loops in small models (default: the model's, else 1.1)")
    parser.add_argument("--seed", type=int, default=None, help="seed for sampling")
    parser.add_argument("--num-beams", type=int, default=None,
                        help="beam search with N beams (default: the model's, else 1 = off; in the fast loop with "
                             "repetition penalty 1, else in HF generate)")
    parser.add_argument("--engine", choices=("fast", "hf"), default=None,
                        help="decoding loop: fast (default; same greedy output as hf) or hf (transformers generate)")
    parser.add_argument("--quantize", choices=("none", "bf16", "int8", "int4"), default=None,
                        help="LM weight precision for the fast engine (default: the model's, else none; see "
                             "docs/performance.md)")
    # Defaults (None) above mean "not given": the model folder's recommended decoding (config.json `generation`,
    # shown by --timing) fills them, then biomedgpt.config.FALLBACK_GENERATION.


def register(subparsers) -> None:
    ask = subparsers.add_parser("ask", help="ask one question about molecules and/or proteins",
                                description="Ask one question; attach molecules with --smiles and proteins "
                                            "with --protein (each may be repeated).")
    ask.add_argument("question", help="the question, in free text")
    ask.add_argument("--smiles", action="append", default=[], metavar="SMILES", help="a molecule (repeatable)")
    ask.add_argument("--protein", action="append", default=[], metavar="SEQ",
                     help="a protein sequence, optionally FASTA (repeatable)")
    ask.add_argument("--timing", action="store_true", help="print load and generation timings to stderr")
    ask.add_argument("--evidence", type=int, default=3, metavar="K",
                     help="show the K most similar known molecules/proteins from the model's index (0: off)")
    ask.add_argument("--index", default=None, metavar="PATH",
                     help="retrieval index for --evidence (default: the model folder's index.json.gz, if any)")
    _add_model_options(ask)
    ask.set_defaults(func=run_ask, exit_at_once=True, fast_start=True)

    chat = subparsers.add_parser("chat", help="multi-turn conversation in the terminal",
                                 description="Multi-turn chat. Commands: /smiles SMILES, /protein SEQ attach "
                                             "entities to your next message; /reset; /quit.")
    _add_model_options(chat)
    chat.set_defaults(func=run_chat, exit_at_once=True, fast_start=True)


def _settings(args, recommended: dict | None = None):
    """The GenerationSettings of these flags over the model's recommended decoding (`recommended`; call once
    without it before loading the model, so that a bad flag fails at once)."""
    from biomedgpt.config import FALLBACK_GENERATION, resolve_generation
    from biomedgpt.inference import GenerationSettings

    explicit = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "top_p": args.top_p,
                "repetition_penalty": args.repetition_penalty, "num_beams": args.num_beams,
                "quantize": args.quantize}
    try:
        return GenerationSettings(**resolve_generation(FALLBACK_GENERATION, recommended or {}, explicit),
                                  seed=args.seed, engine=args.engine)
    except ValueError as err:
        from biomedgpt.errors import UserError

        raise UserError(str(err)) from None


def _quiet_transformers() -> None:
    """No transformers warnings or progress bars in a terminal answer; without importing transformers (~0.4 s of
    a cold start) when the model may not need it at all (`load_model(lite=True)`)."""
    if "transformers" in sys.modules:
        import transformers

        transformers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()
    else:  # read by transformers when (if) it is imported
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def run_ask(args) -> int:
    from biomedgpt.inference import ask, load_model, prepare_entities, recommended_decoding

    _settings(args)  # fail fast on bad flags and bad input, before loading anything
    prepare_entities(None, args.smiles, args.protein)
    _quiet_transformers()
    start = time.perf_counter()
    model = load_model(args.model, lite=True)
    loaded = time.perf_counter()
    settings = _settings(args, recommended_decoding(model))
    answer = ask(model, args.question, args.smiles, args.protein, settings)
    done = time.perf_counter()
    print(answer)
    if args.evidence > 0 and (args.smiles or args.protein):
        _print_evidence(args, model)
    if args.timing:
        print(f"[load {loaded - start:.2f} s, answer {done - loaded:.2f} s; {settings.describe()}]", file=sys.stderr)
    return 0


def _print_evidence(args, model) -> None:
    """Nearest known entities with their annotations, so the reader can check the answer against them."""
    from biomedgpt.inference import Message, default_model_path
    from biomedgpt.retrieval import find_evidence, load_index, model_index_path

    index = None if args.index else model.evidence_index  # the model's own, when it reads evidence in its prompts
    if index is None:
        path = args.index or model_index_path(args.model or default_model_path())
        if path is None:
            return
        index = load_index(path)
    messages = [Message("user", args.question, args.smiles, args.protein)]
    for item in find_evidence(index, messages, args.evidence):
        query = item["query"] if len(item["query"]) <= 40 else item["query"][:37] + "..."
        print(f"\nEvidence: known {item['type']}s most similar to {query}")
        for neighbor in item["neighbors"]:
            annotation = " ".join(neighbor["annotation"].split())
            annotation = annotation if len(annotation) <= 160 else annotation[:157] + "..."
            print(f"  {neighbor['similarity']:.2f}  {neighbor['id']}: {annotation}")


def run_chat(args) -> int:
    from biomedgpt.errors import UserError
    from biomedgpt.inference import Message, load_model, prepare_entities, recommended_decoding, stream

    _settings(args)
    _quiet_transformers()
    model = load_model(args.model, lite=True)
    settings = _settings(args, recommended_decoding(model))
    history: list[Message] = []
    smiles: list[str] = []
    proteins: list[str] = []
    interactive = sys.stdin.isatty()
    print("biomedgpt chat — /smiles SMILES, /protein SEQ, /reset, /quit", file=sys.stderr)
    while True:
        if interactive:
            print("you> ", end="", flush=True, file=sys.stderr)
        line = sys.stdin.readline()
        if not line:
            break
        line = line.strip()
        if not line:
            continue
        command, _, rest = line.partition(" ")
        try:
            if command == "/quit":
                break
            if command == "/reset":
                history, smiles, proteins = [], [], []
                print("(conversation cleared)", file=sys.stderr)
            elif command == "/smiles":
                prepare_entities(model, [rest], [])
                smiles.append(rest.strip())
                print(f"(molecule attached: {rest.strip()})", file=sys.stderr)
            elif command == "/protein":
                prepare_entities(model, [], [rest])
                proteins.append(rest.strip())
                print(f"(protein attached: {len(rest.strip())} residues)", file=sys.stderr)
            else:
                history.append(Message("user", line, smiles, proteins))
                smiles, proteins = [], []
                print("biomedgpt> ", end="", flush=True)
                pieces = []
                for piece in stream(model, history, settings):
                    pieces.append(piece)
                    print(piece, end="", flush=True)
                print()
                history.append(Message("assistant", "".join(pieces).strip()))
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
    return 0
