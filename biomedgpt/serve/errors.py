"""Errors in the OpenAI format: `{"error": {"message", "type", "param", "code"}}` with a fitting 4xx status.

Every way a request can fail maps here: our own `APIError`, the user errors of the inference API (bad SMILES,
bad sequence), FastAPI's validation errors (which would otherwise be 422s in FastAPI's own shape), unknown
routes, and, as a last resort, unexpected exceptions (a 500 that is logged with its traceback).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from biomedgpt.errors import UserError

logger = logging.getLogger(__name__)

_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 403: "invalid_request_error",
          404: "invalid_request_error", 405: "invalid_request_error", 413: "invalid_request_error",
          429: "rate_limit_error", 503: "server_error"}


class APIError(Exception):
    """An error response; `retry_after` (seconds) adds a `Retry-After` header (429, 503)."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.retry_after = status, message, param, code, retry_after


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": _TYPES.get(status, "server_error"), "param": param, "code": code}}


def error_response(err: APIError) -> JSONResponse:
    headers = {"Retry-After": str(err.retry_after)} if err.retry_after is not None else None
    return JSONResponse(error_body(err.status, err.message, err.param, err.code), err.status, headers=headers)


def _validation_message(err: RequestValidationError) -> tuple[str, str | None]:
    """One readable line for the first problem, e.g. `messages.0.role: Input should be 'system', ...`."""
    problems = err.errors()
    if not problems:
        return "invalid request body", None
    first = problems[0]
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(loc) or None
    if first.get("type") == "json_invalid":
        return "request body is not valid JSON", None
    message = f"{param}: {first.get('msg')}" if param else str(first.get("msg"))
    if len(problems) > 1:
        message += f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})"
    return message, param


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, err: APIError) -> JSONResponse:
        return error_response(err)

    @app.exception_handler(UserError)
    async def _user_error(request: Request, err: UserError) -> JSONResponse:
        return error_response(APIError(400, str(err)))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(err)
        return error_response(APIError(400, message, param=param))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, err: StarletteHTTPException) -> JSONResponse:
        message = err.detail if isinstance(err.detail, str) else "request failed"
        if err.status_code == 404:
            message = f"unknown path {request.url.path}"
        return JSONResponse(error_body(err.status_code, message), err.status_code, headers=err.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, err: Exception) -> JSONResponse:
        logger.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse(error_body(500, f"internal error: {type(err).__name__}"), 500)
