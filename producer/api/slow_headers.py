"""A time limit on request headers, which uvicorn does not have.

uvicorn (h11) keeps a connection open for as long as its request headers are still arriving, and
a fresh connection that sends nothing at all is never closed: a few hundred sockets trickling a
header line now and then ("slowloris") hold every connection slot. ``header_timeout_protocol``
gives uvicorn an HTTP protocol that answers ``408 Request Timeout`` and closes the connection when
a request's headers are not complete within the limit: from the moment the connection opens, and
on a kept-alive connection from the first byte of the next request (until then uvicorn's own
keep-alive timeout applies). The body has its own limit (``producer/api/limits.py``).
"""
from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

_BODY = b"request headers not received in time\n"
_408 = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\nconnection: close\r\n"
        b"content-length: " + str(len(_BODY)).encode() + b"\r\n\r\n" + _BODY)


class HeaderTimeoutH11Protocol(H11Protocol):
    #: Seconds a client has to send a request's headers (BATCHRENDER_API_HEADER_TIMEOUT_S).
    header_timeout_s: float = 10.0
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._header_timer is None and self._awaiting_headers():
            self._arm()  # the first bytes of a new request on a kept-alive connection
        super().data_received(data)
        if not self._awaiting_headers():
            self._disarm()
        elif self._header_timer is None and self.conn.trailing_data[0]:
            # A response ended the last request early (a 413 before its body was read) and these
            # bytes already hold the start of the next one.
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _awaiting_headers(self) -> bool:
        # h11 keeps the client IDLE until a whole request line and headers have arrived.
        return self.conn.their_state is h11.IDLE

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_timed_out)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_timed_out(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or not self._awaiting_headers():
            return
        if self.conn.our_state is h11.IDLE:  # nothing of a response under way
            self.transport.write(_408)
        self.transport.close()


def header_timeout_protocol(timeout_s: float) -> type[HeaderTimeoutH11Protocol]:
    """The protocol class to pass as uvicorn's ``http``, with this header time limit."""
    return type("HeaderTimeoutH11Protocol", (HeaderTimeoutH11Protocol,), {"header_timeout_s": timeout_s})
