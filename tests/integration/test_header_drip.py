"""Issue 26, hostile: response headers dripped a byte at a time held an image fetch or a webhook
attempt far past its total limit (60 s against 15 s in the probe): every read came within the
per-read timeout, and the total was only checked while reading the body. Now a watchdog shuts
the socket at the exchange's deadline in whatever phase it is (webhooks/ssrf.py), and the
SSRF guard still decides who may be reached.

A real TCP server on loopback sends the status line and headers one byte every 2 s (about a
minute in all); the deadlines here are 3 s. Generous bounds: the exchange must end within 3x its
deadline, not when the drip does.
"""
from __future__ import annotations

import socket
import threading
import time

import pytest

from jobs.settings import Settings

pytestmark = pytest.mark.timeout(180)
DEADLINE_S = 3.0
HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nX-Slow: " + b"y" * 20 + b"\r\nContent-Length: 1\r\n\r\nx"


class DripServer:
    """Accepts connections on loopback and drips ``HEAD`` into each, one byte every ``every`` s."""

    def __init__(self, every: float = 2.0) -> None:
        self.every = every
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.connections = 0
        self.closed_early = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn: socket.socket) -> None:
        with conn:
            for i in range(len(HEAD)):
                if self.stop.wait(0 if i == 0 else self.every):
                    return
                try:
                    conn.sendall(HEAD[i:i + 1])
                except OSError:
                    self.closed_early.set()  # the client hung up: what the deadline should do
                    return

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


@pytest.fixture
def drip():
    server = DripServer()
    yield server
    server.close()


def test_an_image_fetch_ends_at_its_total_deadline_while_headers_drip(drip, monkeypatch):
    import producer.inputs
    from jobs.errors import InvalidRequest

    monkeypatch.setattr(producer.inputs, "FETCH_TIMEOUT_S", DEADLINE_S)
    url = f"http://127.0.0.1:{drip.port}/ref.png"
    started = time.monotonic()
    with pytest.raises(InvalidRequest) as e:
        producer.inputs.load_reference(url, Settings(image_fetch_allow_hosts=["127.0.0.1"]))
    took = time.monotonic() - started
    assert took < 3 * DEADLINE_S, f"the fetch took {took:.1f} s against a total deadline of {DEADLINE_S:g} s"
    assert f"took longer than {DEADLINE_S:g} s" in e.value.message and "response headers" in e.value.message
    assert e.value.errors[0]["field"] == "image"
    assert drip.closed_early.wait(5), "the server saw the connection dropped"

    # The SSRF guard still applies: without the allow-list, loopback is refused before connecting.
    before = drip.connections
    with pytest.raises(InvalidRequest, match="not allowed"):
        producer.inputs.load_reference(url, Settings(image_fetch_allow_hosts=[]))
    assert drip.connections == before


def test_a_webhook_attempt_ends_at_its_total_deadline_while_headers_drip(drip):
    from webhooks.delivery import post_event

    url = f"http://127.0.0.1:{drip.port}/hook"
    started = time.monotonic()
    result = post_event(url, "evt_drip", b"{}", ["whsec_" + "A" * 32], timeout_s=DEADLINE_S,
                        allow_hosts=["127.0.0.1"])
    took = time.monotonic() - started
    assert took < 3 * DEADLINE_S, f"the attempt took {took:.1f} s against a total limit of {DEADLINE_S:g} s"
    assert result.status == 0 and f"took longer than {DEADLINE_S:g} s" in result.error, result
    assert drip.closed_early.wait(5), "the server saw the connection dropped"

    refused = post_event(url, "evt_drip2", b"{}", ["whsec_" + "A" * 32], timeout_s=DEADLINE_S, allow_hosts=[])
    assert refused.refused and "BATCHRENDER_WEBHOOK_ALLOW_HOSTS" in refused.error, refused


def test_the_api_refuses_a_dripping_reference_url_at_the_deadline(drip, br_env, settings_for, tenants, monkeypatch):
    import producer.inputs
    from starlette.testclient import TestClient

    from producer.api import create_app

    monkeypatch.setattr(producer.inputs, "FETCH_TIMEOUT_S", DEADLINE_S)
    alice = tenants.create("alice")
    with TestClient(create_app(settings_for(br_env, image_fetch_allow_hosts=["127.0.0.1"]))) as client:
        started = time.monotonic()
        r = client.post("/v1/jobs", json={"prompt": "a", "image": f"http://127.0.0.1:{drip.port}/x.png"},
                        headers={"Authorization": f"Bearer {alice.api_key}"})
        took = time.monotonic() - started
    assert r.status_code == 422 and f"took longer than {DEADLINE_S:g} s" in r.json()["error"]["message"], r.text
    assert took < 3 * DEADLINE_S, took
