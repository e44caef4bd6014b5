"""SSRF policy: each refused class, the operator allow-list; resolution injected (no network)."""
from __future__ import annotations

import pytest

from jobs.errors import WebhookTargetRefused
from webhooks.ssrf import check_url


def resolving_to(*addresses: str):
    return lambda host, port: list(addresses)


@pytest.mark.parametrize("url, why", [
    ("ftp://example.com/", "scheme"),
    ("file:///etc/passwd", "scheme"),
    ("http://user:pw@example.com/", "credentials"),
    ("http://2130706433/", "ambiguous numeric"),
    ("http://0x7f.1/", "ambiguous numeric"),
    ("http://0177.0.0.1/", "ambiguous numeric"),
    ("http://127.1/", "ambiguous numeric"),
    ("http://[::ffff:127.0.0.1]/", "loopback"),
    ("http://127.0.0.1:8080/", "loopback"),
    ("http://[::1]/", "loopback"),
    ("http://10.1.2.3/", "private"),
    ("http://192.168.0.1/", "private"),
    ("http://[fc00::1]/", "private"),
    ("http://169.254.10.10/", "link-local"),
    ("http://[fe80::1]/", "link-local"),
    ("http://224.0.0.1/", "multicast"),
    ("http://0.0.0.0/", "unspecified"),
    ("http://240.0.0.1/", "reserved"),
    ("http://100.64.0.1/", "special-purpose"),
    ("http://169.254.169.254/latest/meta-data/", "metadata"),
    ("http://[fd00:ec2::254]/", "metadata"),
    ("http://metadata.google.internal/computeMetadata/v1/", "metadata"),
    ("http://[2002:7f00:1::]/", "embedded"),
    # Issue 12 M1: what the probe got through before the IANA registries were checked in full.
    ("http://168.63.129.16/machine?comp=goalstate", "metadata"),
    ("http://192.0.0.9/", "special-purpose"),
    ("http://192.0.0.170/", "private"),
    ("http://[fec0::1]/", "special-purpose"),
    ("http://192.88.99.1/", "special-purpose"),
    ("http://192.31.196.1/", "special-purpose"),
    ("http://[2001:4:112::1]/", "private"),
    ("http://[3fff::1]/", "special-purpose"),
])
def test_refused_targets(url: str, why: str) -> None:
    with pytest.raises(WebhookTargetRefused, match=why):
        check_url(url, resolver=resolving_to("93.184.216.34"))


def test_public_name_is_allowed_and_all_addresses_must_be_public() -> None:
    t = check_url("https://hooks.example.com/x", resolver=resolving_to("93.184.216.34", "2606:2800:220:1::1"))
    assert t.addresses == ("93.184.216.34", "2606:2800:220:1::1") and t.port == 443
    with pytest.raises(WebhookTargetRefused, match="10.0.0.5"):
        check_url("https://hooks.example.com/x", resolver=resolving_to("93.184.216.34", "10.0.0.5"))


def test_name_resolving_to_loopback_is_refused() -> None:
    with pytest.raises(WebhookTargetRefused, match="loopback") as refused:
        check_url("http://evil.example/", resolver=resolving_to("127.0.0.1"))
    # the worker's refusal (an event's last error, its log) says where the setting must be set
    assert "BATCHRENDER_WEBHOOK_ALLOW_HOSTS" in str(refused.value) and "every worker" in str(refused.value)
    from producer.api.routers.deliveries import tenant_error

    shown = tenant_error(str(refused.value), "http://evil.example/")  # what a tenant reads of it
    assert "127.0.0.1" not in shown and "BATCHRENDER_" not in shown, shown


@pytest.mark.parametrize("entry", ["127.0.0.1", "127.0.0.0/8", "localhost"])
def test_allow_list_opens_loopback(entry: str) -> None:
    t = check_url("http://localhost:9000/", [entry], resolver=resolving_to("127.0.0.1"))
    assert t.addresses == ("127.0.0.1",)


def test_allow_list_is_specific() -> None:
    with pytest.raises(WebhookTargetRefused):
        check_url("http://10.0.0.2/", ["10.0.0.1", "127.0.0.0/8"])
    with pytest.raises(WebhookTargetRefused, match="ambiguous"):
        check_url("http://2130706433/", ["127.0.0.1"])  # tricks stay refused even when allowed


def test_literal_check_without_dns() -> None:
    assert check_url("https://hooks.example.com/", resolve=False).addresses == ()
    with pytest.raises(WebhookTargetRefused):
        check_url("http://127.0.0.1/", resolve=False)
