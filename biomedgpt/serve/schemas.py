"""Request bodies of the HTTP API, in the OpenAI schema plus two content-part types for entities.

FastAPI turns these into the OpenAPI document at `/openapi.json` (which the fuzz tests read) and validates
every body against them; a body that fails validation gets a 400 in the OpenAI error format (see `errors.py`).
Fields that OpenAI defines but this server cannot honour (tools, logprobs, n > 1) are accepted by the schema and
refused with a clear 400 by the handler, so clients learn why instead of silently getting something else.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

_SEED_MAX = 2**63 - 1  # torch.manual_seed takes a 64-bit seed


class _Body(BaseModel):
    # Unknown fields are ignored (OpenAI clients send new ones over time); NaN / Infinity are refused.
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


class TextPart(_Body):
    type: Literal["text"]
    text: str


class MoleculePart(_Body):
    """A molecule attached to a message: `{"type": "molecule", "smiles": "CCO"}`."""

    type: Literal["molecule"]
    smiles: str


class ProteinPart(_Body):
    """A protein attached to a message: `{"type": "protein", "sequence": "MKT..."}` (FASTA accepted)."""

    type: Literal["protein"]
    sequence: str


ContentPart = Annotated[TextPart | MoleculePart | ProteinPart, Field(discriminator="type")]


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None
    name: str | None = None


class StreamOptions(_Body):
    include_usage: bool = False


class ChatCompletionRequest(_Body):
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2, description="0 (the default here) is greedy")
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=0, le=_SEED_MAX)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1)
    user: str | None = None
    # Accepted so that clients sending them get a clear refusal rather than a silent omission.
    logprobs: bool | None = None
    tools: list[dict] | None = None
    # Extension (as vLLM and TGI): > 1 discourages loops in small models.
    repetition_penalty: float | None = Field(default=None, gt=0, le=10)


class EmbeddingRequest(_Body):
    model: str
    input: str | list[str] = Field(description="text; `<molecule>SMILES</molecule>` or `<protein>SEQ</protein>` "
                                               "(or input_type) selects the molecule / protein encoder")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None
    # Extension: force how every input is read instead of detecting tags.
    input_type: Literal["auto", "text", "molecule", "protein"] = "auto"
