"""The embedded default broker: a private redis-server that batchrender starts and owns.

Why a private Redis rather than kombu's filesystem transport: the queue semantics that keep work
from being lost (late acks, the visibility timeout that redelivers a killed worker's job, the
job records and cancel flags) are then exactly the ones production runs on. The filesystem
transport has no visibility timeout, so the demo would be a different system.
"""
from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from jobs.errors import ConfigurationError
from jobs.settings import Settings


def _dir(settings: Settings) -> Path:
    return (settings.home / "redis").resolve()


def _alive(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def running_url(settings: Settings) -> str | None:
    """The embedded broker's URL when it is running now (None when it is not, or a Redis URL is set)."""
    if settings.redis_url:
        return None
    port_file = _dir(settings) / "port"
    port = int(port_file.read_text().strip() or 0) if port_file.exists() else 0
    return f"redis://127.0.0.1:{port}/0" if port and _alive(port) else None


def redis_url_for(settings: Settings, start: bool = True) -> str:
    """The Redis URL to use: the configured one, else the embedded one (started when ``start``)."""
    if settings.redis_url:
        return settings.redis_url
    d = _dir(settings)
    port_file = d / "port"
    if port_file.exists():
        port = int(port_file.read_text().strip() or 0)
        if port and _alive(port):
            return f"redis://127.0.0.1:{port}/0"
    if not start:
        # Not running yet: point at where it will be; callers that send or consume start it.
        return f"redis://127.0.0.1:{int(port_file.read_text().strip() or 0) if port_file.exists() else 6399}/0"
    return _start(d)


def _start(d: Path) -> str:
    exe = shutil.which("redis-server")
    if not exe:
        raise ConfigurationError(
            "no BATCHRENDER_REDIS_URL is set and redis-server is not installed for the embedded "
            "broker: install it (apt-get install redis-server / brew install redis) or set "
            "BATCHRENDER_REDIS_URL=redis://host:6379/0"
        )
    d.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    subprocess.run(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(d), "--daemonize", "yes",
         "--pidfile", str(d / "redis.pid"), "--logfile", str(d / "redis.log"),
         "--appendonly", "yes", "--save", ""],
        check=True, stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while not _alive(port):
        if time.monotonic() > deadline:
            raise ConfigurationError(f"embedded redis-server did not start; see {d / 'redis.log'}")
        time.sleep(0.05)
    (d / "port").write_text(str(port))
    # Say which home's broker this is: a second home means a second, empty broker.
    print(f"batchrender: started the embedded broker of home {d.parent} on 127.0.0.1:{port} "
          "(it keeps running; `batchrender embedded stop` stops it)", file=sys.stderr)
    return f"redis://127.0.0.1:{port}/0"


def stop(settings: Settings) -> None:
    """Shut the embedded redis down (``batchrender embedded stop``; the demo stops the one it started)."""
    d = _dir(settings)
    port_file = d / "port"
    if settings.redis_url or not port_file.exists():
        return
    port = int(port_file.read_text().strip())
    if _alive(port):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"SHUTDOWN NOSAVE\r\n")
                s.recv(16)
        except OSError:
            pass
    port_file.unlink(missing_ok=True)
