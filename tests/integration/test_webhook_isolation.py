"""M4: webhook delivery is isolated from rendering and between tenants, and a receiver's answer
costs at most a few kilobytes.

``batchrender worker`` (as shipped: render worker + webhook worker) runs for real. Tenant A's
receiver holds its request open until tenant B's event has arrived: with one process doing
renders and deliveries, B's event would wait behind A's (the held request times out first).
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from jobs.status import JobStatus
from tests.workers import wait_for

pytestmark = pytest.mark.timeout(240)
SMALL = {"width": 64, "height": 64, "steps": 2}


def test_a_held_receiver_delays_neither_renders_nor_another_tenants_events(client, br_env, tenants, tmp_path):
    from webhooks.testing import LoopbackReceiver

    alice, bob = tenants.create("alice"), tenants.create("bob")
    b_arrived = threading.Event()
    held, released_by_b = [], []

    def slow(req):  # tenant A's receiver: holds the request until B's event is in (at most 90 s)
        held.append(b_arrived.is_set())
        released_by_b.append(b_arrived.wait(90))
        return 200, {}

    def fast(req):
        b_arrived.set()
        return 200, {}

    env = {**br_env, "BATCHRENDER_WEBHOOK_TIMEOUT_S": "120", "BATCHRENDER_WEBHOOK_ALLOW_HOSTS": "127.0.0.1"}
    log = open(tmp_path / "workers.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "producer.cli", "worker", "--models", "tiny"],
                            env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)
    try:
        with LoopbackReceiver(slow) as rx_a, LoopbackReceiver(fast) as rx_b:
            a = client.prepare({"prompt": "a kettle", "webhook": rx_a.url, "webhook_events_filter": ["job.succeeded"],
                                **SMALL}, tenant=alice.tenant_id)
            client.enqueue(a)
            wait_for(lambda: held, timeout=120, what="A's event to be held by its receiver")
            b = client.prepare({"prompt": "a teapot", "webhook": rx_b.url, "webhook_events_filter": ["job.succeeded"],
                                **SMALL}, tenant=bob.tenant_id)
            client.enqueue(b)
            assert client.wait(b.job_id, timeout=120).status is JobStatus.SUCCEEDED, "renders go on"
            wait_for(lambda: released_by_b, timeout=120)
            assert held == [False] and released_by_b == [True], \
                "B's event arrived while A's receiver was holding its request (not after it gave up)"
    finally:
        proc.terminate()
        proc.wait(60)
        log.close()


def test_a_huge_answer_is_not_read(tmp_path, capsys):
    """The receiver answers 200 with 200 MB; the deliverer reads at most 64 KiB and hangs up."""
    from webhooks.delivery import post_event
    from webhooks.signing import generate_secret

    sent = {"bytes": 0}

    class Huge(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers["content-length"]))
            self.send_response(200)
            self.send_header("content-length", str(200 << 20))
            self.end_headers()
            chunk = b"x" * (1 << 20)
            try:
                for _ in range(200):
                    self.wfile.write(chunk)
                    sent["bytes"] += len(chunk)
            except OSError:
                pass  # the client hung up: the point

        def log_message(self, *a):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Huge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        result = post_event(f"http://127.0.0.1:{server.server_address[1]}/hook", "evt_1", b"{}", [generate_secret()],
                            timeout_s=30, allow_hosts=["127.0.0.1"])
        assert result.status == 200
        wait_for(lambda: sent["bytes"] < (200 << 20), timeout=10)
        with capsys.disabled():
            print(f"\nhuge answer: 200 MiB offered, {sent['bytes'] / 2**20:.0f} MiB written before the hang-up")
        assert sent["bytes"] < (50 << 20), f"{sent['bytes']} bytes were pulled from the receiver"
    finally:
        server.shutdown()
        server.server_close()
