"""C2PA Content Credentials for rendered images (PNG, JPEG, WebP), signed before upload.

Each manifest holds a ``c2pa.actions`` assertion (``c2pa.created``, digital source type
trainedAlgorithmicMedia), claim generator ``batchrender/<version>``, and an
``org.batchrender.job`` assertion with job id, batch id, model, seed and the SHA-256 of the
canonical JSON of the render parameters. A refinement (jobs/lineage.py) lists its parent image
as a ``parentOf`` ingredient, the parent's own manifest embedded with it, and its actions are
``c2pa.opened`` (that ingredient) then ``c2pa.edited``: reading the last image of a chain of
refinements walks back to the first. A rendition (worker/renditions.py) lists its signed master
the same way, followed by the ``edits`` that made it (``c2pa.cropped``, ``c2pa.resized``, ...). Thumbnails are off: c2pa's default thumbnail is
lossless and made a 38 KB WebP weigh 1 MB.

Key sources, in order: ``c2pa_signer_callback`` (KMS/HSM), ``c2pa_cert_chain`` +
``c2pa_private_key`` (PEM files), else development keys under ``home/keys`` (loud warning).
Development keys (those, or a chain from ``batchrender keys init``) are refused when
``BATCHRENDER_REDIS_URL`` is set unless ``BATCHRENDER_C2PA_ALLOW_DEV_KEYS`` asks for them: each host
would make a CA of its own, with the same name, and images would verify against one host's CA only.
A signer knows the fingerprint of its trust anchor (the chain's last certificate), which
jobs/fleet.py compares across workers.
c2pa-rs only rejects a bad certificate when it signs, so :meth:`ImageSigner.from_settings`
signs a tiny image once: a misconfiguration fails at worker start-up, not on the first job.
Every failure is :class:`SigningFailed`; unsigned bytes are never returned.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import importlib
import io
import json
import logging
import os
import threading
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from jobs import __version__
from jobs.errors import ConfigurationError, SigningFailed
from jobs.settings import Settings

log = logging.getLogger(__name__)

DIGITAL_SOURCE_TYPE = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
JOB_ASSERTION = "org.batchrender.job"
GENERATOR = "batchrender"
MIME_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "jpg": "image/jpeg", "webp": "image/webp"}
REQUIRED_INFO = ("job_id", "batch_id", "model", "seed")
#: The label of a refinement's parentOf ingredient, which its c2pa.opened action names.
PARENT_LABEL = "parent"
_C2PA_SETTINGS = {"builder": {"thumbnail": {"enabled": False}}}
_ES_SIZES = {"es256": 32, "es384": 48, "es512": 66}


@dataclass(frozen=True)
class ParentImage:
    """The image a refinement was rendered from: its delivered (signed) bytes, as stored."""

    data: bytes
    title: str
    job_id: str
    index: int
    turn: int

    @property
    def mime(self) -> str:
        mime = sniff_mime(self.data)
        if mime is None:
            raise SigningFailed(f"the parent image {self.title!r} is not a PNG, JPEG or WebP")
        return mime


def sniff_mime(data: bytes) -> str | None:
    """The MIME type of PNG, JPEG or WebP bytes, from their signature; None for anything else."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


@dataclass(frozen=True)
class CallbackSigner:
    """What a ``c2pa_signer_callback`` hook returns: a remote signing function and its chain.

    ``sign(data)`` returns the signature over ``data``; for ES* either raw ``r||s`` or DER (as
    AWS KMS and most HSMs return), which is converted. ``alg`` is one of es256, es384, es512,
    ps256, ps384, ps512, ed25519.
    """

    sign: Callable[[bytes], bytes]
    cert_chain_pem: str
    alg: str = "es256"


def params_hash(params: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON (sorted keys, no spaces, UTF-8) of the render parameters."""
    canonical = json.dumps(params, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def alg_for_key(key_pem: bytes) -> str:
    """The C2PA algorithm name for a PEM private key (EC curve or RSA-PSS or Ed25519)."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as e:
        raise SigningFailed(f"C2PA private key is not an unencrypted PEM key: {e}") from None
    if isinstance(key, ec.EllipticCurvePrivateKey):
        by_curve = {"secp256r1": "es256", "secp384r1": "es384", "secp521r1": "es512"}
        if key.curve.name not in by_curve:
            raise SigningFailed(f"C2PA key curve {key.curve.name} is unsupported; use P-256, P-384 or P-521")
        return by_curve[key.curve.name]
    if isinstance(key, rsa.RSAPrivateKey):
        return "ps256"
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "ed25519"
    raise SigningFailed(f"C2PA key type {type(key).__name__} is unsupported; use EC, RSA or Ed25519")


def _check_chain(chain_pem: bytes, key_pem: bytes | None) -> list:
    """Catch the common mistakes with a clearer message than c2pa-rs gives; the chain's
    certificates, leaf first."""
    from cryptography import x509

    try:
        certs = x509.load_pem_x509_certificates(chain_pem)
    except ValueError as e:
        raise SigningFailed(f"C2PA certificate chain is not valid PEM: {e}") from None
    leaf = certs[0]
    now = dt.datetime.now(dt.timezone.utc)
    if leaf.not_valid_after_utc < now:
        raise SigningFailed(f"C2PA signing certificate expired on {leaf.not_valid_after_utc:%Y-%m-%d}; renew it")
    if leaf.not_valid_before_utc > now:
        raise SigningFailed(f"C2PA signing certificate is not valid before {leaf.not_valid_before_utc:%Y-%m-%d}")
    if key_pem is not None:
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_private_key

        pub = load_pem_private_key(key_pem, password=None).public_key()
        fmt = (Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        if pub.public_bytes(*fmt) != leaf.public_key().public_bytes(*fmt):
            raise SigningFailed("C2PA private key does not match the first certificate of the chain (leaf first)")
    return certs


def _anchor(certs: list) -> tuple[str, bool]:
    """The trust anchor's fingerprint (the chain's last certificate) and whether it is a
    development CA (``provenance.devkeys``)."""
    from cryptography.hazmat.primitives.serialization import Encoding
    from cryptography.x509.oid import NameOID

    from jobs.fleet import anchor_fingerprint
    from provenance.devkeys import DEV_ORGANIZATION

    root = certs[-1]
    orgs = [a.value for a in root.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    return anchor_fingerprint(root.public_bytes(Encoding.DER)), DEV_ORGANIZATION in orgs


def dev_keys_refused(settings: Settings, what: str) -> ConfigurationError | None:
    """The error for development keys in a deployment with a shared Redis (None: allowed)."""
    if settings.redis_url is None or settings.c2pa_allow_dev_keys:
        return None
    return ConfigurationError(
        f"C2PA: {what} are development keys, and BATCHRENDER_REDIS_URL is set (processes may run on several "
        "hosts): each host would sign with a development CA of its own, under the same name, and `verify --trust` "
        "would fail for every other host's images. Set BATCHRENDER_C2PA_CERT_CHAIN and BATCHRENDER_C2PA_PRIVATE_KEY "
        "(or BATCHRENDER_C2PA_SIGNER_CALLBACK) to credentials from your CA on every worker; for a test deployment "
        "set BATCHRENDER_C2PA_ALLOW_DEV_KEYS=true and give every worker the same `batchrender keys init DIR` files")


def _raw_signature(sig: bytes, alg: str) -> bytes:
    """COSE wants ES signatures as fixed-size r||s; KMS/HSM APIs usually return DER."""
    size = _ES_SIZES.get(alg)
    if size is None or len(sig) == 2 * size or sig[:1] != b"\x30":
        return sig
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    r, s = decode_dss_signature(sig)
    return r.to_bytes(size, "big") + s.to_bytes(size, "big")


class ImageSigner:
    """Signs image bytes with one C2PA signer. Create once per process, after fork."""

    def __init__(self, signer: Any, *, description: str, anchor: str | None = None, development: bool = False) -> None:
        import c2pa

        self._c2pa = c2pa
        self._signer = signer
        self._context = c2pa.Context.from_dict(_C2PA_SETTINGS)
        self.description = description
        #: Fingerprint of the chain's last certificate (jobs/fleet.py compares it across workers).
        self.anchor = anchor
        #: Whether that certificate is a development CA (provenance/devkeys.py).
        self.development = development
        # c2pa handles guard themselves, but one sign at a time keeps the native side simple and
        # costs little (~5 ms per 1024 px PNG without a thumbnail).
        self._lock = threading.Lock()

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_pem(cls, cert_chain_pem: bytes, private_key_pem: bytes, *, tsa_url: str | None = None,
                 description: str = "PEM files") -> "ImageSigner":
        """Signer from a PEM chain (leaf first) and private key; algorithm read from the key type."""
        import c2pa

        anchor, development = _anchor(_check_chain(cert_chain_pem, private_key_pem))
        alg = alg_for_key(private_key_pem)
        try:
            info = c2pa.C2paSignerInfo(alg, cert_chain_pem, private_key_pem, tsa_url)
            signer = c2pa.Signer.from_info(info)
        except (c2pa.C2paError, ValueError) as e:
            raise SigningFailed(f"C2PA rejected the signing credentials ({description}): {e}") from e
        return cls(signer, description=f"{description} ({alg})", anchor=anchor, development=development)

    @classmethod
    def from_callback(cls, spec: CallbackSigner, *, tsa_url: str | None = None) -> "ImageSigner":
        """Signer whose private key stays in a KMS/HSM: c2pa calls ``spec.sign`` per manifest."""
        import c2pa

        alg = spec.alg.lower()
        anchor, development = _anchor(_check_chain(spec.cert_chain_pem.encode(), None))
        try:
            signer = c2pa.Signer.from_callback(
                lambda data: _raw_signature(spec.sign(data), alg),
                getattr(c2pa.C2paSigningAlg, alg.upper()), spec.cert_chain_pem, tsa_url)
        except (c2pa.C2paError, AttributeError) as e:
            raise SigningFailed(f"C2PA rejected the callback signer ({alg}): {e}") from e
        return cls(signer, description=f"callback ({alg})", anchor=anchor, development=development)

    @classmethod
    def from_settings(cls, settings: Settings, *, self_test: bool = True) -> "ImageSigner":
        """The configured signer; dev keys under ``home/keys`` (created if missing) when none is."""
        if settings.c2pa_signer_callback:
            signer = cls.from_callback(_load_hook(settings.c2pa_signer_callback, settings),
                                       tsa_url=settings.c2pa_tsa_url)
        elif settings.c2pa_cert_chain or settings.c2pa_private_key:
            if not (settings.c2pa_cert_chain and settings.c2pa_private_key):
                raise ConfigurationError("set both BATCHRENDER_C2PA_CERT_CHAIN and BATCHRENDER_C2PA_PRIVATE_KEY")
            try:
                chain, key = settings.c2pa_cert_chain.read_bytes(), settings.c2pa_private_key.read_bytes()
            except OSError as e:
                raise ConfigurationError(f"cannot read C2PA credentials: {e}") from e
            signer = cls.from_pem(chain, key, tsa_url=settings.c2pa_tsa_url, description=str(settings.c2pa_cert_chain))
        else:
            from provenance.devkeys import DEV_WARNING, init_dev_keys

            refused = dev_keys_refused(settings, "no C2PA credentials are configured, and the ones made under "
                                                 f"{settings.home / 'keys'}")
            if refused is not None:
                raise refused  # before any key file is made
            paths = init_dev_keys(settings.home / "keys")
            log.warning("%s (keys: %s)", DEV_WARNING, paths.cert_chain.parent)
            signer = cls.from_pem(paths.cert_chain.read_bytes(), paths.private_key.read_bytes(),
                                  tsa_url=settings.c2pa_tsa_url, description="DEVELOPMENT keys")
        if signer.development:
            refused = dev_keys_refused(settings, f"the configured credentials ({signer.description})")
            if refused is not None:
                signer.close()
                raise refused
        if self_test:
            signer.self_test()
        return signer

    # -- signing -------------------------------------------------------------------------------
    def manifest(self, fmt: str, info: Mapping[str, Any], parent: ParentImage | None = None,
                 edits: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """The manifest definition for one image (exposed for tests and docs). ``edits``: with a
        ``parent``, the actions done to it after ``c2pa.opened`` (a rendition: ``c2pa.cropped``,
        ``c2pa.resized``, ...) instead of a refinement's ``c2pa.edited``."""
        missing = [k for k in REQUIRED_INFO if k not in info]
        if missing:
            raise SigningFailed(f"C2PA info lacks {', '.join(missing)}; pass job_id, batch_id, model, seed, params")
        job: dict[str, Any] = {
            "job_id": str(info["job_id"]),
            "batch_id": str(info["batch_id"]),
            "model": str(info["model"]),
            "seed": int(info["seed"]),
            "params_sha256": params_hash(info.get("params", {})),
        }
        if "index" in info:
            job["index"] = int(info["index"])
        if "rendition" in info:
            job["rendition"] = str(info["rendition"])
        created = {"action": "c2pa.created", "digitalSourceType": DIGITAL_SOURCE_TYPE,
                   "softwareAgent": {"name": GENERATOR, "version": __version__}}
        actions = [created]
        if parent is not None:
            job.update(parent_job_id=parent.job_id, parent_index=parent.index, turn=parent.turn)
            # C2PA: an edit opens its parentOf ingredient first, then says what was done to it.
            actions = [{"action": "c2pa.opened", "parameters": {"ingredientIds": [PARENT_LABEL]}},
                       *([{"softwareAgent": created["softwareAgent"], **e} for e in edits] if edits else
                         [{**created, "action": "c2pa.edited", "description": "refined by image-to-image from "
                           "the parent image with a new prompt"}])]
        return {
            "claim_generator_info": [{"name": GENERATOR, "version": __version__}],
            "title": f"{job['job_id']}.{fmt}",
            "format": MIME_TYPES[fmt],
            "assertions": [
                {"label": "c2pa.actions", "data": {"actions": actions}},
                {"label": JOB_ASSERTION, "data": job},
            ],
        }

    def sign(self, data: bytes, fmt: str, info: Mapping[str, Any], parent: ParentImage | None = None,
             edits: list[dict[str, Any]] | None = None) -> bytes:
        """Return ``data`` with an embedded, signed C2PA manifest; SigningFailed otherwise.
        ``parent``: the image this one refines or is derived from, listed as its ``parentOf``
        ingredient; ``edits``: what was done to it (default: a refinement's ``c2pa.edited``)."""
        fmt = fmt.lower()
        if fmt not in MIME_TYPES:
            raise SigningFailed(f"cannot sign format {fmt!r}; use png, jpeg or webp")
        manifest = self.manifest(fmt, info, parent, edits)
        c2pa = self._c2pa
        out = io.BytesIO()
        try:
            with self._lock:
                builder = c2pa.Builder(manifest, self._context)
                try:
                    if parent is not None:
                        # The bytes carry the parent's own manifest: c2pa embeds it with the ingredient.
                        builder.add_ingredient({"title": parent.title, "relationship": "parentOf",
                                                "label": PARENT_LABEL}, parent.mime, io.BytesIO(parent.data))
                    builder.sign(self._signer, MIME_TYPES[fmt], io.BytesIO(data), out)
                finally:
                    builder.close()
        except c2pa.C2paError as e:
            raise SigningFailed(f"C2PA signing with {self.description} failed: {e}") from e
        signed = out.getvalue()
        if not signed or signed == data:
            raise SigningFailed("C2PA signing produced no signed output")
        return signed

    def self_test(self) -> None:
        """Sign a 16x16 PNG once: c2pa-rs checks the certificate only when it signs."""
        from PIL import Image

        buf = io.BytesIO()
        Image.new("RGB", (16, 16), (128, 64, 32)).save(buf, "PNG")
        self.sign(buf.getvalue(), "png", {"job_id": "self-test", "batch_id": "self-test", "model": "none", "seed": 0})

    def close(self) -> None:
        """Free the native signer and context."""
        self._context.close()
        self._signer.close()


def _load_hook(spec: str, settings: Settings) -> CallbackSigner:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigurationError(f"c2pa_signer_callback {spec!r} must look like 'package.module:callable'")
    try:
        hook = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigurationError(f"c2pa_signer_callback {spec!r} cannot be loaded: {e}") from e
    result = hook(settings)
    if not isinstance(result, CallbackSigner):
        raise ConfigurationError(f"c2pa_signer_callback {spec!r} must return provenance.c2pa_sign.CallbackSigner")
    return result


_process_signer: tuple[int, ImageSigner] | None = None
_process_lock = threading.Lock()


def process_signer(settings: Settings) -> ImageSigner:
    """The ImageSigner of this process, created on first use (call after fork, e.g. in
    ``worker_process_init``); a forked child builds its own."""
    global _process_signer
    with _process_lock:
        if _process_signer is None or _process_signer[0] != os.getpid():
            _process_signer = (os.getpid(), ImageSigner.from_settings(settings))
        return _process_signer[1]
