"""From an OpenAI chat request to the inference API's `Message`s and `GenerationSettings`, with every limit
checked before the request may queue for the model.

Molecules and proteins reach a message in two ways:
- content parts `{"type": "molecule", "smiles": "CCO"}` / `{"type": "protein", "sequence": "MKT..."}`;
- inline tags in text, for clients that can only send strings: `<molecule>CCO</molecule>`,
  `<protein>MKT...</protein>`. The tags are cut out of the text and the entities attached to the message.
Either way the model sees each entity at the start of its message (the reference template's layout), in the
order in which they appear.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from biomedgpt.config import FALLBACK_GENERATION
from biomedgpt.constants import MOLECULE_PLACEHOLDER, PROTEIN_PLACEHOLDER
from biomedgpt.inference import GenerationSettings, Message, build_example, recommended_decoding
from biomedgpt.serve.config import ServerConfig
from biomedgpt.serve.errors import APIError
from biomedgpt.serve.schemas import ChatCompletionRequest, ChatMessage, MoleculePart, ProteinPart, TextPart

_TAG_RE = re.compile(r"<(molecule|protein)>(.*?)</\1>", re.DOTALL | re.IGNORECASE)
_MAX_STOP = 4  # as OpenAI
_SMILES_CHARS_PER_ATOM = 16  # generous: bracket atoms, stereo marks and ring digits rarely pass 8


@dataclass
class PreparedChat:
    messages: list[Message]
    settings: GenerationSettings
    prompt_tokens: int


def split_inline_tags(text: str) -> tuple[str, list[str], list[str]]:
    """`"Is <molecule>CCO</molecule> toxic?"` → `("Is toxic?", ["CCO"], [])`."""
    smiles: list[str] = []
    proteins: list[str] = []
    for kind, body in _TAG_RE.findall(text):
        (smiles if kind.lower() == "molecule" else proteins).append(body.strip())
    if not smiles and not proteins:
        return text, smiles, proteins
    return " ".join(_TAG_RE.sub(" ", text).split()), smiles, proteins


def to_message(message: ChatMessage, index: int) -> Message:
    role = "system" if message.role == "developer" else message.role
    content = message.content if message.content is not None else ""
    parts = [TextPart(type="text", text=content)] if isinstance(content, str) else content
    texts: list[str] = []
    smiles: list[str] = []
    proteins: list[str] = []
    for part in parts:
        if isinstance(part, MoleculePart):
            smiles.append(part.smiles)
        elif isinstance(part, ProteinPart):
            proteins.append(part.sequence)
        else:
            text, tagged_smiles, tagged_proteins = split_inline_tags(part.text)
            texts.append(text)
            smiles += tagged_smiles
            proteins += tagged_proteins
    text = " ".join(t for t in texts if t)
    for placeholder in (MOLECULE_PLACEHOLDER, PROTEIN_PLACEHOLDER):
        if placeholder in text:
            raise APIError(400, f"messages.{index}.content must not contain the reserved string {placeholder}",
                           param=f"messages.{index}.content")
    if (smiles or proteins) and role != "user":
        raise APIError(400, f"messages.{index}: molecules and proteins may only be attached to user messages",
                       param=f"messages.{index}.content")
    return Message(role, text, smiles, proteins)


def check_entities(model, messages: list[Message], cfg: ServerConfig) -> None:
    """Refuse too many entities, bad SMILES / sequences, and ones over the size limits (the inference API would
    silently truncate those; a server should say so instead)."""
    from biomedgpt.modalities.molecule import parse_smiles
    from biomedgpt.modalities.protein import normalize_sequence

    count = sum(len(m.smiles) + len(m.proteins) for m in messages)
    if count > cfg.max_entities:
        raise APIError(400, f"{count} molecules and proteins in one request; the limit is {cfg.max_entities}")
    if any(m.smiles for m in messages) and model.mol_structure_encoder is None:
        raise APIError(400, "this model has no molecule encoder; it cannot take molecules")
    if any(m.proteins for m in messages) and model.prot_structure_encoder is None:
        raise APIError(400, "this model has no protein encoder; it cannot take proteins")
    max_atoms = cfg.max_atoms or (model.config.molecule.max_atoms if model.config.molecule else 0)
    max_residues = cfg.max_residues or (model.config.protein.max_residues if model.config.protein else 0)
    for message in messages:
        for smiles in message.smiles:
            if len(smiles) > _SMILES_CHARS_PER_ATOM * max_atoms:  # before RDKit spends time on a huge string
                raise APIError(400, f"SMILES of {len(smiles)} characters is too long for {max_atoms} atoms")
            atoms = parse_smiles(smiles).GetNumAtoms()
            if atoms > max_atoms:
                raise APIError(400, f"molecule {smiles[:40]!r} has {atoms} heavy atoms; the limit is {max_atoms}")
        for sequence in message.proteins:
            residues = len(normalize_sequence(sequence, max_residues=10**9))
            if residues > max_residues:
                raise APIError(400, f"protein of {residues} residues; the limit is {max_residues}")


def settings_from(request: ChatCompletionRequest, cfg: ServerConfig,
                  recommended: dict | None = None) -> GenerationSettings:
    """The request's settings over the server's, over the model's recommended decoding (`recommended`, the model
    config's `generation`; its beam search is not used, see `ServerConfig`)."""
    recommended = recommended or {}
    if request.n != 1:
        raise APIError(400, "n must be 1: this server returns one choice per request", param="n")
    if request.tools:
        raise APIError(400, "tools are not supported by this model", param="tools")
    if request.logprobs:
        raise APIError(400, "logprobs are not supported by this server", param="logprobs")
    max_tokens = request.max_completion_tokens or request.max_tokens or min(cfg.default_max_tokens,
                                                                            cfg.max_tokens_limit)
    if max_tokens > cfg.max_tokens_limit:
        raise APIError(400, f"max_tokens is {max_tokens}; the limit is {cfg.max_tokens_limit}", param="max_tokens")
    stop = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
    if len(stop) > _MAX_STOP or any(not s for s in stop):
        raise APIError(400, f"stop must be up to {_MAX_STOP} non-empty strings", param="stop")
    return GenerationSettings(
        max_new_tokens=max_tokens,
        temperature=request.temperature or 0.0,
        top_p=request.top_p if request.top_p is not None else 1.0,
        repetition_penalty=(request.repetition_penalty or cfg.default_repetition_penalty
                            or recommended.get("repetition_penalty", FALLBACK_GENERATION["repetition_penalty"])),
        stop=stop,
        seed=request.seed,
        engine=cfg.engine,
        quantize=cfg.quantize or recommended.get("quantize"),
    )


def _text_chars(request: ChatCompletionRequest) -> int:
    total = 0
    for message in request.messages:
        if isinstance(message.content, str):
            total += len(message.content)
        elif message.content:
            total += sum(len(part.text) for part in message.content if isinstance(part, TextPart))
    return total


def prepare_chat(model, request: ChatCompletionRequest, cfg: ServerConfig) -> PreparedChat:
    """Validate a chat request completely (CPU work: RDKit parsing, tokenisation; no model forward)."""
    settings = settings_from(request, cfg, recommended_decoding(model))
    chars = _text_chars(request)
    if chars > 16 * cfg.max_prompt_tokens:  # cheap pre-check before tokenising a huge prompt
        raise APIError(400, f"prompt of {chars} characters is too long (limit {cfg.max_prompt_tokens} tokens)",
                       param="messages", code="context_length_exceeded")
    messages = [to_message(m, i) for i, m in enumerate(request.messages)]
    if not any(m.text.strip() or m.smiles or m.proteins for m in messages):
        raise APIError(400, "messages contain no text, molecule or protein", param="messages")
    check_entities(model, messages, cfg)
    try:
        prompt_tokens = len(build_example(model, messages).input_ids)
    except ValueError as err:  # e.g. a template problem; the entities themselves were checked above
        raise APIError(400, str(err), param="messages") from None
    positions = getattr(model.llm.config, "max_position_embeddings", None) or 10**9
    limit = min(cfg.max_prompt_tokens, positions - settings.max_new_tokens)
    if prompt_tokens > limit:
        raise APIError(400, f"the prompt is {prompt_tokens} tokens (molecule atoms and protein residues count "
                            f"one each); the limit is {limit}", param="messages", code="context_length_exceeded")
    return PreparedChat(messages, settings, prompt_tokens)
