"""The OpenAI-compatible FastAPI app: chat completions (plain and streamed), embeddings, models, health, a
server-side depiction of a SMILES, and the web page at `/`.

A thin shell: request bodies are validated (`schemas`, `chat`), queued for the single model worker (`engine`),
and answered in the OpenAI shapes (`responses`). `create_app(model, ServerConfig(...), index=None)` builds it;
`biomedgpt serve` runs it under uvicorn.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI, Query, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from biomedgpt.retrieval import find_evidence
from biomedgpt.serve import embeddings as emb
from biomedgpt.serve.chat import PreparedChat, prepare_chat
from biomedgpt.serve.config import ServerConfig
from biomedgpt.serve.depict import depict_svg
from biomedgpt.serve.engine import (
    ClientDisconnectedError,
    Completion,
    Engine,
    Job,
    QueueFullError,
    RequestTimeoutError,
)
from biomedgpt.serve.errors import APIError, error_body, error_response, install_error_handlers
from biomedgpt.serve.responses import ChunkWriter, chat_completion, embedding_list, sse
from biomedgpt.serve.schemas import ChatCompletionRequest, EmbeddingRequest
from biomedgpt.serve.security import BearerAuth, BodyLimit

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"


def create_app(model, cfg: ServerConfig | None = None, index=None) -> FastAPI:
    """The app for one loaded model. `index`: an optional `RetrievalIndex` that adds `evidence` to answers."""
    cfg = cfg or ServerConfig()
    engine = Engine(model, max_queue=cfg.max_queue, max_batch=cfg.max_batch, batch_window_s=cfg.batch_window_s)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.start()
        yield
        engine.stop()

    app = FastAPI(title="biomedgpt", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="OpenAI-compatible API for BioMedGPT (molecules and proteins in chat messages).")
    app.state.engine, app.state.config = engine, cfg
    install_error_handlers(app)
    _install_engine_errors(app)
    app.add_middleware(BodyLimit, max_bytes=cfg.max_body_bytes)
    if cfg.api_key:
        app.add_middleware(BearerAuth, api_key=cfg.api_key)
    if cfg.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=cfg.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    _add_page_routes(app, model, cfg, index)
    _add_api_routes(app, model, cfg, engine, index)
    return app


def _install_engine_errors(app: FastAPI) -> None:
    @app.exception_handler(QueueFullError)
    async def _full(request: Request, err: QueueFullError) -> JSONResponse:
        return error_response(APIError(429, "the server is busy: request queue is full; retry later",
                                       code="queue_full", retry_after=err.retry_after))

    @app.exception_handler(RequestTimeoutError)
    async def _timeout(request: Request, err: RequestTimeoutError) -> JSONResponse:
        return error_response(APIError(503, str(err), code="timeout", retry_after=5))

    @app.exception_handler(ClientDisconnectedError)
    async def _gone(request: Request, err: ClientDisconnectedError) -> Response:
        return Response(status_code=499)  # nginx's "client closed request"; nobody is left to read it


def _add_page_routes(app: FastAPI, model, cfg: ServerConfig, index) -> None:
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> Response:
        return Response(status_code=204)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": cfg.model_id, "auth": bool(cfg.api_key), "evidence": index is not None,
                "queue": app.state.engine.stats(),
                "limits": {"max_tokens": cfg.max_tokens_limit, "max_prompt_tokens": cfg.max_prompt_tokens,
                           "max_entities": cfg.max_entities, "max_body_bytes": cfg.max_body_bytes}}

    @app.get("/depict", response_class=Response, responses={200: {"content": {"image/svg+xml": {}}}})
    async def depict(smiles: str = Query(min_length=1, max_length=4000), width: int = 320,
                     height: int = 240) -> Response:
        """2D depiction of a SMILES by RDKit, as SVG (the page's live preview)."""
        max_atoms = cfg.max_atoms or (model.config.molecule.max_atoms if model.config.molecule else 256)
        svg = await run_in_threadpool(depict_svg, smiles, width, height, max_atoms)
        return Response(svg, media_type="image/svg+xml", headers={"Cache-Control": "max-age=3600"})


def _check_model(cfg: ServerConfig, name: str) -> None:
    if name != cfg.model_id:
        raise APIError(404, f"model {name!r} not found; this server has {cfg.model_id!r}", param="model",
                       code="model_not_found")


def _add_api_routes(app: FastAPI, model, cfg: ServerConfig, engine: Engine, index) -> None:
    model_card = {"id": cfg.model_id, "object": "model", "created": int(time.time()), "owned_by": "biomedgpt"}

    @app.get("/v1/models")
    async def list_models() -> dict:
        return {"object": "list", "data": [model_card]}

    @app.get("/v1/models/{model_id}")
    async def get_model(model_id: str) -> dict:
        _check_model(cfg, model_id)
        return model_card

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        """Chat completion; molecules and proteins ride in content parts or inline tags; `stream` for SSE."""
        _check_model(cfg, body.model)
        deadline = time.monotonic() + cfg.request_timeout_s
        prepared = await run_in_threadpool(prepare_chat, model, body, cfg)
        evidence = None
        if index is not None:
            evidence = await run_in_threadpool(find_evidence, index, prepared.messages, cfg.evidence_k)
        if body.stream:
            job = engine.open_stream(prepared.messages, prepared.settings)
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            events = _stream_events(engine, job, prepared, cfg.model_id, deadline, evidence, include_usage)
            return StreamingResponse(events, media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        completion = await engine.generate(prepared.messages, prepared.settings, deadline, request.is_disconnected)
        return chat_completion(cfg.model_id, completion, prepared.prompt_tokens, evidence)

    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest) -> dict:
        """Embeddings: pooled molecule-encoder (GIN) or protein-encoder (ESM) outputs, or pooled LM hidden states
        for text; L2-normalised."""
        _check_model(cfg, body.model)
        deadline = time.monotonic() + cfg.request_timeout_s
        inputs = await run_in_threadpool(emb.parse_inputs, model, body, cfg)
        vectors = await engine.call(lambda: emb.compute_embeddings(model, inputs), deadline)
        encoded = [emb.encode_vector(v, body.encoding_format) for v in vectors]
        return embedding_list(cfg.model_id, encoded, sum(item.tokens for item in inputs))


async def _stream_events(engine: Engine, job: Job, prepared: PreparedChat, model_id: str, deadline: float,
                         evidence: list | None, include_usage: bool) -> AsyncIterator[str]:
    """The SSE body: a role chunk, one chunk per decoded piece, a final chunk with `finish_reason` (and
    `evidence`), optionally a usage chunk, then `[DONE]`. A failure mid-stream becomes an error event."""
    writer = ChunkWriter(model_id)
    yield writer.chunk({"role": "assistant", "content": ""})
    completion = Completion("", 0, "stop")
    try:
        async for item in engine.read_stream(job, deadline):
            if isinstance(item, Completion):
                completion = item
            else:
                yield writer.chunk({"content": item})
    except RequestTimeoutError as err:
        yield sse(error_body(503, str(err), code="timeout"))
        return
    except Exception as err:  # noqa: BLE001 - the status line is already sent; report in-band
        logger.warning("stream failed: %s", err)
        status = 400 if isinstance(err, ValueError) else 500
        yield sse(error_body(status, f"generation failed: {err}"))
        return
    extra = {"evidence": evidence} if evidence is not None else {}
    yield writer.chunk({}, completion.finish_reason, **extra)
    if include_usage:
        yield writer.usage_chunk(prepared.prompt_tokens, completion.completion_tokens)
    yield sse("[DONE]")
