"""Tenants, their API keys (stored hashed, shown once) and per-tenant rate limits.

API keys are 256-bit random tokens, so a plain SHA-256 is enough to store them (there is nothing
to brute-force); the hash is the lookup key, and the key itself is never stored or logged.
"""
from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Any

import redis

from jobs.clock import NOW_LUA
from jobs.names import KEY_PREFIX, tenant_key
from jobs.secretbox import SecretBox
from jobs.settings import Settings

KEY_PREFIX_LIVE = "br_"

# Token bucket: KEYS[1] bucket; ARGV rate/s, burst. Returns {allowed, retry_after_ms}.
#: A token bucket on Redis's own clock: the callers' clocks (API hosts apart, a thread that read the
#: time and reached Redis after a later one) never refill it backwards (needs Redis >= 5, where a
#: script may write after TIME: its effects are replicated, not the script).
_BUCKET = NOW_LUA + """
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(b[1]) or burst
local ts = tonumber(b[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local allowed = 0
local wait = 0
if tokens >= 1 then tokens = tokens - 1; allowed = 1 else wait = math.ceil((1 - tokens) / rate * 1000) end
redis.call('HSET', KEYS[1], 'tokens', tokens, 'ts', math.max(ts, now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {allowed, wait}
"""


def _hash(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


def _apikey_key(digest: str) -> str:
    return f"{KEY_PREFIX}apikey:{digest}"


@dataclass(frozen=True)
class NewTenant:
    tenant_id: str
    name: str
    api_key: str
    webhook_secret: str

    def __repr__(self) -> str:  # the key and secret are shown once, by the CLI, never in reprs
        return f"NewTenant(tenant_id={self.tenant_id!r}, name={self.name!r})"


class Tenants:
    """``settings``: the deployment's, for the key that encrypts webhook secrets at rest."""

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.r = client
        self.settings = settings
        self._bucket = client.register_script(_BUCKET)
        self._box: SecretBox | None = None

    @property
    def box(self) -> SecretBox:
        if self._box is None:
            self._box = SecretBox.for_settings(self.settings)
        return self._box

    def create(self, name: str) -> NewTenant:
        from webhooks.signing import generate_secret

        tenant_id = "ten_" + secrets.token_hex(8)
        api_key = KEY_PREFIX_LIVE + secrets.token_urlsafe(32)
        secret = generate_secret()
        with self.r.pipeline() as p:
            p.hset(tenant_key(tenant_id), mapping={"name": name, "created_at": repr(time.time()),
                                                   "webhook_secrets": self.box.seal(secret), "active": 0})
            p.set(_apikey_key(_hash(api_key)), tenant_id)
            p.execute()
        return NewTenant(tenant_id, name, api_key, secret)

    def add_key(self, tenant_id: str) -> str:
        """Another API key for the tenant (for rotation); returned once."""
        if not self.r.exists(tenant_key(tenant_id)):
            raise KeyError(tenant_id)
        api_key = KEY_PREFIX_LIVE + secrets.token_urlsafe(32)
        self.r.set(_apikey_key(_hash(api_key)), tenant_id)
        return api_key

    def revoke_key(self, api_key: str) -> bool:
        return bool(self.r.delete(_apikey_key(_hash(api_key))))

    def authenticate(self, api_key: str | None) -> str | None:
        """The tenant id for a presented key, or None (unknown key, or the tenant is disabled)."""
        if not api_key or not api_key.startswith(KEY_PREFIX_LIVE) or len(api_key) > 200:
            return None
        tid = self.r.get(_apikey_key(_hash(api_key)))
        tid = tid.decode() if isinstance(tid, bytes) else tid
        if tid is None:
            return None
        disabled = self.r.hget(tenant_key(tid), "disabled")
        return None if disabled in ("1", b"1") else tid

    def set_webhook(self, tenant_id: str, url: str | None) -> None:
        """The tenant's default webhook: where batches made OpenAI's way (no per-request webhook)
        send ``batch.completed``. None removes it."""
        if not self.r.exists(tenant_key(tenant_id)):
            raise KeyError(tenant_id)
        if url is None:
            self.r.hdel(tenant_key(tenant_id), "webhook_url")
            return
        from webhooks.ssrf import check_url

        check_url(url, self.settings.webhook_allow_hosts, resolve=False)
        self.r.hset(tenant_key(tenant_id), "webhook_url", url)

    def webhook(self, tenant_id: str) -> str | None:
        url = self.r.hget(tenant_key(tenant_id), "webhook_url")
        return url.decode() if isinstance(url, bytes) else url

    def set_weight(self, tenant_id: str, weight: Any) -> float:
        """The tenant's share of render time relative to others (default 1; jobs/fairshare.py): an
        operator's setting, never a tenant's (no API route sets it). ValueError names what is
        allowed (greater than 0, at most 1000); KeyError: no such tenant."""
        from jobs.fairshare import check_weight

        w = check_weight(weight)
        if not self.r.exists(tenant_key(tenant_id)):
            raise KeyError(tenant_id)
        self.r.hset(tenant_key(tenant_id), "weight", repr(w))
        return w

    def weight(self, tenant_id: str) -> float:
        from jobs.fairshare import weight

        return weight(self.r, tenant_id)

    def set_disabled(self, tenant_id: str, disabled: bool = True) -> None:
        """A disabled tenant's keys stop working and workers refuse its queued jobs; reversible."""
        if not self.r.exists(tenant_key(tenant_id)):
            raise KeyError(tenant_id)
        self.r.hset(tenant_key(tenant_id), "disabled", "1" if disabled else "0")

    def rotate_webhook_secret(self, tenant_id: str, keep_old: bool = True) -> str:
        """A new signing secret; the old one keeps signing too until rotated again (overlap)."""
        from webhooks.signing import generate_secret

        new = generate_secret()
        old = self.r.hget(tenant_key(tenant_id), "webhook_secrets")
        old = self.box.open(old.decode() if isinstance(old, bytes) else (old or ""))
        current = [new] + ([old.split(" ")[0]] if keep_old and old else [])
        self.r.hset(tenant_key(tenant_id), "webhook_secrets", self.box.seal(" ".join(current)))
        return new

    def allow(self, tenant_id: str, rate_per_s: float, burst: int) -> tuple[bool, float]:
        """Take one token from the tenant's bucket: (allowed, seconds to wait when not)."""
        allowed, wait_ms = self._bucket(keys=[f"{KEY_PREFIX}rate:{tenant_id}"],
                                        args=[rate_per_s, burst])
        return bool(allowed), int(wait_ms) / 1000.0
