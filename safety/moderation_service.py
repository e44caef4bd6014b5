"""Optional stage: ask a classifier service over HTTP (configured by the policy's ``moderation_service:``).

Two wire formats, spoken exactly as the real services speak them:

* ``openai``: ``POST {url}`` (``/v1/moderations``) with ``{"model", "input": [{"type": "text", "text"}]}``
  (an image as ``{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}``),
  answered ``{"id", "model", "results": [{"flagged", "categories", "category_scores",
  "category_applied_input_types"}]}``. Each ``category_scores`` entry mapped in the policy is
  compared with its threshold.
* ``llama_guard``: ``POST {url}`` (an OpenAI-compatible ``/v1/chat/completions``: vLLM, TGI)
  with the prompt as the user message, answered by a chat completion whose content is ``safe`` or
  ``unsafe`` and a line of MLCommons hazard codes (``S1,S10``): Llama Guard 3/4.

What can go wrong, and what it becomes (never a 500, never an allow by accident):

* **A bad answer** (not JSON, a 200 with an error body, an unknown category or code, a score
  outside 0-1, a mapped category missing, the wrong number of results, a 4xx): a verdict by the
  policy's ``fail``: ``closed`` blocks (category ``moderation_error``), ``open`` flags and the
  chain goes on. The reason is logged and named in the verdict's rule (``bad_answer:not_json``).
* **An outage** (refused, timed out, DNS, 408/429/5xx, the circuit breaker open, every slot
  busy): with ``fail: open`` a flag. With ``fail: closed`` the API answers 503 with Retry-After
  (``ModerationUnavailable``), or accepts and leaves the check to the worker (``outage.api:
  defer``); the worker puts the job back on the queue (it *waits*) until the service has been
  unavailable for ``outage.max_wait_s`` (counted by this process from the first failure of the
  current run of failures), then the job fails as ``moderation_unavailable``
  (``ModerationOutageTooLong``).

Around each call: a cache of answers keyed on the normalised prompt (``safety.normalize.clean``,
so a lookalike or zero-width variant of a prompt the service already judged gets the same
answer), a concurrency cap (a semaphore), a circuit breaker (open after ``failures`` consecutive
failures, one probe after ``cooldown_s``), and the SSRF guard of the webhooks (a service on
loopback or a private address must be listed in ``BATCHRENDER_MODERATION_SERVICE_ALLOW_HOSTS``;
the client connects to the checked addresses only). The key (``BATCHRENDER_MODERATION_SERVICE_KEY``)
is sent as a Bearer token and never appears in a log line, repr, verdict or error.
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import httpcore
import httpx
from pydantic import SecretStr

from jobs.errors import (ConfigurationError, DeliveryFailed, ModerationOutageTooLong, ModerationUnavailable,
                         WebhookTargetRefused)
from safety.normalize import clean
from safety.policy import Policy, ServiceConfig
from safety.verdict import MODERATION_ERROR, Action, Verdict

log = logging.getLogger(__name__)

STAGE = "moderation_service"
#: omni-moderation's 13 categories (text-moderation answers a subset of them).
OPENAI_CATEGORIES = frozenset({
    "harassment", "harassment/threatening", "hate", "hate/threatening", "illicit", "illicit/violent",
    "self-harm", "self-harm/instructions", "self-harm/intent", "sexual", "sexual/minors", "violence",
    "violence/graphic",
})
#: The MLCommons hazard taxonomy as Llama Guard 3 and 4 answer it.
HAZARD_CODES = {
    "S1": "violent crimes", "S2": "non-violent crimes", "S3": "sex-related crimes",
    "S4": "child sexual exploitation", "S5": "defamation", "S6": "specialized advice", "S7": "privacy",
    "S8": "intellectual property", "S9": "indiscriminate weapons", "S10": "hate",
    "S11": "suicide & self-harm", "S12": "sexual content", "S13": "elections", "S14": "code interpreter abuse",
}
#: Statuses that mean "not now" (an outage): the job waits. Other 4xx are bad answers.
OUTAGE_STATUSES = frozenset({408, 425, 429})
#: Longest answer read; anything longer is a bad answer (a moderation answer is ~1 KB).
MAX_ANSWER_BYTES = 1 << 20
#: The service's host is resolved again (and checked again) this often.
RESOLVE_EVERY_S = 60.0
#: Output images are sent at most this size (longest side), as PNG.
IMAGE_MAX_SIDE = 512
_CODE = re.compile(r"^S[0-9]{1,2}$")


class _Outage(Exception):
    """The service did not answer (the job may wait)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _BadAnswer(Exception):
    """The service answered something this stage cannot trust (a verdict by the fail policy)."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind, self.detail = kind, detail


def cache_key(text: str) -> bytes:
    """The prompt as the cache sees it: normalised (case, lookalikes, separators, accents) with
    runs of whitespace collapsed, hashed. Two spellings the keyword rules read alike share an answer."""
    return hashlib.sha256(" ".join(clean(text).split()).encode("utf-8", "surrogatepass")).digest()


class CircuitBreaker:
    """Closed -> open after ``failures`` consecutive failures -> half-open (one probe) after
    ``cooldown_s`` -> closed on the probe's success, open again on its failure. Thread-safe."""

    def __init__(self, failures: int, cooldown_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold, self.cooldown_s, self.clock = failures, cooldown_s, clock
        self._lock = threading.Lock()
        self._failures = 0
        self._open_until: float | None = None
        self._probing = False
        #: When the current run of failures began (None while the service answers).
        self._down_since: float | None = None

    @property
    def state(self) -> str:
        with self._lock:
            if self._open_until is None:
                return "closed"
            return "half_open" if self.clock() >= self._open_until else "open"

    def before(self) -> None:
        """Ask to make a call; ``_Outage("circuit_open")`` while the circuit is open or a probe is out."""
        with self._lock:
            if self._open_until is None:
                return
            if self.clock() < self._open_until or self._probing:
                raise _Outage("circuit_open")
            self._probing = True  # half-open: this call is the probe

    def record(self, ok: bool) -> None:
        """The outcome of a call ``before`` allowed."""
        with self._lock:
            self._probing = False
            now = self.clock()
            if ok:
                self._failures, self._open_until, self._down_since = 0, None, None
                return
            self._failures += 1
            if self._down_since is None:
                self._down_since = now
            if self._open_until is not None or self._failures >= self.threshold:
                self._open_until = now + self.cooldown_s

    def down_for(self) -> float:
        """Seconds since the current run of failures began (0 when the service answers)."""
        with self._lock:
            return 0.0 if self._down_since is None else max(0.0, self.clock() - self._down_since)

    def retry_in(self) -> float:
        """Seconds until the circuit lets a probe through (0 when closed or half-open)."""
        with self._lock:
            return 0.0 if self._open_until is None else max(0.0, self._open_until - self.clock())


class AnswerCache:
    """Answers (validated scores) by cache key: least recently used out first, each for ``ttl_s``."""

    def __init__(self, size: int, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.size, self.ttl_s, self.clock = size, ttl_s, clock
        self._data: OrderedDict[bytes, tuple[float, dict[str, float]]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: bytes) -> dict[str, float] | None:
        with self._lock:
            item = self._data.get(key)
            if item is None or item[0] <= self.clock():
                if item is not None:
                    del self._data[key]
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return item[1]

    def put(self, key: bytes, scores: dict[str, float]) -> None:
        if self.size <= 0:
            return
        with self._lock:
            self._data[key] = (self.clock() + self.ttl_s, scores)
            self._data.move_to_end(key)
            while len(self._data) > self.size:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


class _PinnedPoolTransport(httpx.HTTPTransport):
    """Like ``webhooks.ssrf.PinnedTransport`` (connects to the checked addresses only, no proxies),
    with a keep-alive pool as large as the concurrency cap."""

    def __init__(self, target: Any, connections: int) -> None:
        from webhooks.ssrf import PinnedBackend

        super().__init__(trust_env=False)
        ssl_context = httpx.create_ssl_context(trust_env=False)
        self._pool = httpcore.ConnectionPool(ssl_context=ssl_context, max_connections=connections,
                                             max_keepalive_connections=connections,
                                             network_backend=PinnedBackend(target))


def _short(value: Any, limit: int = 160) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _score(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _BadAnswer("bad_score", f"{_short(name, 60)}={_short(value, 40)}")
    if not 0.0 <= value <= 1.0:
        raise _BadAnswer("score_out_of_range", f"{_short(name, 60)}={value}")
    return float(value)


def parse_openai(data: Any) -> dict[str, float]:
    """``category_scores`` of the one result of a ``/v1/moderations`` answer; ``_BadAnswer`` otherwise."""
    if not isinstance(data, dict):
        raise _BadAnswer("not_an_object", type(data).__name__)
    if data.get("error"):
        err = data["error"]
        raise _BadAnswer("error_body", _short(err.get("message") if isinstance(err, dict) else err))
    results = data.get("results")
    if not isinstance(results, list):
        raise _BadAnswer("no_results")
    if len(results) != 1:
        raise _BadAnswer("result_count", f"{len(results)} results for one input")
    result = results[0]
    if not isinstance(result, dict) or not isinstance(result.get("category_scores"), dict) \
            or not result["category_scores"]:
        raise _BadAnswer("no_category_scores")
    flags = result.get("categories")
    if flags is not None and (not isinstance(flags, dict) or not all(isinstance(v, bool) for v in flags.values())):
        raise _BadAnswer("bad_categories")
    return {str(k): _score(str(k), v) for k, v in result["category_scores"].items()}


def parse_llama_guard(data: Any) -> dict[str, float]:
    """Hazard codes (score 1.0 each) of a Llama-Guard chat completion (``{}`` for ``safe``)."""
    if not isinstance(data, dict):
        raise _BadAnswer("not_an_object", type(data).__name__)
    if data.get("error"):
        err = data["error"]
        raise _BadAnswer("error_body", _short(err.get("message") if isinstance(err, dict) else err))
    choices = data.get("choices")
    if not isinstance(choices, list):
        raise _BadAnswer("no_choices")
    if len(choices) != 1:
        raise _BadAnswer("result_count", f"{len(choices)} choices for one request")
    message = choices[0].get("message") if isinstance(choices[0], dict) else None
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, str):
        raise _BadAnswer("no_content")
    lines = [ln.strip() for ln in content.strip().splitlines() if ln.strip()]
    if not lines:
        raise _BadAnswer("empty_content")
    verdict = lines[0].lower()
    if verdict == "safe" and len(lines) == 1:
        return {}
    if verdict != "unsafe":
        raise _BadAnswer("not_a_verdict", _short(content, 60))
    codes = [c.upper() for c in re.split(r"[,\s]+", " ".join(lines[1:])) if c]
    if not codes:
        raise _BadAnswer("unsafe_without_codes")
    for c in codes:
        if not _CODE.match(c):
            raise _BadAnswer("not_a_code", _short(c, 40))
    return {c: 1.0 for c in codes}


class ModerationServiceStage:
    """Asks the policy's classifier service about prompts (and, if configured, output images).

    ``role``: ``api`` (the producer side: an outage raises ``ModerationUnavailable`` for a 503, or
    defers) or ``worker`` (an outage makes the job wait, then end). Both ``check(prompt, ...)``
    (a prompt stage) and ``check(image)`` (an output stage) work.
    """

    name = STAGE

    def __init__(self, config: ServiceConfig, policy: Policy, *, api_key: SecretStr | None = None,
                 allow_hosts: Iterable[str] = (), role: str = "worker", fail_open: bool = False,
                 clock: Callable[[], float] = time.monotonic,
                 resolver: Callable[[str, int], list[str]] | None = None) -> None:
        from webhooks.ssrf import check_url

        if role not in ("api", "worker"):
            raise ValueError(f"role must be 'api' or 'worker', got {role!r}")
        if api_key is not None and not re.fullmatch(r"[\x21-\x7e]+", api_key.get_secret_value()):
            # A header value: a space, a newline or a non-ASCII letter would break or split the
            # request. The message never quotes the key.
            raise ConfigurationError("BATCHRENDER_MODERATION_SERVICE_KEY must be printable ASCII without spaces "
                                     "or line breaks (as the service issued it)")
        self.config, self.policy, self.role = config, policy, role
        self.fail_open = fail_open or config.fail == "open"
        self._key = api_key
        self._allow = tuple(allow_hosts)
        self._resolver = resolver
        self._check_url = check_url
        self.clock = clock
        self.breaker = CircuitBreaker(config.breaker_failures, config.breaker_cooldown_s, clock)
        self.cache = AnswerCache(config.cache_size, config.cache_ttl_s, clock)
        self._slots = threading.BoundedSemaphore(config.max_concurrency)
        self._client_lock = threading.Lock()
        self._client: httpx.Client | None = None
        self._target: Any = None
        self._resolved_at = -math.inf
        self._known = (OPENAI_CATEGORIES if config.format == "openai" else frozenset(HAZARD_CODES)) \
            | {c.name for c in config.categories} | frozenset(config.ignore)
        self._mapped = [(c, policy.category(c.category)) for c in config.categories]
        # The URL and, when the host is an address or resolves now, its addresses: a refused
        # target is a start-up error. DNS being down at start-up is not: it is checked per call.
        try:
            check_url(config.url, self._allow, resolver, resolve=False)
            self._resolve()
        except WebhookTargetRefused as e:
            raise ConfigurationError(self._refused(e)) from None
        except _Outage as e:
            log.warning("moderation service %s: not resolvable at start-up (%s); checked again per call",
                        config.url, e.reason)

    @classmethod
    def from_settings(cls, policy: Policy, settings: Any, *, role: str) -> "ModerationServiceStage":
        assert policy.moderation_service is not None
        return cls(policy.moderation_service, policy, api_key=settings.moderation_service_key,
                   allow_hosts=settings.moderation_service_allow_hosts, role=role,
                   fail_open=STAGE in settings.moderation_fail_open)

    def __repr__(self) -> str:  # the key is never part of it
        return f"ModerationServiceStage({self.config.format}, {self.config.url!r}, role={self.role})"

    # -- the stage -----------------------------------------------------------------------------------
    def check(self, subject: Any, negative_prompt: str | None = None, *,
              real_person_context: bool = False) -> list[Verdict]:
        """Verdicts for a prompt (``str``; the negative prompt is not sent: it cannot request
        content) or an output image (a PIL image)."""
        key = None
        if isinstance(subject, str):
            key = cache_key(subject)
            cached = self.cache.get(key)
            if cached is not None:
                return self._verdicts(cached, "cache")
            payload = self._payload([{"type": "text", "text": subject}], subject)
        else:
            payload = self._payload([{"type": "image_url", "image_url": {"url": _data_url(subject)}}], None)
        try:
            scores = self._parse(self._ask(payload))
        except _BadAnswer as e:
            log.warning("moderation service %s: bad answer (%s)%s; %s", self.config.url, e.kind,
                        f": {self._redact(e.detail)}" if e.detail else "",
                        "flagged (fail open)" if self.fail_open else "refused (fail closed)")
            return [self._failed(f"bad_answer:{e.kind}")]
        except _Outage as e:
            return self._outage(e.reason)
        if key is not None:
            self.cache.put(key, scores)
        return self._verdicts(scores, "")

    def close(self) -> None:
        with self._client_lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    # -- one call ------------------------------------------------------------------------------------
    def _payload(self, parts: list[dict[str, Any]], text: str | None) -> dict[str, Any]:
        if self.config.format == "openai":
            return {"model": self.config.model, "input": parts}
        # Llama Guard reads the conversation: the prompt is what a user asks for. Text as a plain
        # string (every chat template takes it); images as content parts (Llama Guard 4).
        content: Any = text if text is not None else parts
        return {"model": self.config.model, "messages": [{"role": "user", "content": content}],
                "temperature": 0, "max_tokens": 20}

    def _ask(self, payload: dict[str, Any]) -> Any:
        """POST ``payload``; the decoded JSON answer. ``_Outage`` / ``_BadAnswer`` otherwise."""
        if not self._slots.acquire(timeout=self.config.timeout_s):
            raise _Outage("busy")  # every slot held for a whole timeout: as good as down
        try:
            self.breaker.before()
            answered = False
            try:
                client = self._connected()
                headers = {"Accept": "application/json"}
                if self._key is not None:
                    headers["Authorization"] = f"Bearer {self._key.get_secret_value()}"
                try:
                    with client.stream("POST", self.config.url, json=payload, headers=headers) as resp:
                        status = resp.status_code
                        if status in OUTAGE_STATUSES or status >= 500:
                            raise _Outage(f"http_{status}")
                        answered = True
                        body = bytearray()
                        for chunk in resp.iter_bytes():
                            body += chunk
                            if len(body) > MAX_ANSWER_BYTES:
                                raise _BadAnswer("too_large", f"over {MAX_ANSWER_BYTES} bytes")
                except httpx.TransportError as e:
                    raise _Outage(type(e).__name__) from None
                except httpx.HTTPError as e:  # a body that cannot be decoded (bad gzip...)
                    raise _BadAnswer("undecodable", type(e).__name__) from None
            finally:
                self.breaker.record(answered)
        finally:
            self._slots.release()
        if status in (401, 403):
            log.error("moderation service %s refused the key (HTTP %d): check BATCHRENDER_MODERATION_SERVICE_KEY",
                      self.config.url, status)
        if status != 200:
            raise _BadAnswer(f"http_{status}", self._error_text(bytes(body)))
        try:
            return json.loads(bytes(body))
        except ValueError:
            raise _BadAnswer("not_json", f"{len(body)} bytes") from None

    def _connected(self) -> httpx.Client:
        with self._client_lock:
            if self._client is None or self.clock() - self._resolved_at >= RESOLVE_EVERY_S:
                try:
                    self._resolve()
                except WebhookTargetRefused as e:
                    log.error("%s", self._refused(e))
                    raise _BadAnswer("refused_target") from None
            assert self._client is not None
            return self._client

    def _resolve(self) -> None:
        """Check (and resolve) the URL now; keep the client while its addresses do not change."""
        try:
            target = self._check_url(self.config.url, self._allow, self._resolver)
        except DeliveryFailed as e:  # DNS: transient
            raise _Outage("dns") from e
        self._resolved_at = self.clock()
        if self._client is not None and self._target is not None and target.addresses == self._target.addresses:
            return
        old, self._target = self._client, target
        self._client = httpx.Client(transport=_PinnedPoolTransport(target, self.config.max_concurrency),
                                    timeout=self.config.timeout_s, follow_redirects=False, trust_env=False)
        if old is not None:
            old.close()

    # -- answers -------------------------------------------------------------------------------------
    def _parse(self, data: Any) -> dict[str, float]:
        scores = parse_openai(data) if self.config.format == "openai" else parse_llama_guard(data)
        unknown = sorted(set(scores) - self._known)
        if unknown:
            raise _BadAnswer("unknown_category", f"{_short(unknown[0], 60)}; map it under moderation_service."
                                                 "categories or list it under moderation_service.ignore")
        if self.config.format == "openai":
            missing = [c.name for c, _ in self._mapped if c.name not in scores]
            if missing:
                raise _BadAnswer("missing_category", _short(missing[0], 60))
        return scores

    def _verdicts(self, scores: Mapping[str, float], rule: str) -> list[Verdict]:
        best: dict[str, Verdict] = {}
        for sc, cat in self._mapped:
            score = scores.get(sc.name, 0.0)
            if score > 0.0 and score >= sc.threshold and (cat.id not in best or score > best[cat.id].score):
                best[cat.id] = Verdict(STAGE, cat.id, score, cat.action, self.policy.version, cat.severity,
                                       f"{sc.name}>={sc.threshold:g}" + (f" ({rule})" if rule else ""))
        if best:
            return list(best.values())
        top = max((scores.get(sc.name, 0.0) for sc, _ in self._mapped), default=0.0)
        return [Verdict(STAGE, "none", top, Action.ALLOW, self.policy.version, 0, rule)]

    def _failed(self, rule: str) -> Verdict:
        action = Action.FLAG if self.fail_open else Action.BLOCK
        return Verdict(STAGE, MODERATION_ERROR, 1.0, action, self.policy.version, 0, rule)

    def _outage(self, reason: str) -> list[Verdict]:
        cfg = self.config
        retry_after = max(1, math.ceil(self.breaker.retry_in()))
        if self.fail_open:
            log.warning("moderation service %s unavailable (%s): flagged (fail open)", cfg.url, reason)
            return [self._failed(f"unavailable:{reason}")]
        if self.role == "api":
            if cfg.outage_api == "defer":
                log.warning("moderation service %s unavailable (%s): accepted, the worker checks it", cfg.url, reason)
                return [Verdict(STAGE, "none", 0.0, Action.ALLOW, self.policy.version, 0, f"deferred:{reason}")]
            log.warning("moderation service %s unavailable (%s): refused with 503", cfg.url, reason)
            raise ModerationUnavailable(f"the moderation service is unavailable ({reason}); retry in {retry_after} s",
                                        retry_after_s=retry_after)
        down = self.breaker.down_for()
        if down >= cfg.outage_max_wait_s:
            log.error("moderation service %s unavailable for %.0f s (%s), over outage.max_wait_s=%g: the job ends",
                      cfg.url, down, reason, cfg.outage_max_wait_s)
            raise ModerationOutageTooLong(
                f"the moderation service has been unavailable for {down:.0f} s ({reason}); the policy's "
                f"moderation_service.outage.max_wait_s is {cfg.outage_max_wait_s:g} s, so the job was not rendered. "
                "Submit it again when the service is back.")
        log.warning("moderation service %s unavailable (%s) for %.0f s: the job waits (back on the queue)",
                    cfg.url, reason, down)
        raise ModerationUnavailable(f"waiting for the moderation service ({reason}; unavailable for {down:.0f} s, "
                                    f"at most {cfg.outage_max_wait_s:g} s)", retry_after_s=retry_after)

    # -- secrets -------------------------------------------------------------------------------------
    def _redact(self, text: str) -> str:
        if self._key is not None:
            secret = self._key.get_secret_value()
            if secret:
                text = text.replace(secret, "***")
        return text

    def _error_text(self, body: bytes) -> str:
        try:
            err = json.loads(body).get("error")
            text = err.get("message") if isinstance(err, dict) else err
        except (ValueError, AttributeError):
            text = None
        return self._redact(_short(text if isinstance(text, str) else f"{len(body)} bytes"))

    def _refused(self, e: WebhookTargetRefused) -> str:
        reason = e.message.replace("webhook URL", "URL").replace("webhook host", "host").replace(
            "BATCHRENDER_WEBHOOK_ALLOW_HOSTS", "BATCHRENDER_MODERATION_SERVICE_ALLOW_HOSTS")
        return f"{self.policy.source}: moderation_service.url {self.config.url}: {reason}"


def _data_url(image: Any) -> str:
    """A PNG data URL of ``image`` (RGB, at most ``IMAGE_MAX_SIDE`` on its longest side)."""
    img = image.convert("RGB")
    if max(img.size) > IMAGE_MAX_SIDE:
        img = img.copy()
        img.thumbnail((IMAGE_MAX_SIDE, IMAGE_MAX_SIDE))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
