"""What a server operator can set: the model's public name, limits, queueing, auth and CORS."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ServerConfig:
    model_id: str = "biomedgpt"  # the `model` name clients must send (and /v1/models lists)
    api_key: str | None = None  # None: no authentication (fine on 127.0.0.1; set one before binding wider)
    cors_origins: list[str] = field(default_factory=list)  # empty: no CORS headers at all (browsers block)
    # Queueing: requests wait in one bounded queue in front of the single model worker.
    max_queue: int = 32  # waiting requests beyond this get 429 + Retry-After
    max_batch: int = 8  # concurrent non-streaming requests with equal settings share one generate call
    batch_window_s: float = 0.05  # after a shared batch, wait this long for more requests to fill the next one
    request_timeout_s: float = 120.0  # from arrival to the last token; then 503 (or an error event if streaming)
    # Limits, each refused with a 4xx naming it.
    max_body_bytes: int = 1 << 20
    max_prompt_tokens: int = 2048
    max_tokens_limit: int = 512  # the highest `max_tokens` a client may ask for
    default_max_tokens: int = 128  # when a request names none (capped at max_tokens_limit)
    max_entities: int = 8  # molecules + proteins in one request
    max_atoms: int | None = None  # None: the model's molecule encoder limit
    max_residues: int | None = None  # None: the model's protein encoder limit
    max_embedding_inputs: int = 64
    # Generation defaults (clients override per request). None: the model folder's recommended decoding
    # (config.json `generation`), else the value after "else". Beam search is not taken from the recommendation:
    # the server streams tokens as they are decoded and shares one decode between concurrent requests.
    default_repetition_penalty: float | None = None  # else 1.1, as `biomedgpt ask`: > 1 discourages loops
    engine: str | None = None  # decode loop for every request ("fast" / "hf"; None: the inference default)
    quantize: str | None = None  # LM weights for the fast loop ("none", "bf16", "int8", "int4"; else the default)
    evidence_k: int = 3  # neighbours per entity when an index is loaded

    def __post_init__(self) -> None:
        for name in ("max_queue", "max_batch", "max_body_bytes", "max_prompt_tokens", "max_tokens_limit",
                     "default_max_tokens", "max_entities", "max_embedding_inputs", "evidence_k"):
            if getattr(self, name) < 1:
                raise ValueError(f"ServerConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.engine is not None or self.quantize is not None:
            from biomedgpt.inference import GenerationSettings

            GenerationSettings(engine=self.engine, quantize=self.quantize)  # raises ValueError naming the bad one
        if self.batch_window_s < 0:
            raise ValueError(f"ServerConfig.batch_window_s must be >= 0, got {self.batch_window_s}")
        if self.request_timeout_s <= 0:
            raise ValueError(f"ServerConfig.request_timeout_s must be > 0, got {self.request_timeout_s}")
