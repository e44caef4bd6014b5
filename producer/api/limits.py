"""What wraps every request before it reaches a route: an ``x-request-id`` on every answer, the
body size (bytes actually read), how long a client may take to send its body, JSON depth."""
from __future__ import annotations

import asyncio
import re
import secrets
from itertools import accumulate

from starlette.requests import Request

from jobs.text import surrogate_problem
from producer.api.errors import error_response

#: Seconds a client has to send its whole body; a slow sender is cut off with 408.
BODY_TIMEOUT_S = 30.0
#: JSON bodies (and JSONL lines) nested deeper than this are refused before any parser sees them.
MAX_JSON_DEPTH = 32
#: Bodies read line by line (batches): a problem is named by its line.
JSONL_TYPES = (b"application/jsonl", b"application/x-ndjson", b"application/x-jsonlines", b"text/plain")
_STRINGS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_DEPTH_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}
_NOT_BRACKETS = bytes(b for b in range(256) if b not in _DEPTH_STEP)


def media_type(ctype: bytes) -> bytes:
    """``Content-Type``'s media type, without parameters, lower case (RFC 9110: case-insensitive)."""
    return ctype.split(b";")[0].strip().lower()


def read_as_json(base: bytes) -> bool:
    """Whether some parser reads a body of media type ``base`` as JSON or JSONL: any ``json``
    type (``application/json``, ``+json``, ``jsonl``, ``x-ndjson``), ``text/plain`` (JSONL), and
    none at all (a campaign document without a type is read as JSON)."""
    return not base or b"json" in base or base in JSONL_TYPES


def json_depth(raw: bytes) -> int:
    """How deeply ``raw`` nests arrays and objects (strings skipped), at C speed: parsers recurse,
    so a body of 10,000 brackets must never reach one."""
    brackets = _STRINGS.sub(b"", raw).translate(None, _NOT_BRACKETS)
    return max(accumulate(_DEPTH_STEP[b] for b in brackets), default=0)


class RequestId:
    """Adds ``x-request-id: req_<hex>`` to every answer (OpenAI clients log it; so can support)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        rid = b"req_" + secrets.token_hex(12).encode()

        async def with_id(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", rid)]}
            await send(message)

        return await self.app(scope, receive, with_id)


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

        # Every Content-Type header counts: Starlette reads the first, a dict() the last.
        types = [media_type(v) for k, v in scope.get("headers") or [] if k == b"content-type"] or [b""]
        base = types[0]
        if any(read_as_json(t) for t in types):
            body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.request")
            if json_depth(body) > MAX_JSON_DEPTH:
                response = error_response(422, "invalid_request", f"the JSON body is nested deeper than "
                                          f"{MAX_JSON_DEPTH} levels", errors=[{"field": "body", "message":
                                                                                f"nesting over {MAX_JSON_DEPTH}"}])
                return await response(scope, receive, send)
            # Lone surrogates ("\ud800"): refused here for every JSON route, naming the line
            # (JSONL) and the field, before a route creates anything (jobs/text.py).
            problem = surrogate_problem(body, jsonl=base in JSONL_TYPES)
            if problem is not None:
                where = f"line {problem['line']}: " if "line" in problem else ""
                response = error_response(422, "invalid_request", f"invalid request: {where}{problem['message']}",
                                          request=Request(scope), errors=[problem])
                return await response(scope, receive, send)

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
