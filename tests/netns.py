"""Several "hosts" on one machine, for the fleet test and ``make fleet`` (issue 25).

A host here is a network namespace of its own (one veth pair into a bridge that carries the
shared services), and each process started on it runs in a UTS and PID namespace of its own too
(its own host name; the first process is PID 1 there, so SIGKILLing it takes down everything the
host ran, the way a machine dies), with its own home, HOME, TMPDIR and working directory. The
shared services (Redis, the sentinels, S3, the webhook receiver) listen on the bridge's address
only: a process on a host reaches them over its link, and its own 127.0.0.1 holds nothing.

Needs root (``ip netns``, ``unshare``). Names carry a random tag, so two runs never collide, and
:meth:`Bridge.close` removes every namespace and link it made.
"""
from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path


def available() -> str | None:
    """Why several hosts cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "unshare"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


def _ip(*args: str, netns: str | None = None) -> None:
    cmd = ["ip", *(["netns", "exec", netns, "ip"] if netns else []), *args]
    subprocess.run(cmd, check=True, capture_output=True, text=True)


@dataclass
class HostProcess:
    """A process started on a host: ``proc`` is the ``unshare`` parent; ``init_pid`` (as this
    machine numbers it) is PID 1 of the host's PID namespace."""

    proc: subprocess.Popen
    log_path: Path

    @property
    def init_pid(self) -> int | None:
        try:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        except OSError:
            return None
        return int(children[0]) if children else None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _signal_init(self, sig: int) -> None:
        pid = self.init_pid
        if pid is not None:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def kill_init(self) -> None:
        """SIGKILL PID 1 of the host's PID namespace: the kernel kills every process in it."""
        self._signal_init(signal.SIGKILL)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM to PID 1 (the process's own shutdown), then SIGKILL after ``timeout``."""
        if not self.alive():
            return
        self._signal_init(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill_init()


@dataclass
class Host:
    """One network namespace behind a veth pair into the bridge, with a directory of its own."""

    bridge: "Bridge"
    name: str
    address: str
    netns: str
    veth: str  # this machine's end, in the bridge
    root: Path
    processes: list[HostProcess] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        """The per-host part of an environment: its own HOME, TMPDIR and batchrender home."""
        home = self.root / "home"
        tmp = self.root / "tmp"
        for d in (home, tmp):
            d.mkdir(parents=True, exist_ok=True)
        return {"HOME": str(self.root), "TMPDIR": str(tmp), "BATCHRENDER_HOME": str(home)}

    def spawn(self, argv: list[str], env: dict[str, str], log_name: str) -> HostProcess:
        """Run ``argv`` on this host: in its network namespace, with new UTS, PID and mount
        namespaces (host name ``self.name``, ``/proc`` of its own), from its own directory."""
        log_path = self.root / f"{log_name}.log"
        wrapper = ["ip", "netns", "exec", self.netns,
                   "unshare", "--uts", "--pid", "--mount", "--fork", "--mount-proc", "--kill-child",
                   "sh", "-c", 'hostname "$0" && exec "$@"', self.name, *argv]
        proc = subprocess.Popen(wrapper, env=env, cwd=self.root, stdout=open(log_path, "ab"),
                                stderr=subprocess.STDOUT, start_new_session=True)
        hp = HostProcess(proc, log_path)
        self.processes.append(hp)
        return hp

    def run(self, argv: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
        """Run ``argv`` on this host to its end (killed whole after ``timeout``)."""
        wrapper = ["ip", "netns", "exec", self.netns, "unshare", "--uts", "--pid", "--mount", "--fork",
                   "--mount-proc", "--kill-child", "sh", "-c", 'hostname "$0" && exec "$@"', self.name, *argv]
        proc = subprocess.Popen(wrapper, env=env, cwd=self.root, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            return subprocess.CompletedProcess(proc.args, -9, out, err)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def link(self, up: bool) -> None:
        """Take this host's link to the bridge down (nothing in or out) or bring it back."""
        _ip("link", "set", "dev", self.veth, "up" if up else "down")

    def stop(self) -> None:
        for p in self.processes:
            p.stop()


class Bridge:
    """A bridge on this machine with the shared services' address (``.1``) and hosts behind it."""

    def __init__(self, root: Path, tag: str | None = None) -> None:
        self.tag = tag or f"{random.randrange(16**4):04x}"
        self.name = f"brf{self.tag}"
        # 10.X.Y.0/24, X and Y from the tag: concurrent runs get their own subnets.
        n = int(self.tag, 16)
        self.prefix = f"10.{200 + n % 50}.{n // 50 % 250}"
        self.address = f"{self.prefix}.1"
        self.root = root
        self.hosts: list[Host] = []
        _ip("link", "add", self.name, "type", "bridge")
        try:
            _ip("addr", "add", f"{self.address}/24", "dev", self.name)
            _ip("link", "set", self.name, "up")
        except subprocess.CalledProcessError:
            self.close()
            raise

    def host(self, name: str) -> Host:
        """A new host behind the bridge, named ``name`` (its host name), with the next address."""
        i = len(self.hosts) + 10
        netns = f"brf{self.tag}-{name}"
        veth, peer = f"vf{self.tag}{i}", f"vf{self.tag}{i}p"
        _ip("netns", "add", netns)
        host = Host(self, name, f"{self.prefix}.{i}", netns, veth, self.root / name)
        self.hosts.append(host)
        host.root.mkdir(parents=True, exist_ok=True)
        _ip("link", "add", veth, "type", "veth", "peer", "name", peer)
        _ip("link", "set", peer, "netns", netns)
        _ip("link", "set", veth, "master", self.name)
        _ip("link", "set", veth, "up")
        _ip("addr", "add", f"{host.address}/24", "dev", peer, netns=netns)
        _ip("link", "set", peer, "up", netns=netns)
        _ip("link", "set", "lo", "up", netns=netns)
        return host

    def close(self) -> None:
        for host in self.hosts:
            host.stop()
        for host in self.hosts:
            subprocess.run(["ip", "link", "del", host.veth], capture_output=True)
            subprocess.run(["ip", "netns", "del", host.netns], capture_output=True)
        subprocess.run(["ip", "link", "del", self.name], capture_output=True)
        self.hosts = []

    def __enter__(self) -> "Bridge":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
