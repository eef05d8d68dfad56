"""The one inference API that the CLI, batch jobs and the server all use.

A conversation is a list of `Message`s; a user message may carry molecules (SMILES) and proteins (sequences),
which are validated here, before any model work, so bad input fails fast with a clear `UserError`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from biomedgpt.constants import ENV_MODEL, REPO_MODELS_DIR
from biomedgpt.data.collate import Example, collate, entity_prefix, render_prompt, tokenize_prompt
from biomedgpt.errors import ModelNotFoundError
from biomedgpt.modalities.molecule import DEFAULT_MAX_ATOMS, MoleculeGraph, smiles_to_graph
from biomedgpt.modalities.protein import DEFAULT_MAX_RESIDUES, normalize_sequence
from biomedgpt.model.biomedgpt import BioMedGPT

logger = logging.getLogger(__name__)

REPO_MODEL_DIR = REPO_MODELS_DIR / "biomedgpt-small"


@dataclass
class Message:
    role: str  # "system", "user" or "assistant"
    text: str
    smiles: list[str] = field(default_factory=list)
    proteins: list[str] = field(default_factory=list)


@dataclass
class GenerationSettings:
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 = greedy (deterministic); > 0 samples
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    num_beams: int = 1  # > 1: beam search (HF's algorithm; the fast loop runs it, token for token as HF)
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    engine: str | None = None  # "fast" | "hf"; None = biomedgpt.model.fast_decode.DEFAULT_ENGINE
    quantize: str | None = None  # "none" | "bf16" | "int8" | "int4" (fast engine); None = DEFAULT_QUANTIZE

    def __post_init__(self) -> None:
        from biomedgpt.model.fast_decode import ENGINES, QUANT_MODES

        if self.engine is not None and self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.quantize is not None and self.quantize not in QUANT_MODES:
            raise ValueError(f"quantize must be one of {', '.join(QUANT_MODES)}, got {self.quantize!r}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if self.num_beams < 1:
            raise ValueError(f"num_beams must be >= 1, got {self.num_beams}")
        if self.num_beams > 1 and self.temperature > 0:
            raise ValueError("num_beams > 1 is beam search, which is greedy: set temperature to 0")

    @classmethod
    def for_model(cls, model: BioMedGPT, **overrides) -> GenerationSettings:
        """The model's recommended decoding (`recommended_decoding`, e.g. 4 beams for biomedgpt-small) with
        `overrides` on top; what `ask`, `generate_batch`, `stream` and `run_batch` use when given no settings."""
        return cls(**{**recommended_decoding(model), **overrides})

    def describe(self) -> str:
        """One line for logs and `--timing`, e.g. "4 beams, repetition penalty 1.0, bf16 weights"."""
        from biomedgpt.model.fast_decode import DEFAULT_QUANTIZE

        mode = (f"sampling (temperature {self.temperature}, top-p {self.top_p})" if self.temperature > 0
                else f"{self.num_beams} beams" if self.num_beams > 1 else "greedy")
        weights = self.quantize or DEFAULT_QUANTIZE
        weights = "model-dtype weights" if weights == "none" else f"{weights} weights"
        return f"{mode}, repetition penalty {self.repetition_penalty:g}, {weights}"

    def generate_kwargs(self, tokenizer) -> dict:
        kwargs = {"max_new_tokens": self.max_new_tokens, "repetition_penalty": self.repetition_penalty}
        if self.temperature > 0:
            kwargs.update(do_sample=True, temperature=self.temperature, top_p=self.top_p)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if self.num_beams > 1:
            kwargs["num_beams"] = self.num_beams
        if self.stop:
            kwargs.update(stop_strings=list(self.stop), tokenizer=tokenizer)
        if self.engine is not None:
            kwargs["engine"] = self.engine
        if self.quantize is not None:
            kwargs["quantize"] = self.quantize
        return kwargs


def recommended_decoding(model: BioMedGPT) -> dict:
    """The model config's `generation`, for the device the model is on (`config.generation_for_device`)."""
    from biomedgpt.config import generation_for_device

    return generation_for_device(model.config.generation, model.device.type)


def default_model_path() -> str:
    """`$BIOMEDGPT_MODEL`, else the trained default model in this repository, else the `small` preset."""
    if os.environ.get(ENV_MODEL):
        return os.environ[ENV_MODEL]
    if (REPO_MODEL_DIR / "config.json").is_file():
        return str(REPO_MODEL_DIR)
    return "small"


def load_model(name_or_path: str | None = None, lite: bool = False) -> BioMedGPT:
    """Load a model folder, or build a preset by name (`tiny`, `small`, `biomedgpt-10b`).

    `lite`: for answering on a CPU (`biomedgpt ask`/`chat`): a float32 folder's LM, tokenizer and protein encoder
    are built without transformers' model classes where the model allows it (`BioMedGPT.from_pretrained`), which
    saves ~2 s of a cold start; without effect on a machine with CUDA. Leave it off for training (the model must
    be transformers' own)."""
    from biomedgpt.config import PRESETS

    name_or_path = name_or_path or default_model_path()
    directory = Path(name_or_path).expanduser()
    if directory.is_dir():
        from biomedgpt.config import BioMedGPTConfig

        config_file = directory / "config.json"
        dtype = BioMedGPTConfig.load(config_file).lm.dtype if config_file.is_file() else "float32"
        if dtype != "float32" or torch.cuda.is_available():
            # Large (bf16/fp16) models: build on the meta device and stream the weights in, so host RAM stays
            # near one copy of the model in its dtype; on GPUs, place it with accelerate's device map.
            model = BioMedGPT.from_pretrained(
                directory, dtype=dtype, device_map="auto" if torch.cuda.is_available() else None
            )
        else:
            model = BioMedGPT.from_pretrained(directory, lite=lite)
        return attach_evidence_index(model, directory)
    if name_or_path in PRESETS:
        return BioMedGPT.from_preset(name_or_path)
    raise ModelNotFoundError(f"model folder not found: {name_or_path} (presets: {', '.join(sorted(PRESETS))})")


def attach_evidence_index(model: BioMedGPT, model_dir: str | Path | None) -> BioMedGPT:
    """Give a model trained with retrieval-augmented prompts (`config.evidence_in_prompt` > 0) its evidence
    index: the model folder's `index.json.gz`, else the repository's shipped index (once: a model that already
    has one keeps it)."""
    if model.config.evidence_in_prompt > 0 and model.evidence_index is None:
        from biomedgpt.retrieval import load_index, model_index_path

        path = model_index_path(model_dir)
        if path is None:
            logger.warning("this model was trained with evidence in its prompts, but no evidence index was "
                           "found; it will answer without evidence (worse answers)")
        model.evidence_index = load_index(path) if path is not None else None
    return model


def _with_evidence(model: BioMedGPT, message: Message, leave_one_out: bool) -> str:
    """The message text, preceded by the evidence of its entities when the model was trained that way."""
    k = model.config.evidence_in_prompt
    index = model.evidence_index
    if k <= 0 or index is None or message.role != "user" or not (message.smiles or message.proteins):
        return message.text
    from biomedgpt.retrieval import find_evidence, with_evidence

    return with_evidence(message.text, find_evidence(index, [message], k, leave_one_out=leave_one_out))


def prepare_entities(model_or_none, smiles: Sequence[str], proteins: Sequence[str]):
    """Validate and featurize entities; raises `InvalidSmilesError` / `InvalidSequenceError`."""
    config = getattr(model_or_none, "config", None)
    max_atoms = config.molecule.max_atoms if config and config.molecule else DEFAULT_MAX_ATOMS
    max_residues = config.protein.max_residues if config and config.protein else DEFAULT_MAX_RESIDUES
    graphs = [smiles_to_graph(s, max_atoms=max_atoms) for s in smiles]
    sequences = [normalize_sequence(p, max_residues=max_residues) for p in proteins]
    return graphs, sequences


def build_example(
    model: BioMedGPT, messages: Sequence[Message], answer: str | None = None, leave_one_out: bool = False
) -> Example:
    """Render a conversation with the model's template and tokenise it with placeholders expanded; user
    questions about entities get their evidence first when the model uses retrieval-augmented prompts
    (`leave_one_out` for training records, whose own entity is in the evidence index)."""
    graphs: list[MoleculeGraph] = []
    sequences: list[str] = []
    rendered = []
    for message in messages:
        if message.smiles or message.proteins:
            if model.mol_structure_encoder is None and message.smiles:
                raise ModelNotFoundError("this model has no molecule encoder; it cannot take SMILES")
            if model.prot_structure_encoder is None and message.proteins:
                raise ModelNotFoundError("this model has no protein encoder; it cannot take proteins")
            g, s = prepare_entities(model, message.smiles, message.proteins)
            graphs += g
            sequences += s
        content = entity_prefix(len(message.smiles), len(message.proteins)) + _with_evidence(
            model, message, leave_one_out)
        rendered.append({"role": message.role, "content": content})
    use_template = model.config.lm.use_chat_template and bool(getattr(model.tokenizer, "chat_template", None))
    prompt = render_prompt(
        model.tokenizer, rendered, use_chat_template=use_template, system_prompt=model.config.system_prompt
    )
    return tokenize_prompt(model.tokenizer, prompt, graphs, sequences, answer=answer, add_bos=not use_template)


@contextlib.contextmanager
def _seeded(seed: int | None) -> Iterator[None]:
    """Make sampling reproducible for one call without touching the caller's global RNG state."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _decode(model: BioMedGPT, tokens: torch.Tensor, stop: Sequence[str]) -> str:
    text = model.tokenizer.decode(tokens, skip_special_tokens=True)
    for marker in stop:
        if marker in text:
            text = text[: text.index(marker)]
    return text.strip()


def _interrupt_kwargs(should_stop: Callable[[], bool] | None) -> dict:
    """`stopping_criteria` that end decoding (all rows) as soon as `should_stop()` is true, e.g. when the
    client of a server request has gone away; checked once per decoded token."""
    if should_stop is None:
        return {}
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _Interrupt(StoppingCriteria):
        def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
            return torch.full((input_ids.shape[0],), bool(should_stop()), dtype=torch.bool, device=input_ids.device)

    return {"stopping_criteria": StoppingCriteriaList([_Interrupt()])}


def generate_batch(
    model: BioMedGPT,
    conversations: Sequence[Sequence[Message]],
    settings: GenerationSettings | None = None,
    batch_size: int = 8,
    should_stop: Callable[[], bool] | None = None,
) -> list[str]:
    """Answer many conversations, `batch_size` at a time (left-padded, per-row stopping). Without `settings`,
    the model's recommended decoding (`GenerationSettings.for_model`).

    `should_stop`, if given, is polled after every token; when it returns True decoding ends early."""
    settings = settings or GenerationSettings.for_model(model)
    examples = [build_example(model, conversation) for conversation in conversations]
    answers: list[str] = []
    extra = _interrupt_kwargs(should_stop)
    with _seeded(settings.seed):
        for start in range(0, len(examples), batch_size):
            batch = collate(examples[start : start + batch_size], model.tokenizer.pad_token_id, "left")
            new_tokens = model.generate(**batch.model_inputs(), **settings.generate_kwargs(model.tokenizer), **extra)
            answers += [_decode(model, row, settings.stop) for row in new_tokens]
    return answers


def ask(
    model: BioMedGPT,
    question: str,
    smiles: Sequence[str] = (),
    proteins: Sequence[str] = (),
    settings: GenerationSettings | None = None,
) -> str:
    """One question about zero or more molecules and proteins → the model's answer."""
    conversation = [Message("user", question, list(smiles), list(proteins))]
    return generate_batch(model, [conversation], settings)[0]


def stream(
    model: BioMedGPT,
    messages: Sequence[Message],
    settings: GenerationSettings | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Iterator[str]:
    """Yield the answer in text pieces as they are decoded (for chat UIs and SSE); `should_stop` as in
    `generate_batch` (a server sets it when the client disconnects)."""
    from transformers import TextIteratorStreamer

    settings = settings or GenerationSettings.for_model(model)
    if settings.num_beams > 1:  # beam search knows its answer only at the end: one piece
        yield generate_batch(model, [messages], settings, should_stop=should_stop)[0]
        return
    batch = collate([build_example(model, messages)], model.tokenizer.pad_token_id, "left")
    streamer = TextIteratorStreamer(model.tokenizer, skip_prompt=False, skip_special_tokens=True)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            with _seeded(settings.seed):
                model.generate(**batch.model_inputs(), streamer=streamer, **settings.generate_kwargs(model.tokenizer),
                               **_interrupt_kwargs(should_stop))
        except BaseException as err:  # surfaced in the consumer thread below
            errors.append(err)
            streamer.end()

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    emitted = ""
    for piece in streamer:
        emitted += piece
        cut = min((emitted.index(s) for s in settings.stop if s in emitted), default=None)
        if cut is not None:
            yield piece[: max(0, len(piece) - (len(emitted) - cut))]
            break
        yield piece
    thread.join()
    if errors:
        raise errors[0]
