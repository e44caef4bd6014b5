"""``batchrender doctor``: every part a deployment needs, checked for real, each failure with its fix.

Runs in the environment it is given (the same ``BATCHRENDER_*`` variables as the processes it
checks): settings, Redis, storage (write, read, presign), the C2PA signer (and whether its keys
are development keys), the model registry, workers per queue, webhook secrets, the keys that sign
messages and encrypt secrets, the embedded broker, this host's clock against Redis ``TIME``, and
that the workers' storage markers are readable here (storage/shared_check.py).

``role`` says what this host runs: ``api`` (the HTTP API, producers: no model files, no signer),
``worker`` (render workers: model files and the signer), ``all`` (both; the default).
"""
from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from typing import Callable

OK, WARN, FAIL = "ok", "warn", "FAIL"
ROLES = ("all", "api", "worker")


@dataclass(frozen=True)
class Finding:
    check: str
    state: str
    detail: str
    fix: str = ""


def _run(check: str, fix: str, fn: Callable[[], "str | tuple[str, str]"]) -> Finding:
    try:
        out = fn()
    except Exception as e:  # noqa: BLE001 - every failure is a finding
        message = getattr(e, "message", None) or f"{type(e).__name__}: {e}"
        return Finding(check, FAIL, message[:300], fix)
    state, detail = out if isinstance(out, tuple) else (OK, out)
    return Finding(check, state, detail, fix if state != OK else "")


def diagnose(settings, *, inspect_timeout_s: float = 1.0, role: str = "all",
             clock: Callable[[], float] = time.time) -> list[Finding]:
    """The findings, in the order a person would fix them. ``clock``: this host's clock (a test
    may offset it; Redis ``TIME`` is always read for real)."""
    from jobs.embedded import redis_url_for
    from jobs.registry import Registry, local_dir

    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")

    findings: list[Finding] = []
    add = findings.append
    home = settings.home.resolve()
    add(Finding("home", OK, f"{home} (BATCHRENDER_HOME)"))
    if not settings.redis_url:
        def embedded() -> tuple[str, str]:
            # Started now when it is down (the checks below need it, and start it anyway): the port
            # shown is the one it listens on, never a guess of where it might be.
            url = redis_url_for(settings, start=True)
            return WARN, f"no BATCHRENDER_REDIS_URL: the embedded redis-server of {home} ({url})"
        add(_run("broker", "set BATCHRENDER_REDIS_URL for anything but a single host; `make demo` starts the "
                 "embedded one", embedded))

    client_box: list = []

    def redis_ok() -> str:
        from producer.client import Client

        from jobs.redisconn import master_role

        client = Client(settings)
        detail = master_role(client.store.r)  # reachable, and the master: a replica refuses writes
        client_box.append(client)
        return detail
    add(_run("redis", "start Redis or fix BATCHRENDER_REDIS_URL (redis://host:6379/0; Sentinel: sentinel://host1:26379;"
             "sentinel://host2:26379/0 with BATCHRENDER_REDIS_MASTER_NAME)", redis_ok))
    client = client_box[0] if client_box else None

    def clock_ok() -> tuple[str, str]:
        from producer.clock_skew import measure, verdict

        ok, detail = verdict(measure(client.store.r, clock), socket.gethostname())
        return (OK if ok else WARN), detail
    if client is not None:
        add(_run("clock", "synchronise this host's clock (chrony, systemd-timesyncd; the Redis host's too)", clock_ok))

    def storage_ok() -> str:
        from storage import open_storage

        storage = open_storage(settings)
        key = "_health/doctor"
        storage.put(key, b"ok", content_type="text/plain")
        try:
            if storage.get(key) != b"ok":
                raise RuntimeError("read back something else than was written")
            url = storage.presign(key, 60)
        finally:
            storage.delete(key)
        return f"{settings.resolved_storage_url}: write, read, delete" + (", presign" if url else "")
    add(_run("storage", "fix BATCHRENDER_STORAGE_URL (file:///absolute/dir or s3://bucket/prefix) and the S3 "
             "endpoint, credentials and bucket; the directory must be writable", storage_ok))

    def signer_ok() -> tuple[str, str]:
        if role == "api":
            return OK, "not checked: the API signs no images (doctor --role worker on render hosts)"
        from provenance.c2pa_sign import ImageSigner

        signer = ImageSigner.from_settings(settings)
        if not (settings.c2pa_cert_chain or settings.c2pa_signer_callback):
            return WARN, f"DEVELOPMENT keys under {home / 'keys'}: Content Credentials that identify nobody"
        if signer.development:
            return WARN, f"DEVELOPMENT keys ({signer.description}): Content Credentials that identify nobody"
        return OK, f"signs with {settings.c2pa_cert_chain or settings.c2pa_signer_callback}"
    add(_run("c2pa signer", "set BATCHRENDER_C2PA_CERT_CHAIN and BATCHRENDER_C2PA_PRIVATE_KEY to readable PEM "
             "files (leaf first), or BATCHRENDER_C2PA_SIGNER_CALLBACK (development keys with a shared Redis: "
             "BATCHRENDER_C2PA_ALLOW_DEV_KEYS=true)", signer_ok))

    def registry_ok() -> str:
        specs = Registry(settings).all()
        if role == "api":  # the API validates model names; the files live on render hosts only
            return f"{len(specs)} model(s): {', '.join(sorted(specs))} (files not checked: doctor --role worker)"
        bad = [f"{s.name} ({s.source})" for s in specs.values()
               if (d := local_dir(s)) is not None and not (d / "model_index.json").is_file()]
        if bad:
            raise RuntimeError(f"no model_index.json for: {', '.join(bad)}")
        return f"{len(specs)} model(s): {', '.join(sorted(specs))}"
    add(_run("models", "register a directory written by save_pretrained: batchrender models add NAME DIR",
             registry_ok))

    def keys_ok() -> str:
        from jobs.secretbox import SecretBox
        from jobs.signing import Signer

        Signer.for_settings(settings)
        SecretBox.for_settings(settings).open(SecretBox.for_settings(settings).seal("probe"))
        where = "settings" if settings.message_signing_key else f"{home / 'keys'}"
        return f"message signing and secrets keys from {where}"
    add(_run("keys", "BATCHRENDER_MESSAGE_SIGNING_KEY: `batchrender keys signing-key`; BATCHRENDER_SECRETS_KEY: "
             "`batchrender keys secrets-key`; the same values on every host", keys_ok))
    if client is not None:
        from jobs import fleet

        agreed = fleet.agreement(client.store.r, settings, "doctor")
        add(Finding("fleet", OK if agreed["ok"] else FAIL, agreed["detail"], "" if agreed["ok"] else
                    "give every process the same BATCHRENDER_MESSAGE_SIGNING_KEY, BATCHRENDER_SECRETS_KEY and C2PA CA, "
                    "then restart the ones named"))

    def webhook_secret() -> tuple[str, str]:
        if settings.webhook_secret:
            return OK, "a default secret is set"
        return WARN, "no BATCHRENDER_WEBHOOK_SECRET: only tenants' own secrets sign (jobs without a tenant " \
                     "cannot ask for webhooks)"
    add(_run("webhook secret", "set BATCHRENDER_WEBHOOK_SECRET=whsec_... for jobs submitted without a tenant",
             webhook_secret))

    if client is not None:
        from producer.health import readiness

        report = readiness(client, inspect_timeout_s)
        for name, c in report["checks"].items():
            if name.startswith("queue:") or name in ("workers", "storage shared"):
                fix = "" if c["ok"] else c["detail"].split(": ", 1)[-1]
                add(Finding(name, OK if c["ok"] else FAIL, c["detail"], fix))
        client.close()
    return findings


def table(findings: list[Finding]) -> str:
    width = max(len(f.check) for f in findings)
    lines = []
    for f in findings:
        lines.append(f"{f.state:<4}  {f.check:<{width}}  {f.detail}")
        if f.fix and f.state != OK:
            lines.append(f"{'':<4}  {'':<{width}}  fix: {f.fix}")
    return "\n".join(lines)
