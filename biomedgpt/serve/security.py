"""Two small ASGI middlewares that guard every request before FastAPI sees it.

- `BodyLimit` refuses bodies over `max_bytes` (413), whether the client declares a Content-Length or streams a
  chunked body, so a huge upload is never buffered in full.
- `BearerAuth` requires `Authorization: Bearer KEY` on the API paths. Keys are compared as SHA-256 digests with
  `hmac.compare_digest`: constant time, and the length of the key does not leak either.
The page (`/`, `/static/...`) and `/health` stay open so a browser can load the UI and a load balancer can probe.
"""

from __future__ import annotations

import hashlib
import hmac
import json

from biomedgpt.serve.errors import error_body

OPEN_PATHS = ("/", "/health", "/favicon.ico")
OPEN_PREFIXES = ("/static/",)


async def _send_error(send, status: int, message: str, code: str | None = None, headers=()) -> None:
    body = json.dumps(error_body(status, message, code=code)).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        too_big = f"request body exceeds the limit of {self.max_bytes} bytes"
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await _send_error(send, 413, too_big, "body_too_large")
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await _send_error(send, 413, too_big, "body_too_large")
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()  # later calls wait for the disconnect, as streaming responses expect

        await self.app(scope, replay, send)


def _digest(key: str | bytes) -> bytes:
    return hashlib.sha256(key if isinstance(key, bytes) else key.encode()).digest()


class BearerAuth:
    def __init__(self, app, api_key: str) -> None:
        if not api_key:
            raise ValueError("BearerAuth needs a non-empty API key")
        self.app, self._digest = app, _digest(api_key)

    def _authorized(self, scope) -> bool:
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(_digest(token.strip()), self._digest)

    async def __call__(self, scope, receive, send) -> None:
        path = scope.get("path", "")
        open_path = path in OPEN_PATHS or path.startswith(OPEN_PREFIXES) or scope.get("method") == "OPTIONS"
        if scope["type"] != "http" or open_path or self._authorized(scope):
            await self.app(scope, receive, send)
            return
        await _send_error(send, 401, "missing or incorrect API key: send 'Authorization: Bearer <key>'",
                          "invalid_api_key", headers=[(b"www-authenticate", b"Bearer")])
