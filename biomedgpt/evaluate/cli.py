"""`biomedgpt eval` and `biomedgpt report`: thin shells over `biomedgpt.evaluate.runner` and `.report`."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

EVAL_HELP = """\
Evaluate a model or a baseline on one benchmark file.

TASK is `qa` (free-text answers, QA records: MolT5-protocol BLEU/ROUGE/METEOR + exact match) or `mcq`
(multiple choice, MCQ records: accuracy). --model is a model folder or preset, or a baseline:
baseline:nn (molecule fingerprint / protein sequence nearest neighbour; needs --train), baseline:majority,
baseline:random. Re-running the same command resumes an interrupted run.
"""


def register(subparsers) -> None:
    ev = subparsers.add_parser("eval", help="evaluate a model or baseline on a benchmark (resumable)",
                               description=EVAL_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    ev.add_argument("task", choices=("qa", "mcq"), metavar="TASK", help="qa (free text) or mcq (multiple choice)")
    ev.add_argument("--model", required=True,
                    help="model folder, preset (tiny, small, biomedgpt-10b) or baseline:nn|majority|random")
    ev.add_argument("--data", required=True, help="JSONL records to evaluate (QA or multiple-choice schema)")
    ev.add_argument("--train", default=None,
                    help="training records: the baselines' pool / label counts, and few-shot examples")
    ev.add_argument("--out", default=None, help="run folder (default runs/eval/BENCHMARK--SYSTEM)")
    ev.add_argument("--benchmark", default=None, help="name in reports (default: the data file's name)")
    ev.add_argument("--limit", type=int, default=None, help="evaluate a fixed seeded sample of N records")
    ev.add_argument("--seed", type=int, default=0, help="sample, few-shot and random-baseline seed (default 0)")
    ev.add_argument("--batch-size", type=int, default=8, help="records per batch (default 8)")
    ev.add_argument("--protocol", choices=("logprob", "generate"), default="logprob",
                    help="mcq with a model: option-letter log-probability (default) or generate-and-parse")
    ev.add_argument("--shots", type=int, default=0, help="mcq: few-shot examples from --train (default 0)")
    ev.add_argument("--max-new-tokens", type=int, default=None,
                    help="generation cap (default 128 for qa, 16 for mcq --protocol generate)")
    ev.add_argument("--repetition-penalty", type=float, default=None,
                    help="generation repetition penalty (default: the model's, else 1.1, as `biomedgpt ask`)")
    ev.add_argument("--num-beams", type=int, default=None,
                    help="beam search width for generation (default: the model's, else 1 = greedy)")
    ev.add_argument("--quantize", choices=("none", "bf16", "int8", "int4"), default=None,
                    help="LM weights for generation (fast engine; default: the model's, else "
                         "biomedgpt.model.fast_decode's default)")
    ev.add_argument("--evidence", type=int, default=None, metavar="K",
                    help="put the K most similar known entities before each question (0: none; default: the "
                         "model's own evidence_in_prompt) -- the retrieval ablation")
    ev.add_argument("--overwrite", action="store_true", help="discard an existing run in --out")
    ev.set_defaults(func=run_eval)

    rep = subparsers.add_parser("report", help="merge eval runs into one Markdown table and a bar chart",
                                description="Merge `biomedgpt eval` run folders into Markdown tables (one per "
                                            "benchmark, with published anchors) and a bar chart PNG.")
    rep.add_argument("runs", nargs="+", metavar="RUN", help="run folders (or their metrics.json)")
    rep.add_argument("--out", default=None, help="write REPORT.md here (default: print only)")
    rep.add_argument("--plot", default=None, help="write the bar chart PNG here")
    rep.set_defaults(func=run_report)


def _sha256(path: str | None) -> str | None:
    if path is None:
        return None
    from biomedgpt.io import sha256_file

    return sha256_file(path)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "run"


def _build_spec(args):
    from biomedgpt.evaluate.runner import RunSpec

    is_baseline = args.model.startswith("baseline:")
    generation = {}
    if not is_baseline and (args.task == "qa" or args.protocol == "generate"):
        import torch

        from biomedgpt.config import (
            FALLBACK_GENERATION,
            generation_for_device,
            recommended_generation,
            resolve_generation,
        )

        # The model folder's recommended decoding (config.json `generation`) under the flags, as `biomedgpt ask`,
        # for the device load_model will put it on; answer lengths are per benchmark, not the model's.
        fallback = {**FALLBACK_GENERATION, "max_new_tokens": 128 if args.task == "qa" else 16}
        device = "cuda" if torch.cuda.is_available() else "cpu"
        recommended = {k: v for k, v in generation_for_device(recommended_generation(args.model), device).items()
                       if k in ("repetition_penalty", "num_beams", "quantize")}
        generation = resolve_generation(fallback, recommended, {
            "max_new_tokens": args.max_new_tokens, "repetition_penalty": args.repetition_penalty,
            "num_beams": args.num_beams, "quantize": args.quantize})
        # Recorded only when they change something (beams > 1, reduced precision), so earlier runs' specs stay
        # the same: 1 beam is greedy, and "none" is the fast loop's default (the model's own dtype).
        if generation.get("num_beams") == 1:
            del generation["num_beams"]
        if generation.get("quantize") == "none":
            del generation["quantize"]
    model = args.model if is_baseline or not Path(args.model).is_dir() else str(Path(args.model).resolve())
    return RunSpec(
        task=args.task, model=model, data=str(Path(args.data).resolve()), data_sha256=_sha256(args.data),
        benchmark=args.benchmark or Path(args.data).stem,
        train=str(Path(args.train).resolve()) if args.train else None, train_sha256=_sha256(args.train),
        limit=args.limit, seed=args.seed,
        protocol=None if is_baseline else (args.protocol if args.task == "mcq" else "generate"),
        shots=args.shots if args.task == "mcq" and not is_baseline else 0,
        generation=generation, batch_size=args.batch_size,
        evidence=None if is_baseline else args.evidence,
    )


def _model_predictor(args, spec, records, train_records):
    import torch
    import transformers

    from biomedgpt.evaluate import predictors
    from biomedgpt.evaluate.multiple_choice import pick_shots
    from biomedgpt.inference import GenerationSettings, load_model

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    torch.manual_seed(spec.seed)
    model = load_model(args.model)
    if spec.evidence is not None:
        from biomedgpt.inference import attach_evidence_index

        model.config.evidence_in_prompt = spec.evidence
        attach_evidence_index(model, args.model if Path(args.model).is_dir() else None)
    settings = GenerationSettings(**spec.generation, seed=spec.seed) if spec.generation else None
    if spec.task == "qa":
        return predictors.GenerateAnswers(model, settings)
    shots = pick_shots(train_records, spec.shots, spec.seed, evaluated=records)
    if spec.protocol == "logprob":
        return predictors.LetterLogprob(model, shots)
    return predictors.GenerateLetters(model, settings, shots)


def run_eval(args) -> int:
    from biomedgpt.errors import UserError
    from biomedgpt.evaluate.baselines import BASELINE_PREFIX, make_baseline
    from biomedgpt.evaluate.runner import evaluate, load_records, prepare_run_dir, select

    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.shots < 0:
        raise UserError(f"--shots must be >= 0, got {args.shots}")
    if args.evidence is not None and args.evidence < 0:
        raise UserError(f"--evidence must be >= 0, got {args.evidence}")
    if args.train and not Path(args.train).is_file():
        raise UserError(f"training file not found: {args.train}")
    records = load_records(args.task, args.data)
    train_records = load_records(args.task, args.train) if args.train else []
    spec = _build_spec(args)
    out = Path(args.out) if args.out else Path("runs") / "eval" / f"{_slug(spec.benchmark)}--{_slug(spec.system)}"
    selected = select(records, args.limit, args.seed)
    details: dict = {}
    if args.model.startswith(BASELINE_PREFIX):
        # The nearest-neighbour pool is cleaned against the whole evaluated file, not only the sample.
        predictor = make_baseline(args.model[len(BASELINE_PREFIX):], train_records, records,
                                  multiple_choice=args.task == "mcq", seed=args.seed)
        details = dict(predictor.details)
        prepare_run_dir(out, spec, args.overwrite)
    else:
        prepare_run_dir(out, spec, args.overwrite)  # refuse a mismatched folder before loading the model
        predictor = _model_predictor(args, spec, records, train_records)
    result = evaluate(spec, selected, predictor, out, details=details)
    from biomedgpt.evaluate.report import run_markdown

    print(run_markdown(result))
    print(f"run folder: {out}", file=sys.stderr)
    return 0


def run_report(args) -> int:
    from biomedgpt.evaluate.report import load_runs, merge, plot
    from biomedgpt.io import atomic_write_text

    runs = load_runs(args.runs)
    text = merge(runs)
    print(text)
    if args.out:
        atomic_write_text(args.out, text)
    if args.plot:
        print(f"chart: {plot(runs, args.plot)}", file=sys.stderr)
    return 0
