"""The hosts of ``make fleet`` (tests/netns.py, issue 25) are hosts: a process on one has its own
host name and PID namespace, reaches the shared services on the bridge and nothing on this
machine's loopback, loses the bridge when its link is down, dies whole when its PID 1 is
SIGKILLed, and nothing is left behind when the bridge closes. Quick (no model, no worker):
the fleet scenario itself is ``make fleet``, with its JSON in benchmarks/results/fleet.json."""
from __future__ import annotations

import socket
import subprocess
import sys
import threading

import pytest

from tests import netns
from tests.conftest import require

PROBE = r"""
import os, socket, sys
def reach(host, port):
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
        return "yes"
    except OSError as e:
        return type(e).__name__
print(socket.gethostname(), os.getpid(), reach(sys.argv[1], sys.argv[2]), reach("127.0.0.1", sys.argv[3]))
"""


@pytest.fixture
def bridge(tmp_path):
    why = netns.available()
    require(why is None, f"network namespaces: {why}")
    with netns.Bridge(tmp_path) as b:
        yield b
    assert not [n for n in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
                if n.startswith(b.name)], "a namespace outlived its bridge"
    assert subprocess.run(["ip", "link", "show", b.name], capture_output=True).returncode != 0


def _listen(host: str) -> socket.socket:
    s = socket.create_server((host, 0))
    threading.Thread(target=lambda: [s.accept()[0].close() for _ in iter(int, 1)], daemon=True).start()
    return s


def test_a_host_has_its_own_name_and_pids_and_reaches_only_the_bridge(bridge):
    shared = _listen(bridge.address)       # a service of the fleet, on the bridge
    local = _listen("127.0.0.1")           # something on this machine's loopback
    a, b = bridge.host("host-a"), bridge.host("host-b")
    outs = []
    for h in (a, b):
        done = h.run([sys.executable, "-c", PROBE, bridge.address, str(shared.getsockname()[1]),
                      str(local.getsockname()[1])], h.env(), timeout=60)
        assert done.returncode == 0, done.stderr
        outs.append(done.stdout.split())
    assert [o[0] for o in outs] == ["host-a", "host-b"]
    assert all(o[1] == "1" for o in outs), outs   # the probe is PID 1 of its host (sh exec-ed it)
    assert all(o[2] == "yes" for o in outs), outs
    assert all(o[3] == "ConnectionRefusedError" for o in outs), outs  # its own loopback is empty

    a.link(False)
    down = a.run([sys.executable, "-c", PROBE, bridge.address, str(shared.getsockname()[1]),
                  str(local.getsockname()[1])], a.env(), timeout=60)
    assert down.stdout.split()[2] != "yes"
    a.link(True)


def test_sigkill_of_a_hosts_pid_1_takes_down_all_it_ran(bridge):
    host = bridge.host("host-k")
    # PID 1 (sh -> exec sleep) with a child that ignores SIGTERM: all must die with PID 1.
    p = host.spawn(["sh", "-c", "trap '' TERM; sleep 600 & exec sleep 600"], host.env(), "k")
    netns_pids = lambda: subprocess.run(["ip", "netns", "pids", host.netns], capture_output=True,  # noqa: E731
                                        text=True).stdout.split()
    from tests.workers import wait_for

    wait_for(lambda: p.init_pid is not None and len(netns_pids()) >= 3, 30, "the host's processes")
    p.kill_init()
    assert not p.alive()
    wait_for(lambda: not netns_pids(), 30, "every process of the host gone")
