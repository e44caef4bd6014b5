"""One delivery attempt and what it means: delivered, retry (after a delay), gone or dead.

An attempt POSTs the stored JSON body with fresh Standard Webhooks headers (same ``webhook-id``
every time, new ``webhook-timestamp``) through the SSRF-pinned client. Only 2xx is success;
redirects are not followed (3xx fails, so a receiver cannot bounce us to an internal address).
"""
from __future__ import annotations

import email.utils
import logging
import random
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import httpx

import jobs
from jobs.errors import ConfigurationError, DeliveryFailed, WebhookTargetRefused
from webhooks.signing import signed_headers
from webhooks.ssrf import Resolver, check_url, pinned_client
from webhooks.store import DEAD, DELIVERED, GONE, PENDING, Attempt, DeliveryStore, EventRecord

log = logging.getLogger(__name__)

USER_AGENT = f"batchrender-webhooks/{jobs.__version__}"
#: Statuses whose Retry-After header we honour.
RETRY_AFTER_STATUSES = frozenset({429, 503})
#: Error text kept per attempt; receivers' error pages can be huge.
MAX_ERROR_CHARS = 300
#: Bytes of a receiver's answer that are read at most (the status is what counts).
MAX_RESPONSE_BYTES = 64 * 1024


@dataclass(frozen=True)
class HttpResult:
    """What came back from one POST: ``status`` 0 when no response (connect error, timeout)."""

    status: int
    latency_ms: int
    error: str = ""
    retry_after_s: float | None = None
    refused: bool = False


@dataclass(frozen=True)
class Decision:
    """The classification of an attempt; ``delay_s`` is set for ``retry``."""

    outcome: str  # "delivered" | "retry" | "gone" | "dead"
    delay_s: float = 0.0


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def backoff_delay(schedule: Sequence[float], attempt: int, rng: random.Random | None = None) -> float:
    """Delay before attempt ``attempt + 1`` (``attempt`` just failed, counted from 1).

    ``schedule[i]`` is the nominal gap before attempt ``i + 1``. Full jitter over the upper half
    of each step, so many endpoints failing together spread out but the schedule keeps its shape.
    """
    base = float(schedule[attempt])
    return base if base <= 0 else (rng or random).uniform(base / 2, base)


def classify(result: HttpResult, attempt: int, schedule: Sequence[float],
             rng: random.Random | None = None) -> Decision:
    """Delivered on 2xx, gone on 410, dead when refused or out of attempts, else retry."""
    if 200 <= result.status < 300:
        return Decision("delivered")
    if result.status == 410:
        return Decision("gone")
    if result.refused or attempt >= len(schedule):
        return Decision("dead")
    delay = backoff_delay(schedule, attempt, rng)
    if result.status in RETRY_AFTER_STATUSES and result.retry_after_s is not None:
        # Honour the receiver, but never beyond the longest step we would wait anyway.
        delay = max(delay, min(result.retry_after_s, max(schedule)))
    return Decision("retry", delay)


def post_event(url: str, event_id: str, body: bytes, secrets: Sequence[str], *, timeout_s: float,
               allow_hosts: Sequence[str] = (), resolver: Resolver | None = None,
               verify_tls: bool | str = True) -> HttpResult:
    """POST one signed delivery. Never raises for network or policy failures: it reports them."""
    started = time.monotonic()

    def ms() -> int:
        return int((time.monotonic() - started) * 1000)

    try:
        target = check_url(url, allow_hosts, resolver)
    except WebhookTargetRefused as e:
        return HttpResult(0, ms(), f"refused: {e.message}", refused=True)
    except DeliveryFailed as e:
        return HttpResult(0, ms(), e.message)
    headers = {
        **signed_headers(event_id, body, secrets),
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }
    # timeout_s bounds the whole attempt (DNS above included): a watchdog shuts the socket at
    # the deadline in whatever phase it is, so a receiver dripping header bytes cannot hold it.
    client = pinned_client(target, timeout_s, verify=verify_tls, deadline=started + timeout_s)
    late = f"timeout: the attempt took longer than {timeout_s:g} s (connecting, the response headers and body)"
    try:
        with client, client.stream("POST", url, content=body, headers=headers) as resp:
            # Only the status counts: read at most MAX_RESPONSE_BYTES of the answer and hang up,
            # so a receiver answering with gigabytes costs nothing.
            read = 0
            try:
                for chunk in resp.iter_raw():
                    read += len(chunk)
                    if read >= MAX_RESPONSE_BYTES or time.monotonic() - started > timeout_s:
                        break
            except httpx.HTTPError:
                pass  # the status is in: a body cut off (by the deadline, say) does not change it
    except httpx.TimeoutException as e:
        return HttpResult(0, ms(), late if client.expired else f"timeout: {type(e).__name__}")
    except httpx.HTTPError as e:
        if client.expired:
            return HttpResult(0, ms(), late)
        return HttpResult(0, ms(), f"{type(e).__name__}: {e}"[:MAX_ERROR_CHARS])
    error = "" if resp.is_success else f"HTTP {resp.status_code}"
    if resp.is_redirect:
        error += " (redirects are not followed)"
    return HttpResult(resp.status_code, ms(), error, parse_retry_after(resp.headers.get("retry-after")))


class Deliverer:
    """Runs one attempt of a stored event and records the outcome in the store."""

    def __init__(self, store: DeliveryStore, *, timeout_s: float, schedule: Sequence[float],
                 allow_hosts: Sequence[str] = (), resolver: Resolver | None = None,
                 rng: random.Random | None = None, verify_tls: bool | str = True,
                 refresh: Callable[[str], str] | None = None,
                 secrets_for: Callable[[EventRecord], Sequence[str]] | None = None) -> None:
        """``refresh`` rewrites a stored body just before each attempt (fresh output links);
        ``secrets_for`` finds an event's signing secrets at each attempt (default: its record's)."""
        if not schedule:
            raise ValueError("webhook schedule must hold at least one step")
        self.store = store
        self.timeout_s = timeout_s
        self.schedule = list(schedule)
        self.allow_hosts = list(allow_hosts)
        self.resolver = resolver
        self.rng = rng
        self.verify_tls = verify_tls
        self.refresh = refresh
        self.secrets_for = secrets_for

    def attempt(self, rec: EventRecord) -> Decision:
        """One attempt of ``rec`` (already claimed), logged; returns what to do next."""
        n = rec.next_attempt
        if self.store.is_disabled(rec.url):
            self.store.update(rec.id, state=GONE, claimed_until=0,
                              last_error="not attempted: endpoint answered 410 Gone earlier")
            log.info("webhook %s not sent: endpoint disabled after 410 Gone", rec.id)
            return Decision("gone")
        payload = rec.payload
        if self.refresh is not None:
            try:
                payload = self.refresh(payload)
            except Exception:  # noqa: BLE001 - stale links beat no delivery
                log.warning("webhook %s: could not refresh its links; sending the stored body", rec.id, exc_info=True)
        try:
            secrets = self.secrets_for(rec) if self.secrets_for is not None else rec.secrets
        except ConfigurationError as e:
            # Its secret does not decrypt here (another BATCHRENDER_SECRETS_KEY): no attempt can
            # succeed, so the event ends dead with the reason, to be replayed once keys are fixed.
            return self._dead_unsent(rec, f"not sent: {e.message}; fix the key, then `batchrender webhooks "
                                          f"replay {rec.id}`")
        result = post_event(rec.url, rec.id, payload.encode(), secrets, timeout_s=self.timeout_s,
                            allow_hosts=self.allow_hosts, resolver=self.resolver, verify_tls=self.verify_tls)
        decision = classify(result, n, self.schedule, self.rng)
        self.store.log_attempt(rec.id, Attempt(n, time.time(), result.status, result.latency_ms,
                                               decision.outcome, result.error, rec.generation))
        state = {"delivered": DELIVERED, "gone": GONE, "dead": DEAD, "retry": PENDING}[decision.outcome]
        fields: dict[str, object] = dict(state=state, attempts=rec.attempts + 1, last_status=result.status,
                                         last_error=result.error, claimed_until=0)
        if decision.outcome == "retry":
            # On Redis's clock: the next attempt's task may run on another worker (jobs/clock.py).
            fields.update(next_attempt=n + 1, not_before=self.store.now() + decision.delay_s)
        self.store.update(rec.id, **fields)
        if decision.outcome == "gone":
            self.store.disable_endpoint(rec.url, rec.id)
        log.info("webhook %s attempt %d -> %s (status %s, %d ms)%s", rec.id, n, decision.outcome,
                 result.status or "-", result.latency_ms, f" {result.error}" if result.error else "")
        return decision

    def _dead_unsent(self, rec: EventRecord, error: str) -> Decision:
        """End ``rec`` as dead without sending it, its error logged as the attempt's."""
        error = error[:2 * MAX_ERROR_CHARS]
        self.store.log_attempt(rec.id, Attempt(rec.next_attempt, time.time(), 0, 0, "dead", error, rec.generation))
        self.store.update(rec.id, state=DEAD, attempts=rec.attempts + 1, last_status=0, last_error=error,
                          claimed_until=0)
        log.error("webhook %s attempt %d -> dead: %s", rec.id, rec.next_attempt, error)
        return Decision("dead")
