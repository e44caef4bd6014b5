"""Development signing keys: a private CA and an ES256 leaf that c2pa-rs accepts.

c2pa-rs only signs with a CA-issued leaf carrying KeyUsage digitalSignature, ExtendedKeyUsage
emailProtection and both Subject and Authority Key Identifiers; a self-signed leaf is rejected at
sign time. These keys prove the pipeline works; they identify nobody, so readers will only trust
them when given ``ca.pem`` as a trust anchor.
"""
from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEV_WARNING = (
    "C2PA: signing with DEVELOPMENT keys (self-made CA). Content Credentials signed with them "
    "identify nobody and are not trusted by any public validator. Configure "
    "BATCHRENDER_C2PA_CERT_CHAIN and BATCHRENDER_C2PA_PRIVATE_KEY (or "
    "BATCHRENDER_C2PA_SIGNER_CALLBACK) before production use."
)

#: The organisation of every development certificate: how a development CA is recognised
#: (provenance.c2pa_sign refuses one in a deployment with a shared Redis unless it is allowed).
DEV_ORGANIZATION = "batchrender development"
CA_FILE = "ca.pem"
CHAIN_FILE = "chain.pem"
KEY_FILE = "signer.key"
#: Validity of generated certificates; long enough that a dev setup does not rot.
VALID_DAYS = 3650


@dataclass(frozen=True)
class DevKeyPaths:
    """Where :func:`init_dev_keys` wrote (or found) the development keys."""

    ca_cert: Path
    cert_chain: Path
    private_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, DEV_ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def issue_leaf(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    *,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    common_name: str = "batchrender dev signer",
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Issue an ES256 signing leaf under ``ca_cert`` with the extensions c2pa-rs requires."""
    now = dt.datetime.now(dt.timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - dt.timedelta(minutes=5))
        .not_valid_after(not_after or now + dt.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def make_ca(common_name: str = "batchrender dev CA") -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Create a self-signed ES256 CA certificate and key."""
    now = dt.datetime.now(dt.timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def pem(cert: x509.Certificate) -> bytes:
    """PEM encoding of a certificate."""
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """Unencrypted PKCS#8 PEM encoding of a private key."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write_private(path: Path, data: bytes) -> None:
    # 0600 from the first byte: the key must never be world-readable, even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def init_dev_keys(directory: Path | str, *, overwrite: bool = False) -> DevKeyPaths:
    """Create a development CA, a leaf chain and its key in ``directory``; reuse existing ones.

    Returns the three paths. With ``overwrite=False`` an existing complete set is kept, so several
    worker processes starting together settle on one identity.
    """
    d = Path(directory)
    paths = DevKeyPaths(d / CA_FILE, d / CHAIN_FILE, d / KEY_FILE)
    if not overwrite and all(p.exists() for p in (paths.ca_cert, paths.cert_chain, paths.private_key)):
        return paths
    d.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = make_ca()
    leaf, leaf_key = issue_leaf(ca_cert, ca_key)
    # Write to temporaries then rename: a concurrent reader sees either no set or a whole one.
    tmp = d / f".tmp-{os.getpid()}"
    tmp.mkdir(exist_ok=True)
    (tmp / CA_FILE).write_bytes(pem(ca_cert))
    (tmp / CHAIN_FILE).write_bytes(pem(leaf) + pem(ca_cert))
    _write_private(tmp / KEY_FILE, key_pem(leaf_key))
    for name in (KEY_FILE, CA_FILE, CHAIN_FILE):
        os.replace(tmp / name, d / name)
    tmp.rmdir()
    return paths
