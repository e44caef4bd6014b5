"""SSRF guard: which webhook URLs may be called, and an HTTP client pinned to checked addresses.

Policy: http/https only, no credentials in the URL, no ambiguous numeric hosts (``2130706433``,
``0x7f.1``); the host is resolved ONCE and every address must be public unicast, unless the
operator's ``webhook_allow_hosts`` lists the host name, the address or a CIDR holding it.
Loopback, private, link-local, CGNAT, multicast, reserved, unspecified and cloud-metadata
addresses are refused; IPv4 embedded in IPv6 (mapped, 6to4, Teredo, NAT64) is checked as IPv4.

The client then connects to the validated address itself (``PinnedBackend``), never resolving
again, so DNS rebinding between check and connect cannot redirect it. The URL, ``Host`` header
and TLS SNI/certificate hostname stay the original name, so https verification is unchanged.
"""
from __future__ import annotations

import heapq
import ipaddress
import itertools
import logging
import re
import socket
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence
from urllib.parse import urlsplit

import httpcore
import httpx

from jobs.errors import DeliveryFailed, WebhookTargetRefused

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
#: ``resolver(host, port) -> addresses``; injectable so tests can simulate DNS rebinding.
Resolver = Callable[[str, int], Sequence[str]]

#: Metadata services answer on these names; refused even if they resolve publicly.
METADATA_HOSTS = frozenset({
    "metadata.google.internal", "metadata.goog", "metadata", "instance-data",
    "instance-data.ec2.internal", "metadata.azure.internal", "kubernetes.default.svc",
})
METADATA_IPS = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200", "192.0.0.192",
    # Azure's platform endpoint (WireServer): a public address only Azure VMs reach.
    "168.63.129.16",
))
#: The IANA IPv4 and IPv6 Special-Purpose Address Registries, every entry, including those marked
#: "globally reachable" (anycast relays, AS112, AMT): none is a webhook receiver or an image host.
SPECIAL_PURPOSE = tuple(ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.0.2.0/24", "192.31.196.0/24", "192.52.193.0/24", "192.88.99.0/24",
    "192.168.0.0/16", "192.175.48.0/24", "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24",
    "240.0.0.0/4", "255.255.255.255/32",
    "::/128", "::1/128", "::ffff:0:0/96", "64:ff9b::/96", "64:ff9b:1::/48", "100::/64", "100:0:0:1::/64",
    "2001::/23", "2001:db8::/32", "2002::/16", "2620:4f:8000::/48", "3fff::/20", "5f00::/16", "fc00::/7",
    "fe80::/10", "fec0::/10", "ff00::/8",
))
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# Any all-numeric/hex label set that is not a canonical dotted quad: inet_aton would accept it.
_NUMERIC_HOST = re.compile(r"^(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]+))*\.?$", re.I)


def system_resolver(host: str, port: int) -> list[str]:
    """All addresses ``getaddrinfo`` returns for ``host``; a failure is transient (DNS blips)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise DeliveryFailed(f"could not resolve webhook host {host!r}: {e.strerror}") from e
    except (UnicodeError, ValueError) as e:
        raise WebhookTargetRefused(f"webhook host {host!r} is not a valid host name: {e}") from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


@dataclass(frozen=True)
class Target:
    """A checked URL: the host as written, and the addresses the client may connect to."""

    url: str
    scheme: str
    host: str
    port: int
    addresses: tuple[str, ...]


def _embedded_v4(addr: IPAddress) -> ipaddress.IPv4Address | None:
    if isinstance(addr, ipaddress.IPv4Address):
        return None
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    if addr.sixtofour is not None:
        return addr.sixtofour
    if addr.teredo is not None:
        return addr.teredo[1]
    if addr in _NAT64:
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    return None


def refusal_reason(addr: IPAddress) -> str | None:
    """Why an address is not a public unicast one, or None when it is."""
    inner = _embedded_v4(addr)
    if inner is not None:
        reason = refusal_reason(inner)
        return f"{reason} (IPv4 {inner} embedded in IPv6)" if reason else None
    if addr in METADATA_IPS:
        return "a cloud metadata address"
    for attr, name in (("is_unspecified", "unspecified"), ("is_loopback", "loopback"),
                       ("is_link_local", "link-local"), ("is_multicast", "multicast"),
                       ("is_reserved", "reserved"), ("is_private", "private")):
        if getattr(addr, attr):
            return f"a {name} address"
    for net in SPECIAL_PURPOSE:
        if addr.version == net.version and addr in net:
            return f"a special-purpose address ({net}, IANA registry)"
    if not addr.is_global:
        return "not a globally routable address"
    return None


class AllowList:
    """The operator's exceptions: host names (exact, case-insensitive), IPs and CIDRs."""

    def __init__(self, entries: Iterable[str] = ()) -> None:
        self.names: set[str] = set()
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for raw in entries:
            entry = raw.strip().lower().strip("[]")
            if not entry:
                continue
            try:
                self.networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                self.names.add(entry.rstrip("."))

    def allows_name(self, host: str) -> bool:
        return host.lower().rstrip(".") in self.names

    def allows_address(self, addr: IPAddress) -> bool:
        return any(addr.version == n.version and addr in n for n in self.networks)


def parse_url(url: str) -> tuple[str, str, int]:
    """Scheme, host and port of a webhook URL after the syntax checks; no DNS."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise WebhookTargetRefused(f"webhook URL is malformed: {e}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise WebhookTargetRefused(f"webhook URL scheme must be http or https, not {scheme or 'missing'!r}")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise WebhookTargetRefused("webhook URL must not contain credentials (user:password@); "
                                   "authenticate receivers with the webhook signature instead")
    host = (parts.hostname or "").lower()
    if not host:
        raise WebhookTargetRefused("webhook URL has no host")
    if _NUMERIC_HOST.match(host):
        try:
            canonical = isinstance(ipaddress.ip_address(host), ipaddress.IPv4Address)
        except ValueError:
            canonical = False
        if not canonical:
            raise WebhookTargetRefused(f"webhook URL host {host!r} is an ambiguous numeric address; "
                                       "write an IPv4 address as four decimal octets")
    return scheme, host, port or (443 if scheme == "https" else 80)


def check_url(url: str, allow_hosts: Iterable[str] = (), resolver: Resolver | None = None,
              *, resolve: bool = True) -> Target:
    """Validate ``url`` and (when ``resolve``) every address its host resolves to.

    Raises ``WebhookTargetRefused`` (permanent) for a refused URL or address, and
    ``DeliveryFailed`` (transient) when DNS fails. With ``resolve=False`` only the URL and a
    literal IP host are checked, e.g. when accepting a request while DNS may be flaky.
    """
    scheme, host, port = parse_url(url)
    allow = AllowList(allow_hosts)
    name_allowed = allow.allows_name(host)
    if host.rstrip(".") in METADATA_HOSTS and not name_allowed:
        raise WebhookTargetRefused(f"webhook host {host!r} is a cloud metadata service")
    try:
        literal: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        addresses = [str(literal)]
    elif not resolve:
        return Target(url, scheme, host, port, ())
    else:
        addresses = list((resolver or system_resolver)(host, port))
        if not addresses:
            raise DeliveryFailed(f"webhook host {host!r} resolved to no address")
    checked: list[str] = []
    for a in addresses:
        addr = ipaddress.ip_address(a.split("%", 1)[0])
        reason = refusal_reason(addr)
        if reason and not (name_allowed or allow.allows_address(addr)):
            # One bad address refuses the URL: an attacker controls which one a client would pick.
            raise WebhookTargetRefused(
                f"webhook host {host!r} resolves to {addr}, {reason}; an operator can allow it "
                "with BATCHRENDER_WEBHOOK_ALLOW_HOSTS, set for the API and for every worker (each "
                "checks it: at submission and at each delivery)")
        checked.append(str(addr))
    return Target(url, scheme, host, port, tuple(checked))


class _Watchdog:
    """One daemon thread for every exchange's deadline: at its time, call what was registered
    (``PinnedBackend.expire``). Timeouts per read cannot bound an exchange: a server that sends
    one header byte every few seconds never lets a read time out."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, list]] = []
        self._cv = threading.Condition()
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None

    def add(self, when: float, fn: Callable[[], None]) -> list:
        """Call ``fn`` at monotonic time ``when``; the handle cancels it (``cancel``)."""
        handle = [fn]
        with self._cv:
            heapq.heappush(self._heap, (when, next(self._ids), handle))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="http-deadlines", daemon=True)
                self._thread.start()
            self._cv.notify()
        return handle

    @staticmethod
    def cancel(handle: list) -> None:
        handle[0] = None

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._heap or self._heap[0][0] > time.monotonic():
                    self._cv.wait(min(60.0, self._heap[0][0] - time.monotonic()) if self._heap else 60.0)
                _, _, handle = heapq.heappop(self._heap)
            fn = handle[0]
            if fn is not None:
                try:
                    fn()
                except Exception:  # noqa: BLE001 - a watchdog must outlive what it watches
                    log.warning("closing an exchange at its deadline failed", exc_info=True)


_WATCHDOG = _Watchdog()


class _TrackedStream(httpcore.NetworkStream):
    """A connection's stream, known to its backend so the deadline can shut its socket."""

    def __init__(self, stream: httpcore.NetworkStream, backend: "PinnedBackend") -> None:
        self._stream, self._backend = stream, backend
        backend._track(self)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, timeout)

    def close(self) -> None:
        self._stream.close()

    def start_tls(self, ssl_context, server_hostname: str | None = None, timeout: float | None = None):
        return _TrackedStream(self._stream.start_tls(ssl_context, server_hostname, self._backend.cap(timeout)),
                              self._backend)

    def get_extra_info(self, info: str):
        return self._stream.get_extra_info(info)

    def shutdown(self) -> None:
        sock = self._stream.get_extra_info("socket")
        if sock is not None:
            try:
                # The plain socket's shutdown (an SSLSocket's own would drop its TLS state under a
                # reader): a thread blocked reading wakes at once with end of stream.
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError:
                pass


class PinnedBackend(httpcore.SyncBackend):
    """A network backend that connects only to a Target's validated addresses, and, with a
    ``deadline`` (``time.monotonic()`` time), ends the whole exchange then: connecting gets what
    is left of it, and the watchdog shuts every socket of the exchange down at that moment,
    whatever phase it is in (connect, TLS, headers, body)."""

    def __init__(self, target: Target, deadline: float | None = None) -> None:
        self._target = target
        self.deadline = deadline
        self.expired = False
        self._streams: list[_TrackedStream] = []
        self._lock = threading.Lock()

    def cap(self, timeout: float | None) -> float | None:
        """``timeout`` no longer than what is left of the deadline; ConnectTimeout when none is."""
        if self.deadline is None:
            return timeout
        left = self.deadline - time.monotonic()
        if left <= 0 or self.expired:
            self.expired = True
            raise httpcore.ConnectTimeout("the exchange's total deadline has passed")
        return left if timeout is None else min(timeout, left)

    def _track(self, stream: _TrackedStream) -> None:
        with self._lock:
            self._streams.append(stream)
            late = self.expired
        if late:
            stream.shutdown()

    def expire(self) -> None:
        """The deadline: every socket of the exchange is shut down (run by the watchdog)."""
        with self._lock:
            self.expired = True
            streams = list(self._streams)
        for stream in streams:
            stream.shutdown()

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None, socket_options: Iterable[object] | None = None,
                    ) -> httpcore.NetworkStream:
        if host.lower().strip("[]") != self._target.host.strip("[]") or port != self._target.port:
            # Only the checked origin may be reached (redirects are not followed anyway).
            raise httpcore.ConnectError(f"refused: {host}:{port} is not the validated webhook target")
        last: Exception | None = None
        for address in self._target.addresses:
            log.debug("webhook connect %s:%d -> %s", host, port, address)
            try:
                stream = super().connect_tcp(address, port, self.cap(timeout), local_address,  # type: ignore[arg-type]
                                             socket_options)
                return _TrackedStream(stream, self) if self.deadline is not None else stream
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as e:
                last = e
                if self.expired:
                    break
        raise last or httpcore.ConnectError("no validated address to connect to")


class PinnedTransport(httpx.HTTPTransport):
    """``httpx.HTTPTransport`` whose connection pool uses ``PinnedBackend`` and no proxies."""

    def __init__(self, target: Target, verify: bool | str = True, deadline: float | None = None) -> None:
        # trust_env=False: an environment proxy would make the proxy, not us, resolve the host.
        super().__init__(verify=verify, trust_env=False)
        ssl_context = httpx.create_ssl_context(verify=verify, trust_env=False)
        self.backend = PinnedBackend(target, deadline)
        self._pool = httpcore.ConnectionPool(ssl_context=ssl_context, max_connections=1,
                                             network_backend=self.backend)


class PinnedClient(httpx.Client):
    """What ``pinned_client`` gives: ``expired`` says the total deadline ended the exchange."""

    def __init__(self, transport: PinnedTransport, timeout: float) -> None:
        super().__init__(transport=transport, timeout=timeout, follow_redirects=False, trust_env=False)
        self._backend = transport.backend
        deadline = self._backend.deadline
        self._watch = _WATCHDOG.add(deadline, self._backend.expire) if deadline is not None else None

    @property
    def expired(self) -> bool:
        return self._backend.expired

    def close(self) -> None:
        if self._watch is not None:
            _WATCHDOG.cancel(self._watch)
        super().close()


def pinned_client(target: Target, timeout: float, verify: bool | str = True,
                  deadline: float | None = None) -> PinnedClient:
    """An ``httpx.Client`` bound to ``target``: pinned addresses, no redirects, no env proxies.
    ``timeout``: each connect, read and write; ``deadline`` (a ``time.monotonic()`` time): the
    whole exchange, connect, TLS and header phase included, ends then (``client.expired``)."""
    return PinnedClient(PinnedTransport(target, verify=verify, deadline=deadline), timeout)
