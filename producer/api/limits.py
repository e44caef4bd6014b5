"""Limits applied before a request reaches a route: body size (bytes actually read) and how long
a client may take to send its body."""
from __future__ import annotations

import asyncio

from producer.api.errors import error_response

#: Seconds a client has to send its whole body; a slow sender is cut off with 408.
BODY_TIMEOUT_S = 30.0


class BodyLimit:
    """413 for a body over ``limit`` bytes, counted on the bytes actually received.

    A pure ASGI middleware that reads the whole body (up to the limit) before the app sees it,
    whatever ``Content-Length`` or ``Transfer-Encoding`` claim: a small declared length with a
    chunked body, or a lying length, cannot get more than ``limit`` bytes into memory. A declared
    length over the limit is refused before reading anything. A body that takes longer than
    ``timeout_s`` to arrive gets 408.
    """

    def __init__(self, app, limit: int, timeout_s: float = BODY_TIMEOUT_S) -> None:
        self.app, self.limit, self.timeout_s = app, limit, timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for name, value in scope.get("headers") or []:
            if name == b"content-length" and (not value.isdigit() or int(value) > self.limit):
                return await self._refuse(413, scope, receive, send)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        messages, size = [], 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                return await self._refuse(408, scope, receive, send)
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.limit:
                messages.clear()
                return await self._refuse(413, scope, receive, send)
            if not message.get("more_body"):
                break

        async def replay():
            return messages.pop(0) if messages else await receive()

        return await self.app(scope, replay, send)

    async def _refuse(self, status: int, scope, receive, send):
        if status == 413:
            response = error_response(413, "body_too_large", f"request bodies are limited to {self.limit} bytes",
                                      headers={"Connection": "close"})
        else:
            response = error_response(408, "body_timeout", f"the request body did not arrive within "
                                      f"{self.timeout_s:g} s", headers={"Connection": "close"})
        await response(scope, receive, send)
