"""C2PA signing round trips: sign, then read back with c2pa.Reader."""
from __future__ import annotations

import datetime as dt
import io
import json
import logging

import c2pa
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from jobs import __version__
from jobs.errors import SigningFailed
from jobs.settings import Settings
from provenance import devkeys
from provenance.c2pa_sign import DIGITAL_SOURCE_TYPE, JOB_ASSERTION, CallbackSigner, ImageSigner, params_hash
from provenance.synthetic import encode, noise_render

INFO = {"job_id": "job-1", "batch_id": "batch-1", "model": "tiny-sd", "seed": 7, "params": {"steps": 2, "prompt": "x"}}
MIME = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> devkeys.DevKeyPaths:
    return devkeys.init_dev_keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def signer(keys) -> ImageSigner:
    s = ImageSigner.from_pem(keys.cert_chain.read_bytes(), keys.private_key.read_bytes())
    yield s
    s.close()


def image_bytes(fmt: str) -> bytes:
    return encode(noise_render(1, 128), {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}[fmt])


def read(data: bytes, fmt: str, anchors: str | None = None) -> tuple[str, dict]:
    ctx = c2pa.Context.from_dict({"trust": {"trust_anchors": anchors}}) if anchors else None
    with c2pa.Reader(MIME[fmt], io.BytesIO(data), None, ctx) as r:
        store = json.loads(r.json())
        state = r.get_validation_state()
    return state, store["manifests"][store["active_manifest"]]


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_signed_image_reads_back_valid_with_job_assertion(signer, fmt):
    signed = signer.sign(image_bytes(fmt), fmt, INFO)
    state, manifest = read(signed, fmt)
    assert state == "Valid"
    assert manifest["claim_generator_info"][0]["name"] == "batchrender"
    assert manifest["claim_generator_info"][0]["version"] == __version__
    labels = {a["label"]: a["data"] for a in manifest["assertions"]}
    action = labels["c2pa.actions.v2"]["actions"][0]
    assert action["action"] == "c2pa.created" and action["digitalSourceType"] == DIGITAL_SOURCE_TYPE
    assert labels[JOB_ASSERTION] == {
        "job_id": "job-1", "batch_id": "batch-1", "model": "tiny-sd", "seed": 7,
        "params_sha256": params_hash(INFO["params"]),
    }
    assert "thumbnail" not in manifest


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_signed_image_is_trusted_with_dev_ca_as_anchor(signer, keys, fmt):
    state, _ = read(signer.sign(image_bytes(fmt), fmt, INFO), fmt, keys.ca_cert.read_text())
    assert state == "Trusted"


def test_webp_is_not_bloated_by_signing(signer):
    data = encode(noise_render(2, 512), "WEBP", quality=80)
    signed = signer.sign(data, "webp", INFO)
    assert len(signed) - len(data) < 16 * 1024  # the manifest alone, no lossless thumbnail


def test_params_hash_is_canonical():
    assert params_hash({"b": 1, "a": [1, 2]}) == params_hash({"a": [1, 2], "b": 1})
    assert params_hash({"a": 1}) != params_hash({"a": 2})


def test_self_signed_leaf_is_rejected_with_signing_failed(tmp_path):
    ca, ca_key = devkeys.make_ca("self-signed leaf")
    with pytest.raises(SigningFailed, match="C2PA"):
        ImageSigner.from_pem(devkeys.pem(ca), devkeys.key_pem(ca_key)).self_test()


def test_expired_leaf_is_rejected_with_signing_failed():
    ca, ca_key = devkeys.make_ca()
    past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=10)
    leaf, key = devkeys.issue_leaf(ca, ca_key, not_before=past - dt.timedelta(days=10), not_after=past)
    with pytest.raises(SigningFailed, match="expired"):
        ImageSigner.from_pem(devkeys.pem(leaf) + devkeys.pem(ca), devkeys.key_pem(key))


def test_key_not_matching_the_leaf_is_rejected(keys):
    _, other = devkeys.make_ca()
    with pytest.raises(SigningFailed, match="does not match"):
        ImageSigner.from_pem(keys.cert_chain.read_bytes(), devkeys.key_pem(other))


def test_unsupported_format_never_returns_unsigned_bytes(signer):
    with pytest.raises(SigningFailed, match="png, jpeg or webp"):
        signer.sign(b"GIF89a", "gif", INFO)


def test_missing_job_info_is_signing_failed(signer):
    with pytest.raises(SigningFailed, match="job_id"):
        signer.sign(image_bytes("png"), "png", {"seed": 1})


def test_callback_signer_with_der_signatures_signs_valid(keys):
    key = load_pem_private_key(keys.private_key.read_bytes(), None)
    calls = []

    def kms_sign(data: bytes) -> bytes:  # stands in for a KMS: returns a DER ECDSA signature
        calls.append(len(data))
        return key.sign(data, ec.ECDSA(hashes.SHA256()))

    signer = ImageSigner.from_callback(CallbackSigner(kms_sign, keys.cert_chain.read_text(), "es256"))
    state, _ = read(signer.sign(image_bytes("png"), "png", INFO), "png", keys.ca_cert.read_text())
    assert state == "Trusted" and calls
    signer.close()


def make_hook(settings: Settings) -> CallbackSigner:
    """A ``module:callable`` hook as an operator would configure it."""
    keydir = settings.home / "keys"
    key = load_pem_private_key((keydir / devkeys.KEY_FILE).read_bytes(), None)
    return CallbackSigner(lambda d: key.sign(d, ec.ECDSA(hashes.SHA256())), (keydir / devkeys.CHAIN_FILE).read_text())


def test_from_settings_loads_the_callback_hook(tmp_path):
    devkeys.init_dev_keys(tmp_path / "keys")
    settings = Settings(home=tmp_path, c2pa_signer_callback=f"{__name__}:make_hook")
    signer = ImageSigner.from_settings(settings)
    assert signer.description == "callback (es256)"
    signer.close()


def test_from_settings_without_certificates_uses_dev_keys_and_warns(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="provenance.c2pa_sign"):
        signer = ImageSigner.from_settings(Settings(home=tmp_path))
    assert "DEVELOPMENT" in caplog.text
    assert (tmp_path / "keys" / "ca.pem").exists()
    assert read(signer.sign(image_bytes("jpeg"), "jpeg", INFO), "jpeg")[0] == "Valid"
    signer.close()


def test_from_settings_with_pem_files(tmp_path, keys):
    settings = Settings(home=tmp_path, c2pa_cert_chain=keys.cert_chain, c2pa_private_key=keys.private_key)
    signer = ImageSigner.from_settings(settings)
    assert "es256" in signer.description and not (tmp_path / "keys").exists()
    signer.close()


@pytest.mark.parametrize("parent_fmt, fmt", [("png", "png"), ("png", "jpeg"), ("webp", "png")])
def test_a_refinement_lists_its_signed_parent_as_parent_of_ingredient(signer, keys, parent_fmt, fmt):
    from provenance.c2pa_sign import ParentImage

    parent = signer.sign(image_bytes(parent_fmt), parent_fmt, {**INFO, "job_id": "job-0"})
    child = signer.sign(image_bytes(fmt), fmt, INFO, parent=ParentImage(parent, "job-0-0.x", "job-0", 0, 1))
    state, manifest = read(child, fmt, keys.ca_cert.read_text())
    assert state == "Trusted"
    labels = {a["label"]: a["data"] for a in manifest["assertions"]}
    opened, edited = labels["c2pa.actions.v2"]["actions"]
    assert opened["action"] == "c2pa.opened" and len(opened["parameters"]["ingredients"]) == 1
    assert edited["action"] == "c2pa.edited" and edited["digitalSourceType"] == DIGITAL_SOURCE_TYPE
    assert labels[JOB_ASSERTION]["parent_job_id"] == "job-0" and labels[JOB_ASSERTION]["turn"] == 1
    [ingredient] = manifest["ingredients"]
    assert ingredient["relationship"] == "parentOf" and ingredient["format"] == MIME[parent_fmt]
    _, parent_manifest = read(parent, parent_fmt)
    with c2pa.Reader(MIME[fmt], io.BytesIO(child)) as r:
        store = json.loads(r.json())
    embedded = store["manifests"][ingredient["active_manifest"]]
    assert {a["label"]: a["data"] for a in embedded["assertions"]}[JOB_ASSERTION]["job_id"] == "job-0"
    assert embedded["signature_info"] == parent_manifest["signature_info"]


def test_a_parent_that_is_not_an_image_is_refused(signer):
    from provenance.c2pa_sign import ParentImage

    with pytest.raises(SigningFailed, match="not a PNG, JPEG or WebP"):
        signer.sign(image_bytes("png"), "png", INFO, parent=ParentImage(b"%PDF-1.7", "job-0-0.pdf", "job-0", 0, 1))


def test_a_rendition_names_what_was_done_to_its_master(signer, keys):
    from provenance.c2pa_sign import ParentImage

    master = signer.sign(image_bytes("png"), "png", {**INFO, "index": 0})
    edits = [{"action": "c2pa.cropped", "description": "cropped to 9:16"},
             {"action": "c2pa.resized", "description": "resized to 1080x1920"}]
    child = signer.sign(image_bytes("jpeg"), "jpeg", {**INFO, "index": 0, "rendition": "story"},
                        parent=ParentImage(master, "job-1-0.png", "job-1", 0, 0), edits=edits)
    state, manifest = read(child, "jpeg", keys.ca_cert.read_text())
    assert state == "Trusted"
    labels = {a["label"]: a["data"] for a in manifest["assertions"]}
    actions = labels["c2pa.actions.v2"]["actions"]
    assert [a["action"] for a in actions] == ["c2pa.opened", "c2pa.cropped", "c2pa.resized"]
    assert labels[JOB_ASSERTION]["rendition"] == "story"
    [ingredient] = manifest["ingredients"]
    assert ingredient["relationship"] == "parentOf" and ingredient["title"] == "job-1-0.png"
