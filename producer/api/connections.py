"""What one client may hold of the API's connections, and how long a response may wait on it.

uvicorn counts connections for the whole server (``limit_concurrency``: past it every request,
whoever sends it, is answered 503): 1,000 sockets that never send a byte, from one address, shut
every tenant out for as long as they are renewed (issue 26). And it writes a response into the
socket's buffer with no time limit: a client that stops reading holds whatever is buffered for
it, for ever. :class:`GuardedH11Protocol` adds, on top of the header time limit
(``producer/api/slow_headers.py``):

* a cap per client address (an IPv6 address counts by its /64): a connection over it is answered
  ``429 Too Many Requests`` and closed before uvicorn counts it, so it takes no slot of anyone
  else's (``BATCHRENDER_API_MAX_CONNECTIONS_PER_CLIENT``; 0 turns the cap off, e.g. behind a
  proxy through which every client arrives from one address);
* a write timeout: a connection whose send buffer stays over uvicorn's high-water mark (64 KiB)
  for ``BATCHRENDER_API_WRITE_TIMEOUT_S`` is aborted, its buffered bytes dropped. A reader that
  takes in less than ~48 KiB in that time is dropped; responses that are large stream in chunks
  (``producer/api/routers/outputs.py``), so what waits for a slow reader is one chunk, not the file.

:func:`server_options` is everything ``batchrender api`` passes to ``uvicorn.run``.
"""
from __future__ import annotations

import asyncio
import ipaddress
import json
from typing import Any

from jobs.settings import Settings
from producer.api.slow_headers import HeaderTimeoutH11Protocol

#: Idle keep-alive connections close after this (uvicorn's timeout_keep_alive).
KEEP_ALIVE_S = 5


def client_key(peer: Any) -> str | None:
    """The address a connection is counted under: the IPv4 address, or the /64 of an IPv6 one
    (one host is given a whole /64). None for a peer with no IP address (a Unix socket)."""
    if not isinstance(peer, tuple) or not peer:
        return None
    try:
        ip = ipaddress.ip_address(peer[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def _refusal(cap: int) -> bytes:
    body = json.dumps({"error": {"code": "too_many_connections", "message":
                                 f"this address already holds {cap} open connections to the API "
                                 "(BATCHRENDER_API_MAX_CONNECTIONS_PER_CLIENT); close some, or reuse them"}}
                      ).encode() + b"\n"
    return (b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\nretry-after: 1\r\n"
            b"connection: close\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


class GuardedH11Protocol(HeaderTimeoutH11Protocol):
    """uvicorn's h11 protocol with a header time limit, a connection cap per client address and a
    write timeout. Built per server by :func:`guarded_protocol` (the counts are per class)."""

    #: Connections one client address may hold (0: no cap).
    max_per_client: int = 100
    #: Seconds the send buffer may stay full before the connection is aborted.
    write_timeout_s: float = 30.0
    #: Open connections by client address, shared by every connection of one server.
    open_by_client: dict[str, int]

    _client_key: str | None = None
    _refused: bool = False
    _write_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        key = client_key(transport.get_extra_info("peername"))
        counts = type(self).open_by_client
        if key is not None and self.max_per_client and counts.get(key, 0) >= self.max_per_client:
            self._refused = True  # never counted by uvicorn: it takes no slot of limit_concurrency
            self.transport = transport
            transport.write(_refusal(self.max_per_client))
            transport.close()
            return
        if key is not None:
            counts[key] = counts.get(key, 0) + 1
            self._client_key = key
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused:
            return
        if self._client_key is not None:
            counts = type(self).open_by_client
            left = counts.get(self._client_key, 1) - 1
            if left > 0:
                counts[self._client_key] = left
            else:
                counts.pop(self._client_key, None)
            self._client_key = None
        self._stop_write_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        super().data_received(data)

    def eof_received(self) -> None:
        if not self._refused:
            super().eof_received()

    def pause_writing(self) -> None:
        if self._refused:
            return
        super().pause_writing()
        if self._write_timer is None:
            self._write_timer = self.loop.call_later(self.write_timeout_s, self._write_timed_out)

    def resume_writing(self) -> None:
        if self._refused:
            return
        self._stop_write_timer()
        super().resume_writing()

    def _stop_write_timer(self) -> None:
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def _write_timed_out(self) -> None:
        self._write_timer = None
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.disconnected = True  # the app's next send returns at once; no more is written
        self.logger.info("%s - dropped: did not read its response for %g s",
                         "%s:%d" % self.client if self.client else "-", self.write_timeout_s)
        self.transport.abort()  # close() would wait to flush the very bytes nobody reads


def guarded_protocol(settings: Settings) -> type[GuardedH11Protocol]:
    """The protocol class to pass as uvicorn's ``http``, with this deployment's limits."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {
        "header_timeout_s": settings.api_header_timeout_s,
        "max_per_client": settings.api_max_connections_per_client,
        "write_timeout_s": settings.api_write_timeout_s,
        "open_by_client": {},
    })


def server_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's options for ``batchrender api``: connection limits, time limits, the protocol."""
    return {"timeout_keep_alive": KEEP_ALIVE_S, "limit_concurrency": settings.api_max_connections,
            "http": guarded_protocol(settings)}
