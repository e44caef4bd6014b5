"""Every Redis client of batchrender is built here, from the one configured URL.

Three kinds of URL, for every client (job store, broker, result backend, provenance index,
webhooks, CLI):

* ``redis://[:password@]host:6379/0`` and ``rediss://`` (TLS): one server.
* ``sentinel://[:password@]host:26379;sentinel://host2:26379/0`` plus
  ``BATCHRENDER_REDIS_MASTER_NAME``: Redis Sentinel. Clients ask the sentinels which server is
  the master and follow it through a failover. The password in the URL is the data nodes'
  (``requirepass``/``masterauth``), as kombu reads it; the sentinels' own password, if they
  have one, is ``BATCHRENDER_REDIS_SENTINEL_PASSWORD``.

Why one place: a failover is only survivable if every client follows the master. A client left
on a fixed address keeps writing to a server that became a replica (``READONLY``), or to an old
primary that comes back as a master for a few seconds and is then resynced away with whatever it
accepted. Here a server that answers "not the master" (``READONLY``, ``MASTERDOWN``) is treated
like a dropped connection: the connection is closed, the command retried on a fresh one (which,
under Sentinel, asks the sentinels for the current master), and after ~2 s it is "Redis is away"
(``BrokerUnavailable``, a transient error) like a server that is down.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, urlsplit

import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MasterDownError, ReadOnlyError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from jobs.errors import BrokerUnavailable, ConfigurationError

if TYPE_CHECKING:
    from jobs.settings import Settings

SCHEMES = ("redis", "rediss", "sentinel")
DEFAULT_PORTS = {"redis": 6379, "rediss": 6379, "sentinel": 26379}
#: What a URL should look like, for error messages.
EXAMPLES = ("redis://host:6379/0, rediss://host:6380/0 (TLS), or "
            "sentinel://host1:26379;sentinel://host2:26379;sentinel://host3:26379/0 with BATCHRENDER_REDIS_MASTER_NAME")
#: Errors that mean "there is no master to talk to right now": the server is down, restarting or
#: loading its data (ConnectionError and its BusyLoadingError), a Sentinel failover is under way
#: (MasterNotFoundError, a ConnectionError), or the server reached is not the master (any more):
#: READONLY from a replica, MASTERDOWN from a replica that lost its master. Retrying later, on a
#: fresh connection to whatever is master then, can succeed: these are transient everywhere.
REDIS_AWAY: tuple[type[BaseException], ...] = (RedisConnectionError, RedisTimeoutError, ReadOnlyError,
                                               MasterDownError)
#: Seconds a sentinel (or a server) has to accept a connection and to answer.
CONNECT_TIMEOUT_S = 2.0
SENTINEL_TIMEOUT_S = 2.0


class NotMaster(BrokerUnavailable):
    """The configured Redis answers, but it is a replica: writes would fail (or, on an old primary
    that comes back, be thrown away when it resyncs)."""

    code = "redis_not_master"


class NotMasterError(RedisConnectionError):
    """A server said it is not the master (``READONLY``/``MASTERDOWN``). A ConnectionError, so that
    every layer (redis-py's retry, kombu, Celery, ``BrokerUnavailable``) reconnects and retries."""


class RedisURL(str):
    """The configured Redis URL (a ``str``, so it goes wherever URLs went), carrying what a URL
    cannot say: the Sentinel master name and the sentinels' password. ``Settings.redis_url`` is
    one, so a client built from it anywhere follows the same master. The password never shows in
    ``repr`` (a ``str``'s repr is its text)."""

    master_name: str | None
    _sentinel_password: str | None

    def __new__(cls, url: str, *, master_name: str | None = None,
                sentinel_password: str | None = None) -> "RedisURL":
        self = super().__new__(cls, url)
        self.master_name = master_name
        self._sentinel_password = sentinel_password
        return self

    @property
    def sentinel_password(self) -> str | None:
        return self._sentinel_password

    def __reduce__(self):
        return (_rebuild_url, (str(self), self.master_name, self._sentinel_password))


def _rebuild_url(url: str, master_name: str | None, sentinel_password: str | None) -> RedisURL:
    return RedisURL(url, master_name=master_name, sentinel_password=sentinel_password)


@dataclass(frozen=True)
class Target:
    """A parsed Redis URL: one server, or a Sentinel-monitored master."""

    scheme: str
    #: The server (redis/rediss), or the sentinels.
    hosts: tuple[tuple[str, int], ...]
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    master_name: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)
    url: str = field(default="", repr=False)

    @property
    def sentinel(self) -> bool:
        return self.scheme == "sentinel"

    @property
    def where(self) -> str:
        """For messages: ``host:port`` or ``master 'name' via sentinels h1:p1, h2:p2``."""
        hosts = ", ".join(f"{h}:{p}" for h, p in self.hosts)
        return f"master {self.master_name!r} via sentinels {hosts}" if self.sentinel else hosts

    def kombu_url(self) -> str:
        """The URL kombu (broker) and Celery (result backend) are given. For Sentinel: every
        sentinel with the database and password on it, since kombu reads them from the first
        part and Celery's backend from its first host."""
        if not self.sentinel:
            return self.url
        auth = ""
        if self.password is not None or self.username:
            auth = f"{quote(self.username or '', safe='')}:{quote(self.password or '', safe='')}@"
        return ";".join(f"sentinel://{auth}{_host(h)}:{p}/{self.db}" for h, p in self.hosts)

    def transport_options(self) -> dict[str, Any]:
        """kombu / Celery result-backend transport options this target needs (Sentinel only)."""
        if not self.sentinel:
            return {}
        return {"master_name": self.master_name, "sentinel_kwargs": self.sentinel_kwargs()}

    def sentinel_kwargs(self) -> dict[str, Any]:
        """How to talk to the sentinels themselves: short timeouts (a dead sentinel must not hold a
        discovery up), their own password if they have one."""
        kw: dict[str, Any] = {"socket_connect_timeout": CONNECT_TIMEOUT_S, "socket_timeout": SENTINEL_TIMEOUT_S}
        if self.sentinel_password:
            kw["password"] = self.sentinel_password
        return kw


def _host(h: str) -> str:
    return f"[{h}]" if ":" in h else h


def _redacted(url: str) -> str:
    from jobs.settings import redact_url

    return redact_url(url)


def _bad(url: str, problem: str) -> ConfigurationError:
    return ConfigurationError(f"BATCHRENDER_REDIS_URL={_redacted(url)!s}: {problem}")


def parse(url: str, *, master_name: str | None = None, sentinel_password: str | None = None) -> Target:
    """Check ``url`` and take it apart; a ConfigurationError naming the fix when it is wrong.

    ``master_name``/``sentinel_password`` default to what a ``RedisURL`` carries."""
    if master_name is None:
        master_name = getattr(url, "master_name", None)
    if sentinel_password is None:
        sentinel_password = getattr(url, "sentinel_password", None)
    url = str(url).strip()
    if "://" not in url:
        raise _bad(url, f"not a URL; use {EXAMPLES}")
    scheme = url.split("://", 1)[0].lower()
    if scheme not in SCHEMES:
        hint = " (Redis Cluster is not supported: kombu has no Cluster transport)" if "cluster" in scheme else ""
        raise _bad(url, f"unknown scheme {scheme + '://'!r}{hint}; use {EXAMPLES}")
    parts = [p.strip() for p in url.split(";") if p.strip()]
    if scheme != "sentinel":
        if len(parts) > 1:
            raise _bad(url, "several addresses are only possible with sentinel:// (one per sentinel)")
        host, port, db, user, password = _split(url, parts[0], scheme)
        if master_name:
            raise ConfigurationError(
                "BATCHRENDER_REDIS_MASTER_NAME is set but BATCHRENDER_REDIS_URL is not a sentinel:// URL: "
                "list the sentinels (sentinel://host1:26379;sentinel://host2:26379/0) or unset the master name")
        if sentinel_password:
            raise ConfigurationError("BATCHRENDER_REDIS_SENTINEL_PASSWORD is set but BATCHRENDER_REDIS_URL is not a "
                                     "sentinel:// URL: unset it, or list the sentinels")
        return Target(scheme, ((host, port),), db, user, password, url=url)
    hosts: list[tuple[str, int]] = []
    dbs: set[int] = set()
    users: set[str] = set()
    passwords: set[str] = set()
    for part in parts:
        if not part.lower().startswith("sentinel://"):
            raise _bad(url, f"every part of a Sentinel URL is sentinel://host:port, separated by ';' (got {_redacted(part)!r})")
        host, port, db, user, password = _split(url, part, "sentinel", db_optional=True)
        hosts.append((host, port))
        if db is not None:
            dbs.add(db)
        if user:
            users.add(user)
        if password is not None:
            passwords.add(password)
    if len(dbs) > 1:
        raise _bad(url, f"the sentinels name different databases ({sorted(dbs)}); give one, e.g. at the end: .../0")
    if len(passwords) > 1 or len(users) > 1:
        raise _bad(url, "the sentinels carry different passwords; the password in the URL is the Redis servers' "
                        "(requirepass), one for all")
    if len(set(hosts)) != len(hosts):
        raise _bad(url, "a sentinel is listed twice")
    if not master_name:
        raise _bad(url, "a Sentinel URL needs the name of the master the sentinels monitor: set "
                        "BATCHRENDER_REDIS_MASTER_NAME (the <name> of their `sentinel monitor <name> host port quorum`)")
    return Target("sentinel", tuple(hosts), next(iter(dbs), 0), next(iter(users), None), next(iter(passwords), None),
                  master_name=master_name, sentinel_password=sentinel_password, url=url)


def _split(url: str, part: str, scheme: str, db_optional: bool = False):
    try:
        s = urlsplit(part)
        host, port = s.hostname, s.port
    except ValueError as e:  # a port that is not a number, or out of range
        raise _bad(url, f"bad address in {_redacted(part)!r} ({e})") from None
    if not host:
        raise _bad(url, f"no host in {_redacted(part)!r}; use {EXAMPLES}")
    path = s.path.strip("/")
    db: int | None = None
    if path:
        if not path.isdigit():
            raise _bad(url, f"the database must be a number (…/0), got {path!r}")
        db = int(path)
    elif not db_optional:
        db = 0
    user = unquote(s.username) if s.username else None
    password = unquote(s.password) if s.password is not None else None
    return host, port or DEFAULT_PORTS[scheme], db, user, password


def settings_url(settings: "Settings") -> RedisURL | None:
    """``settings.redis_url`` checked, as a ``RedisURL`` carrying the master name and the sentinels'
    password (None: the embedded broker). Used by ``Settings`` itself, so a bad URL or a Sentinel
    URL without a master name stops every process at start with the fix."""
    name = settings.redis_master_name or None
    pw = settings.redis_sentinel_password.get_secret_value() if settings.redis_sentinel_password else None
    if settings.redis_url is None:
        if name or pw:
            raise ConfigurationError("BATCHRENDER_REDIS_MASTER_NAME / _REDIS_SENTINEL_PASSWORD are set but "
                                     "BATCHRENDER_REDIS_URL is not: set it to the sentinels (sentinel://host1:26379;"
                                     "sentinel://host2:26379/0)")
        return None
    url = RedisURL(str(settings.redis_url), master_name=name, sentinel_password=pw)
    parse(url)
    return url


def target_for(url: str, settings: "Settings | None" = None) -> Target:
    """``parse(url)``, taking the master name and sentinel password from ``settings`` when the
    URL does not carry them (a plain ``str``)."""
    name = getattr(url, "master_name", None)
    pw = getattr(url, "sentinel_password", None)
    if settings is not None:
        name = name or settings.redis_master_name
        if pw is None and settings.redis_sentinel_password is not None:
            pw = settings.redis_sentinel_password.get_secret_value()
    return parse(url, master_name=name, sentinel_password=pw)


# -- clients -----------------------------------------------------------------------------------------
class _FollowsMaster:
    """A connection that treats "I am not the master" as a dropped connection: disconnect and
    raise ``NotMasterError``, so the command is retried on a fresh connection, to the current
    master under Sentinel (redis-py's own Sentinel connection does this for READONLY only)."""

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().read_response(*args, **kwargs)  # type: ignore[misc]
        except (ReadOnlyError, MasterDownError) as e:
            self.disconnect()  # type: ignore[attr-defined]
            raise NotMasterError(f"{getattr(self, 'host', '?')}:{getattr(self, 'port', '?')} is not the master "
                                 f"({type(e).__name__}: {e})") from e


class MasterConnection(_FollowsMaster, redis.connection.Connection):
    pass


class MasterSSLConnection(_FollowsMaster, redis.connection.SSLConnection):
    pass


def _sentinel_classes():
    from redis.sentinel import SentinelManagedConnection, SentinelManagedSSLConnection

    class SentinelMasterConnection(_FollowsMaster, SentinelManagedConnection):
        pass

    class SentinelMasterSSLConnection(_FollowsMaster, SentinelManagedSSLConnection):
        pass

    return SentinelMasterConnection, SentinelMasterSSLConnection


_SENTINEL_CLASSES = _sentinel_classes()
#: How long a command keeps retrying by default (the API answers 503 soon after, a worker retries
#: the job): ~2 s, as the job store always did.
DEFAULT_PATIENCE_S = 2.0


def _retry(patience_s: float):
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    if patience_s <= DEFAULT_PATIENCE_S:
        return Retry(ExponentialBackoff(cap=0.5, base=0.05), 6)
    # 0.1 + 0.2 + 0.4 + 0.8 + 1.6 ≈ 3 s, then one try every 2 s.
    return Retry(ExponentialBackoff(cap=2.0, base=0.1), 5 + math.ceil((patience_s - 3.0) / 2.0))


def client(url: str, settings: "Settings | None" = None, *, decode_responses: bool = True,
           patience_s: float = DEFAULT_PATIENCE_S) -> redis.Redis:
    """The one way a Redis client is made: for ``url`` (``redis://``, ``rediss://`` or
    ``sentinel://``; master name and sentinel password from the ``RedisURL`` or ``settings``).

    Each command rides out connection blips, restarts and failovers for about ``patience_s``: it
    is retried on a fresh connection (to the current master) with backoff; "not the master"
    counts as a dropped connection. After that a redis-py ``ConnectionError`` reaches the caller,
    which ``jobs.store`` turns into ``BrokerUnavailable``. Commands that are not idempotent are
    safe to retry here: the job store's transition script refuses a second application."""
    t = target_for(url, settings)
    common: dict[str, Any] = dict(
        decode_responses=decode_responses, socket_connect_timeout=CONNECT_TIMEOUT_S, health_check_interval=30,
        retry=_retry(patience_s), retry_on_error=[RedisConnectionError, RedisTimeoutError])
    if not t.sentinel:
        cls = MasterSSLConnection if t.scheme == "rediss" else MasterConnection
        return redis.Redis.from_url(t.url, connection_class=cls, **common)
    from redis.backoff import NoBackoff
    from redis.retry import Retry
    from redis.sentinel import Sentinel

    # Each discovery asks every sentinel once (a dead one must not hold it up); the command's own
    # retry above repeats the discovery while a failover is under way.
    sentinel_kw = {**t.sentinel_kwargs(), "retry": Retry(NoBackoff(), 0)}
    manager = Sentinel(list(t.hosts), sentinel_kwargs=sentinel_kw, db=t.db, username=t.username,
                       password=t.password)
    sentinel_cls, sentinel_ssl_cls = _SENTINEL_CLASSES
    return manager.master_for(t.master_name, redis_class=redis.Redis, connection_class=sentinel_cls, **common)


def for_settings(settings: "Settings", *, decode_responses: bool = True,
                 patience_s: float = DEFAULT_PATIENCE_S) -> redis.Redis:
    """A client for the configured Redis (or the embedded one, started when needed)."""
    from jobs.embedded import redis_url_for

    return client(redis_url_for(settings), settings, decode_responses=decode_responses, patience_s=patience_s)


# -- what went wrong, said plainly -------------------------------------------------------------------
def is_away(exc: BaseException) -> bool:
    """Whether ``exc`` means Redis (a master) is not reachable right now: retry later."""
    return isinstance(exc, REDIS_AWAY)


def away_message(exc: BaseException, r: Any = None) -> str:
    """"Redis is unavailable (...)" with what the error means and what to check."""
    from redis.exceptions import AuthenticationError
    from redis.sentinel import MasterNotFoundError

    what = f"{type(exc).__name__}: {_clean(str(exc))}"
    hint = "retry when it is back"
    t = _target_of(r)
    if isinstance(exc, MasterNotFoundError):
        if t is not None:
            where = t.where
        else:  # redis-py's text: "No master found for 'name' : <each sentinel> - <its error>, ..."
            hosts = ", ".join(f"{h}:{p}" for h, p in re.findall(r"host=([^,>]+),port=(\d+)", str(exc))) or "?"
            name = re.search(r"No master found for ('[^']*')", str(exc))
            where = f"master {name.group(1) if name else '?'} via sentinels {hosts}"
        hint = (f"no sentinel reports a master ({where}): a failover may be under way (retry), or the sentinels "
                "are unreachable, or BATCHRENDER_REDIS_MASTER_NAME is not the name they monitor")
        what = type(exc).__name__
    elif isinstance(exc, AuthenticationError):
        hint = "check the password in BATCHRENDER_REDIS_URL (redis://:password@host:6379/0)"
    elif isinstance(exc, (NotMasterError, ReadOnlyError, MasterDownError)):
        hint = ("the server is a replica now; retry, and if it lasts point BATCHRENDER_REDIS_URL at the master "
                "or use Sentinel (sentinel://...; BATCHRENDER_REDIS_MASTER_NAME) so clients follow failovers")
    return f"Redis is unavailable ({what}); {hint}"


def _clean(text: str) -> str:
    # redis-py puts client reprs in some messages; they carry no password, but are long.
    return text if len(text) <= 300 else text[:297] + "..."


def client_of(*candidates: Any) -> Any:
    """The redis-py client among ``candidates`` (a client, a bound method of one, or an object
    holding one as ``.r``/``.redis``), for messages; None if there is none."""
    for c in candidates:
        for x in (c, getattr(c, "__self__", None), getattr(c, "r", None), getattr(c, "redis", None)):
            if isinstance(x, redis.Redis):
                return x
    return None


def _target_of(r: Any) -> Target | None:
    pool = getattr(r, "connection_pool", None)
    name = getattr(pool, "service_name", None)
    manager = getattr(pool, "sentinel_manager", None)
    if name and manager is not None:
        hosts = []
        for s in getattr(manager, "sentinels", []):
            kw = s.connection_pool.connection_kwargs
            hosts.append((kw.get("host", "?"), kw.get("port", 0)))
        return Target("sentinel", tuple(hosts), master_name=name)
    return None


def master_role(r: Any) -> str:
    """Confirm that ``r`` talks to a master: its detail (``master at host:port, N replica(s)``),
    or ``NotMaster`` naming the fix. Asks ``ROLE``, or ``INFO replication`` where ROLE is not
    allowed (some managed Redis ACLs). Redis away is ``BrokerUnavailable`` saying what to check."""
    try:
        try:
            reply = r.execute_command("ROLE")
            role = _text(reply[0])
            replicas = len(reply[2]) if role == "master" and len(reply) > 2 else 0
            master = f"{_text(reply[1])}:{reply[2]}" if role in ("slave", "replica") and len(reply) > 2 else "?"
        except ResponseError as e:
            if isinstance(e, REDIS_AWAY):
                raise
            info = r.info("replication")
            role = _text(info.get("role", "?"))
            replicas = int(info.get("connected_slaves", 0) or 0)
            master = f"{info.get('master_host', '?')}:{info.get('master_port', '?')}"
    except REDIS_AWAY as e:
        raise BrokerUnavailable(away_message(e, r)) from e
    where = _address(r)
    if role == "master":
        return f"master at {where}, {replicas} replica(s) connected"
    t = _target_of(r)
    if t is not None:
        raise NotMaster(f"the sentinels ({t.where}) point at {where}, which is a {role}: a failover is under way, "
                        "retry; if it lasts check the sentinels' view (SENTINEL MASTERS)")
    raise NotMaster(f"Redis at {where} is a {'replica' if role in ('slave', 'replica') else role} (of {master}), "
                    "not the master: writes fail there. Point BATCHRENDER_REDIS_URL at the master, or use Sentinel "
                    "(BATCHRENDER_REDIS_URL=sentinel://host1:26379;sentinel://host2:26379/0 and "
                    "BATCHRENDER_REDIS_MASTER_NAME) so every process follows a failover")


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _address(r: Any) -> str:
    pool = getattr(r, "connection_pool", None)
    if pool is None:
        return "?"
    addr = getattr(pool, "master_address", None)  # Sentinel: the one discovered last
    if addr:
        return f"{addr[0]}:{addr[1]}"
    kw = getattr(pool, "connection_kwargs", {})
    return f"{kw.get('host', '?')}:{kw.get('port', '?')}"
