"""The pinned client connects to the address that was validated, whatever DNS says later."""
from __future__ import annotations

import logging

import pytest

from jobs.errors import WebhookTargetRefused
from tests.conftest import free_port
from webhooks.delivery import post_event
from webhooks.signing import generate_secret
from webhooks.ssrf import check_url, pinned_client
from webhooks.testing import LoopbackReceiver


class RebindingResolver:
    """First answer: the address the guard may allow; every later answer: loopback."""

    def __init__(self, first: str, later: str = "127.0.0.1") -> None:
        self.first, self.later, self.calls = first, later, 0

    def __call__(self, host: str, port: int) -> list[str]:
        self.calls += 1
        return [self.first if self.calls == 1 else self.later]


def test_dns_rebinding_cannot_redirect_the_connection(caplog: pytest.LogCaptureFixture) -> None:
    # 127.0.0.2 plays the validated "public" address (the operator allows only it); 127.0.0.1
    # plays the internal service an attacker rebinds the name to, listening on the same port.
    port = free_port()
    with LoopbackReceiver(host="127.0.0.2", port=port) as allowed, LoopbackReceiver(host="127.0.0.1", port=port) as internal:
        resolver = RebindingResolver("127.0.0.2")
        url = f"http://rebind.example:{port}/hook"
        with caplog.at_level(logging.DEBUG, logger="webhooks.ssrf"):
            result = post_event(url, "evt_r", b"{}", [generate_secret()], timeout_s=5,
                                allow_hosts=["127.0.0.2/32"], resolver=resolver)
        assert result.status == 200
        assert resolver.calls == 1  # resolved once; the connection never asked DNS again
        assert len(allowed.received) == 1 and internal.received == []
        assert allowed.received[0].headers["host"] == f"rebind.example:{port}"  # Host header kept
        assert "-> 127.0.0.2" in caplog.text


def test_rebinding_to_a_refused_address_is_refused_at_the_next_check() -> None:
    resolver = RebindingResolver("93.184.216.34")
    check_url("http://rebind.example/", resolver=resolver)
    with pytest.raises(WebhookTargetRefused, match="loopback"):
        check_url("http://rebind.example/", resolver=resolver)


def test_pinned_client_refuses_other_origins() -> None:
    with LoopbackReceiver() as r:
        target = check_url(r.url, ["127.0.0.1"])
        with pinned_client(target, 5) as client:
            assert client.post(r.url, content=b"{}").status_code == 200
            with pytest.raises(Exception, match="not the validated webhook target"):
                client.post(f"http://127.0.0.1:{free_port()}/other", content=b"{}")
