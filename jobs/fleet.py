"""The fleet registry: which processes share this Redis, and whether the keys that must match do.

Processes on several hosts share only Redis and storage. Three things must nevertheless be the
same in all of them, and nothing else would notice when they are not:

- the message-signing key (``BATCHRENDER_MESSAGE_SIGNING_KEY``): a worker with another key drops
  every render message (jobs/signing.py);
- the secrets key (``BATCHRENDER_SECRETS_KEY``): webhook secrets sealed by one process do not open
  in another (jobs/secretbox.py);
- the C2PA trust anchor (the last certificate of the signer's chain): images of a worker with
  another CA do not verify against the CA the others are checked with.

So every long-running process (the API, render workers, webhook workers) publishes a fingerprint
of each under its identity (role, host name, pid, worker name), with a heartbeat: a member that has
not beaten for ``TTL_S`` (Redis ``TIME``, not the caller's clock) is gone. A worker whose key
differs from a live member's refuses to start (:func:`join`); ``/readyz`` and ``batchrender
doctor`` list the disagreements (:func:`disagreements`), naming the members on each side.

Fingerprints never reveal a key: a key's fingerprint is PBKDF2-HMAC-SHA256 of the key with a fixed
per-key label as salt (``ITERATIONS`` rounds), truncated to 64 bits. For the random keys that
``batchrender keys signing-key`` / ``secrets-key`` make (256 bits) nothing can be learnt from it;
the rounds make offline guessing of a weak, hand-typed key costly for whoever can read Redis (it
stays guessable in principle, as any check value would: use generated keys). The C2PA anchor is a
public certificate: its fingerprint is the SHA-256 of its DER bytes, truncated the same way.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import os
import socket
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from jobs.clock import redis_now
from jobs.errors import ConfigurationError
from jobs.names import KEY_PREFIX

log = logging.getLogger(__name__)

#: Members by id, scored by their last heartbeat (Redis ``TIME``, seconds).
FLEET_KEY = f"{KEY_PREFIX}fleet"
#: One hash per member: role, host, pid, name, started, seen and the fingerprints.
MEMBER_PREFIX = f"{KEY_PREFIX}fleet:member:"
#: A member beats this often, and is gone when it has not beaten for ``TTL_S``.
HEARTBEAT_S = 30.0
TTL_S = 120.0
ITERATIONS = 100_000
#: What each fingerprint is of, how a person calls it, and the setting that fixes it.
KEYS: dict[str, tuple[str, str]] = {
    "signing": ("message-signing key", "set BATCHRENDER_MESSAGE_SIGNING_KEY to the same value on every API, "
                "producer and worker process (`batchrender keys signing-key` prints a new one)"),
    "secrets": ("secrets key", "set BATCHRENDER_SECRETS_KEY to the same value on every API and worker process "
                "(`batchrender keys secrets-key` prints a new one)"),
    "c2pa": ("C2PA trust anchor", "give every worker a chain issued by the same CA (BATCHRENDER_C2PA_CERT_CHAIN, or "
             "BATCHRENDER_C2PA_SIGNER_CALLBACK); development keys made on each host have a CA of their own"),
}
#: Members named per side in a message; the rest are counted.
NAMED = 4


class FleetKeyMismatch(ConfigurationError):
    """This process's key differs from the one live members of the fleet use."""

    code = "fleet_key_mismatch"


@functools.lru_cache(maxsize=16)
def key_fingerprint(key: bytes, label: str) -> str:
    """A short, non-reversible fingerprint of secret ``key`` (see the module doc)."""
    return hashlib.pbkdf2_hmac("sha256", key, f"batchrender fleet fingerprint v1: {label}".encode(), ITERATIONS)[:8].hex()


def anchor_fingerprint(cert_der: bytes) -> str:
    """The fingerprint of a (public) C2PA trust anchor certificate."""
    return hashlib.sha256(cert_der).hexdigest()[:16]


def local_fingerprints(settings: Any, c2pa_anchor: str | None = None) -> dict[str, str]:
    """Fingerprints of this process's keys (``c2pa`` only where a signer was built). Raises
    ``ConfigurationError`` as the keys themselves do (e.g. a shared Redis without them)."""
    from jobs.secretbox import SecretBox, secrets_key
    from jobs.signing import Signer, message_key

    signing, sealing = message_key(settings), secrets_key(settings)
    Signer(signing), SecretBox(sealing)  # a key that is no key at all fails here, with its own message
    prints = {"signing": key_fingerprint(signing, "signing"), "secrets": key_fingerprint(sealing, "secrets")}
    if c2pa_anchor:
        prints["c2pa"] = c2pa_anchor
    return prints


@dataclass(frozen=True)
class Member:
    """One process of the fleet as it publishes itself."""

    role: str
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    #: A worker's node name (``render-12@gpu-3``), when it has one.
    name: str = ""

    @property
    def id(self) -> str:
        return f"{self.role}@{self.host}:{self.pid}"

    @property
    def label(self) -> str:
        return self.id + (f" ({self.name})" if self.name else "")


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def publish(r: Any, member: Member, prints: Mapping[str, str], *, started: float | None = None) -> float:
    """Write (or refresh) ``member`` and its fingerprints; drop members gone for ``TTL_S``.
    Returns the Redis time of the beat."""
    now = redis_now(r)
    key = MEMBER_PREFIX + member.id
    info = {"role": member.role, "host": member.host, "pid": str(member.pid), "name": member.name,
            "seen": repr(now), **{k: v for k, v in prints.items() if v}}
    with r.pipeline(transaction=True) as p:
        p.hset(key, mapping=info)
        p.hsetnx(key, "started", repr(started if started is not None else now))
        p.expire(key, int(TTL_S) + 1)
        p.zadd(FLEET_KEY, {member.id: now})
        p.zremrangebyscore(FLEET_KEY, "-inf", now - TTL_S)
        p.execute()
    return now


def leave(r: Any, member: Member) -> None:
    """Take ``member`` out of the fleet (a clean shutdown; a killed one ages out)."""
    with r.pipeline(transaction=True) as p:
        p.zrem(FLEET_KEY, member.id)
        p.delete(MEMBER_PREFIX + member.id)
        p.execute()


def members(r: Any) -> list[dict[str, str]]:
    """The live members (beaten within ``TTL_S``), each a dict with ``id``, ``label``, ``role``,
    ``host``, ``pid``, ``name``, ``started``, ``seen``, ``age_s`` and its fingerprints."""
    now = redis_now(r)
    ids = [_s(i) for i in r.zrangebyscore(FLEET_KEY, now - TTL_S, "+inf")]
    if not ids:
        return []
    with r.pipeline(transaction=False) as p:
        for i in ids:
            p.hgetall(MEMBER_PREFIX + i)
        rows = p.execute()
    out = []
    for i, h in zip(ids, rows):
        if not h:
            continue
        d = {_s(k): _s(v) for k, v in h.items()}
        d["id"] = i
        d["label"] = i + (f" ({d['name']})" if d.get("name") else "")
        d["age_s"] = f"{max(0.0, now - float(d.get('seen') or now)):.0f}"
        out.append(d)
    return out


def _gone_here(m: Mapping[str, str]) -> bool:
    """A member of this host whose process no longer exists (killed before it could leave)."""
    if m.get("host") != socket.gethostname():
        return False
    try:
        pid = int(m.get("pid") or 0)
    except ValueError:
        return False
    if pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # exists, but another user's
    return False


@dataclass(frozen=True)
class Disagreement:
    """Members that hold different values of one key: ``groups`` maps fingerprint -> member labels,
    the largest group first."""

    key: str
    groups: tuple[tuple[str, tuple[str, ...]], ...]

    def describe(self) -> str:
        what, fix = KEYS[self.key]
        sides = "; ".join(f"{_names(labels)} {'has' if len(labels) == 1 else 'have'} {fp}"
                          for fp, labels in self.groups)
        return f"{what} differs: {sides}. Fix: {fix}"


def _names(labels: Iterable[str]) -> str:
    labels = list(labels)
    shown = ", ".join(labels[:NAMED])
    return shown + (f" and {len(labels) - NAMED} more" if len(labels) > NAMED else "")


def disagreements(entries: Iterable[Mapping[str, str]]) -> list[Disagreement]:
    """Per key, the sides when ``entries`` (members, as :func:`members` returns them) hold more
    than one fingerprint of it. A member that does not hold a key (the API has no C2PA signer)
    takes no side."""
    entries = list(entries)
    out = []
    for key in KEYS:
        groups: dict[str, list[str]] = {}
        for m in entries:
            if m.get(key):
                groups.setdefault(m[key], []).append(m["label"])
        if len(groups) > 1:
            ordered = sorted(groups.items(), key=lambda g: (-len(g[1]), g[0]))
            out.append(Disagreement(key, tuple((fp, tuple(sorted(labels))) for fp, labels in ordered)))
    return out


def fleet_disagreements(r: Any, member: Member | None = None,
                        prints: Mapping[str, str] | None = None) -> tuple[list[dict[str, str]], list[Disagreement]]:
    """The live members and their disagreements, counting this process (``member`` with ``prints``)
    whether or not it has published itself."""
    live = [m for m in members(r) if member is None or m["id"] != member.id]
    if member is not None and prints is not None:
        live.append({**prints, "id": member.id, "host": member.host, "label": member.label + " (this process)"})
    return live, disagreements(live)


def agreement(r: Any, settings: Any, role: str) -> dict[str, Any]:
    """For ``/readyz`` and ``batchrender doctor``: ``{"ok", "detail"}``: not ok, naming the
    members on each side, when the live fleet and this process (``role``) disagree on a key."""
    try:
        me = Member(role)
        live, found = fleet_disagreements(r, me, local_fingerprints(settings))
    except Exception as e:  # noqa: BLE001 - reported, never raised: a probe must answer
        return {"ok": False, "detail": getattr(e, "message", None) or f"{type(e).__name__}: {e}"}
    if found:
        return {"ok": False, "detail": " | ".join(d.describe() for d in found)}
    hosts = {m.get("host") for m in live}
    return {"ok": True, "detail": f"{len(live)} process(es) on {len(hosts)} host(s) hold the same message-signing "
                                  "and secrets keys" + (" and C2PA trust anchor" if any(m.get("c2pa") for m in live)
                                                        else "")}


def check_against(live: Iterable[Mapping[str, str]], prints: Mapping[str, str], who: str) -> None:
    """Raise ``FleetKeyMismatch`` when a key in ``prints`` differs from a live member's."""
    for key, mine in prints.items():
        if not mine:
            continue
        others = [m for m in live if m.get(key) and m[key] != mine]
        if others:
            what, fix = KEYS[key]
            agree = [m["label"] for m in live if m.get(key) == mine]
            theirs = sorted({m[key] for m in others})
            ages = ", ".join(f"{m['label']} seen {m.get('age_s', '?')} s ago" for m in others[:NAMED])
            raise FleetKeyMismatch(
                f"{who} has a {what} (fingerprint {mine}) that differs from the one of {len(others)} live "
                f"process(es) on this Redis (fingerprint {', '.join(theirs)}): {ages}"
                + (f" and {len(others) - NAMED} more" if len(others) > NAMED else "")
                + (f"; the same as this one: {_names(agree)}" if agree else "")
                + f". Fix: {fix}; then start it again (a member that stopped without leaving ages out "
                  f"after {TTL_S:.0f} s)")


def join(r: Any, member: Member, prints: Mapping[str, str], *, refuse: bool = True) -> list[Disagreement]:
    """Publish ``member``; with ``refuse``, first raise ``FleetKeyMismatch`` when one of its keys
    differs from a live member's (members of this host whose process is gone are removed first).

    Two processes with different keys starting together both find the other missing: after
    publishing, the later one (by start time in Redis) finds the earlier and refuses; it leaves
    again so the earlier one's readiness is not disturbed. Returns the fleet's disagreements."""
    live = []
    for m in members(r):
        if m["id"] == member.id:
            continue
        if _gone_here(m):
            leave(r, Member(m.get("role", ""), m.get("host", ""), int(m.get("pid") or 0)))
            continue
        live.append(m)
    who = f"this {member.role} ({member.label})"
    if refuse:
        check_against(live, prints, who)
    started = publish(r, member, prints)
    if refuse:
        earlier = [m for m in members(r) if m["id"] != member.id
                   and (float(m.get("started") or 0), m["id"]) < (started, member.id)]
        try:
            check_against(earlier, prints, who)
        except FleetKeyMismatch:
            leave(r, member)
            raise
    _, found = fleet_disagreements(r)
    for d in found:
        log.warning("fleet: %s", d.describe())
    return found


def enter(redis_for: Any, member: Member, prints: Mapping[str, str], *, refuse: bool = True) -> None:
    """What a process does at start: :func:`join` (with ``refuse``, ``FleetKeyMismatch`` stops it),
    then beat for as long as it lives (:func:`keep_alive`). With Redis unreachable the check is
    skipped, said so, and the beats publish the process once Redis is back (``/readyz`` and
    doctor still compare)."""
    import redis

    from jobs.errors import TransientError

    try:
        join(redis_for(), member, prints, refuse=refuse)
    except (redis.exceptions.RedisError, OSError, TransientError) as e:
        log.warning("fleet: could not compare keys with the fleet (Redis: %s); publishing when it is back", e)
    keep_alive(redis_for, member, prints)


def fresh_keys_env(*, allow_dev_c2pa: bool = False) -> dict[str, str]:
    """New message-signing and secrets keys as ``BATCHRENDER_*`` variables, for every process of a
    throwaway deployment on a shared Redis (benchmarks); ``allow_dev_c2pa`` asks for development
    C2PA keys too."""
    import secrets

    from cryptography.fernet import Fernet

    env = {"BATCHRENDER_MESSAGE_SIGNING_KEY": secrets.token_urlsafe(32),
           "BATCHRENDER_SECRETS_KEY": Fernet.generate_key().decode()}
    if allow_dev_c2pa:
        env["BATCHRENDER_C2PA_ALLOW_DEV_KEYS"] = "true"
    return env


def keep_alive(redis_for: Any, member: Member, prints: Mapping[str, str]) -> None:
    """Beat every ``HEARTBEAT_S`` from a daemon thread for as long as the process lives
    (``redis_for()`` gives the client; a failed beat is logged and the next one tries again)."""
    from jobs.periodic import start_periodic

    start_periodic("fleet-heartbeat", 2 * HEARTBEAT_S, lambda: publish(redis_for(), member, prints))


__all__ = ["FLEET_KEY", "HEARTBEAT_S", "KEYS", "TTL_S", "Disagreement", "FleetKeyMismatch", "Member",
           "agreement", "anchor_fingerprint", "check_against", "disagreements", "enter", "fleet_disagreements", "fresh_keys_env", "join", "keep_alive",
           "key_fingerprint", "leave", "local_fingerprints", "members", "publish", "redis_now"]
