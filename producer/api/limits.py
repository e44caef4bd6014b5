"""Limits applied before a request reaches a route: the body size."""
from __future__ import annotations

from producer.api.errors import error_response


class BodyLimit:
    """413 for bodies over ``limit`` bytes, by ``Content-Length`` or, for chunked uploads, by counting.

    A pure ASGI middleware: a chunked body is read (up to the limit) before the app sees it, so an
    oversized upload is refused with a JSON error instead of failing half-way through a handler.
    """

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None:
            if not length.isdigit() or int(length) > self.limit:
                return await self._refuse(scope, receive, send)
            return await self.app(scope, receive, send)
        if b"chunked" not in headers.get(b"transfer-encoding", b"").lower():
            return await self.app(scope, receive, send)
        messages, size = [], 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.limit:
                return await self._refuse(scope, receive, send)
            if not message.get("more_body"):
                break

        async def replay():
            return messages.pop(0) if messages else await receive()

        return await self.app(scope, replay, send)

    async def _refuse(self, scope, receive, send):
        response = error_response(413, "body_too_large", f"request bodies are limited to {self.limit} bytes",
                                  headers={"Connection": "close"})
        await response(scope, receive, send)
