"""Fault injection on loopback, shared by the integration tests and benchmarks/chaos.py."""
from __future__ import annotations

import http.client
import random
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        pass  # a client that hung up on an injected fault is the point, not news


class FaultProxy:
    """Loopback HTTP proxy: the first ``failures`` requests, and every request while ``down`` is
    set, get ``mode`` (503 or a dropped connection); others are forwarded to the upstream S3
    endpoint. Random faults on top: each request gets a 503 with probability ``p_503`` and a
    dropped connection with probability ``p_reset`` (seeded). ``refused`` counts the failed ones.

    With ``presign_grace_s`` set it also does what moto does not: refuses a presigned GET (403
    ``AccessDenied``, "Request has expired") once ``X-Amz-Date + X-Amz-Expires + grace`` has passed."""

    def __init__(self, upstream: str, failures: int = 0, mode: str = "503", p_503: float = 0.0,
                 p_reset: float = 0.0, seed: int = 0, presign_grace_s: float | None = None) -> None:
        self.upstream = urlparse(upstream)
        self.failures = failures
        self.mode = mode
        self.down = False
        self.p_503, self.p_reset = p_503, p_reset
        self.rng = random.Random(seed)
        self.refused = 0
        self.requests = 0
        self.presign_grace_s = presign_grace_s
        self.expired = 0
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def _error(self, status: int, msg: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(msg)))
                self.end_headers()
                self.wfile.write(msg)

            def _handle(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with proxy.lock:
                    proxy.requests += 1
                    fail = proxy.requests <= proxy.failures or proxy.down
                    mode = proxy.mode
                    if not fail and (proxy.p_503 or proxy.p_reset):
                        x = proxy.rng.random()
                        fail = x < proxy.p_503 + proxy.p_reset
                        mode = "503" if x < proxy.p_503 else "reset"
                    proxy.refused += fail
                if not fail and proxy.presign_grace_s is not None and proxy._expired(self.path):
                    with proxy.lock:
                        proxy.expired += 1
                    return self._error(403, b"<Error><Code>AccessDenied</Code><Message>Request has expired"
                                            b"</Message></Error>")
                if fail and mode == "reset":
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if fail:
                    return self._error(503, b"<Error><Code>ServiceUnavailable</Code><Message>injected</Message>"
                                            b"</Error>")
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=30)
                conn.request(self.command, self.path, body=body, headers=dict(self.headers))
                resp = conn.getresponse()
                payload = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection", "server", "date"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)
                conn.close()

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _expired(self, path: str) -> bool:
        query = parse_qs(urlparse(path).query)
        if "X-Amz-Date" not in query or "X-Amz-Expires" not in query:
            return False
        signed = datetime.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
        return time.time() > signed.timestamp() + int(query["X-Amz-Expires"][0]) + (self.presign_grace_s or 0)

    def __enter__(self) -> "FaultProxy":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
