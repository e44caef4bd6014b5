"""HTTPS delivery through the pinned connection: the checked IP is dialled, while the host name
still drives SNI and certificate verification (a real TLS receiver on loopback, its own CA)."""
from __future__ import annotations

import datetime as dt
import http.server
import ssl
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import free_port
from webhooks.delivery import post_event
from webhooks.signing import generate_secret

HOST = "hooks.example.test"


def _cert(subject: str, key, issuer=None, issuer_key=None, ca: bool = False, san: str | None = None):
    now = dt.datetime.now(dt.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    b = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer or name).public_key(key.public_key())
         .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
         .not_valid_after(now + dt.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if san:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(san)]), critical=False)
    return b.sign(issuer_key or key, hashes.SHA256())


@pytest.fixture
def tls_receiver(tmp_path):
    ca_key, srv_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _cert("test CA", ca_key, ca=True)
    srv = _cert(HOST, srv_key, issuer=ca.subject, issuer_key=ca_key, san=HOST)
    pem = lambda c: c.public_bytes(serialization.Encoding.PEM)  # noqa: E731
    (tmp_path / "ca.pem").write_bytes(pem(ca))
    (tmp_path / "srv.pem").write_bytes(pem(srv))
    (tmp_path / "srv.key").write_bytes(srv_key.private_bytes(serialization.Encoding.PEM,
                                                             serialization.PrivateFormat.PKCS8,
                                                             serialization.NoEncryption()))
    received: list[dict] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers["content-length"]))
            received.append({"host": self.headers["host"], "sni": getattr(self.connection, "sni", None),
                             "id": self.headers["webhook-id"], "body": body})
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "srv.pem", tmp_path / "srv.key")
    seen_sni: list[str | None] = []
    ctx.sni_callback = lambda sock, name, _ctx: seen_sni.append(name)
    port = free_port()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield port, tmp_path / "ca.pem", received, seen_sni
    server.shutdown()
    server.server_close()


def resolver(host: str, port: int) -> list[str]:
    assert host == HOST
    return ["127.0.0.1"]


def test_https_delivery_dials_the_checked_ip_and_verifies_the_host_name(tls_receiver):
    port, ca, received, sni = tls_receiver
    result = post_event(f"https://{HOST}:{port}/hook", "evt_1", b'{"type":"job.started"}', [generate_secret()],
                        timeout_s=10, allow_hosts=["127.0.0.1"], resolver=resolver, verify_tls=str(ca))
    assert result.status == 204, result
    assert received[0]["host"] == f"{HOST}:{port}" and received[0]["id"] == "evt_1"
    assert sni == [HOST], "SNI carries the host name, not the pinned IP"


def test_https_delivery_refuses_a_certificate_from_an_untrusted_ca(tls_receiver):
    port, _ca, received, _sni = tls_receiver
    result = post_event(f"https://{HOST}:{port}/hook", "evt_2", b"{}", [generate_secret()], timeout_s=10,
                        allow_hosts=["127.0.0.1"], resolver=resolver, verify_tls=True)
    assert result.status == 0 and "CERTIFICATE_VERIFY_FAILED" in result.error.upper().replace(" ", "_")
    assert received == []
