"""A real Redis Sentinel setup for tests and benchmarks: a primary and a replica (``requirepass``
and ``masterauth``, AOF with fsync always) and three sentinels, each a redis-server process of its
own, on free ports of one address (loopback by default; the fleet run puts them on a bridge)."""
from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import redis as redis_lib

from tests.conftest import free_port
from tests.workers import wait_for

PASSWORD = "s3ntinel-test-pw"
MASTER = "brmaster"


class Node:
    """One redis-server process (data node or sentinel) of its own, on a free port of ``host``."""

    def __init__(self, directory: Path, args: list[str], port: int, password: str | None,
                 host: str = "127.0.0.1") -> None:
        self.dir, self.args, self.port, self.password, self.host = directory, args, port, password, host
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Node":
        self.proc = subprocess.Popen(["redis-server", *self.args], cwd=self.dir,
                                     stdout=open(self.dir / "server.log", "ab"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        wait_for(self._pings, timeout=30, what=f"redis-server on {self.port}")
        return self

    def client(self, **kw) -> redis_lib.Redis:
        return redis_lib.Redis(host=self.host, port=self.port, password=self.password, socket_connect_timeout=1, socket_timeout=5,
                               decode_responses=True, **kw)

    def _pings(self) -> bool:
        c = self.client()
        try:
            return bool(c.ping())
        except (redis_lib.ConnectionError, redis_lib.exceptions.BusyLoadingError):
            return False
        finally:
            c.close()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


class SentinelCluster:
    """A primary, a replica and three sentinels in ``directory``. Short timeouts, so a failover
    takes seconds: a master is down after 1 s unanswered, a failover attempt times out after 5 s."""

    def __init__(self, directory: Path, host: str = "127.0.0.1") -> None:
        self.dir, self.host = directory, host
        self.primary = self._data_node("primary", None)
        self.replica = self._data_node("replica", self.primary.port)
        self.sentinels = [self._sentinel(i) for i in range(3)]

    def _data_node(self, name: str, master_port: int | None) -> Node:
        port = free_port()
        args = ["--port", str(port), "--bind", self.host, "--dir", str(self.dir / name),
                "--requirepass", PASSWORD, "--masterauth", PASSWORD, "--appendonly", "yes",
                "--appendfsync", "always", "--save", "", "--protected-mode", "no"]
        if master_port:
            args += ["--replicaof", self.host, str(master_port)]
        return Node(self.dir / name, args, port, PASSWORD, self.host)

    def _sentinel(self, i: int) -> Node:
        port = free_port()
        d = self.dir / f"sentinel{i}"
        d.mkdir(parents=True, exist_ok=True)
        conf = d / "sentinel.conf"  # sentinels rewrite their file: one each, writable
        conf.write_text("\n".join([
            f"port {port}", f"bind {self.host}", "protected-mode no", f"dir {d}",
            f"sentinel monitor {MASTER} {self.host} {self.primary.port} 2",
            f"sentinel auth-pass {MASTER} {PASSWORD}",
            f"sentinel down-after-milliseconds {MASTER} 1000",
            f"sentinel failover-timeout {MASTER} 5000",
            f"sentinel parallel-syncs {MASTER} 1", ""]))
        return Node(d, [str(conf), "--sentinel"], port, None, self.host)

    def start(self) -> "SentinelCluster":
        self.primary.start()
        self.replica.start()
        for s in self.sentinels:
            s.start()
        wait_for(self._settled, timeout=60, what="the sentinels to see the replica and each other", every=0.2)
        return self

    def _settled(self) -> bool:
        for s in self.sentinels:
            c = s.client()
            try:
                m = c.sentinel_master(MASTER)
                if int(m["num-other-sentinels"]) < 2 or int(m["num-slaves"]) < 1:
                    return False
            except redis_lib.RedisError:
                return False
            finally:
                c.close()
        return True

    def master_port(self) -> int | None:
        """The master the sentinels agree on (None while they do not)."""
        ports = set()
        for s in self.sentinels:
            c = s.client()
            try:
                ports.add(int(c.sentinel_get_master_addr_by_name(MASTER)[1]))
            except (redis_lib.RedisError, TypeError):
                return None
            finally:
                c.close()
        return ports.pop() if len(ports) == 1 else None

    @property
    def url(self) -> str:
        first, *rest = self.sentinels
        return ";".join([f"sentinel://:{PASSWORD}@{self.host}:{first.port}",
                         *(f"sentinel://{self.host}:{s.port}" for s in rest)]) + "/0"

    def env(self) -> dict[str, str]:
        return {"BATCHRENDER_REDIS_URL": self.url, "BATCHRENDER_REDIS_MASTER_NAME": MASTER}

    def stop(self) -> None:
        for n in [*self.sentinels, self.primary, self.replica]:
            n.kill()
