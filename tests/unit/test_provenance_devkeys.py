"""Development keys: a CA and a leaf with the extensions c2pa-rs requires."""
from __future__ import annotations

import os

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID

from provenance.devkeys import DEV_WARNING, init_dev_keys


def test_init_dev_keys_writes_ca_chain_and_private_key(tmp_path):
    paths = init_dev_keys(tmp_path / "k")
    chain = x509.load_pem_x509_certificates(paths.cert_chain.read_bytes())
    ca = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    leaf = chain[0]
    assert len(chain) == 2 and chain[1] == ca and leaf.issuer == ca.subject
    assert leaf.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature
    assert ExtendedKeyUsageOID.EMAIL_PROTECTION in leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    leaf.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_KEY_IDENTIFIER)
    leaf.extensions.get_extension_for_oid(ExtensionOID.AUTHORITY_KEY_IDENTIFIER)
    assert os.stat(paths.private_key).st_mode & 0o077 == 0


def test_init_dev_keys_keeps_an_existing_set(tmp_path):
    first = init_dev_keys(tmp_path).cert_chain.read_bytes()
    assert init_dev_keys(tmp_path).cert_chain.read_bytes() == first
    assert init_dev_keys(tmp_path, overwrite=True).cert_chain.read_bytes() != first


def test_dev_warning_says_development_only():
    assert "DEVELOPMENT" in DEV_WARNING
