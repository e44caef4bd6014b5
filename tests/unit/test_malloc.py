"""worker/malloc.py: the render worker caps glibc's arenas and pins the mmap threshold (issue 26:
image buffers freed by many threads left a heap growing ~20 MiB per 1,000 jobs under load).
Checked in a fresh interpreter through glibc's own accounting (malloc_info, mallinfo2)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

if "glibc" not in (os.confstr("CS_GNU_LIBC_VERSION") if hasattr(os, "confstr") else "").lower():
    pytest.skip("glibc malloc only", allow_module_level=True)

PROBE = r'''
import ctypes, json, os, re, sys, tempfile, threading
from worker.malloc import tune
applied = tune(int(sys.argv[1]), int(sys.argv[2]))
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
# 12 threads each allocating at once, so each would get an arena of its own, up to 8 per core
gate = threading.Barrier(12)
def work():
    gate.wait()
    p = libc.malloc(1000)
    gate.wait()
    libc.free(p)
ts = [threading.Thread(target=work) for _ in range(12)]
[t.start() for t in ts]; [t.join() for t in ts]
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                  "fsmblks", "uordblks", "fordblks", "keepcost")]
libc.mallinfo2.restype = MallInfo2
# a freed 4 MiB mapping raises glibc's dynamic threshold; is 512 KiB then mapped on its own?
big = libc.malloc(4 << 20); libc.free(big)
before = libc.mallinfo2().hblks
mid = libc.malloc(512 << 10)
mapped = libc.mallinfo2().hblks - before
libc.free(mid)
libc.fdopen.restype = ctypes.c_void_p
libc.fdopen.argtypes = [ctypes.c_int, ctypes.c_char_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
with tempfile.TemporaryFile() as f:
    fp = libc.fdopen(os.dup(f.fileno()), b"w")
    libc.malloc_info(0, fp)
    libc.fclose(fp)
    f.seek(0); xml = f.read().decode()
print(json.dumps({"applied": applied, "arenas": len(re.findall(r'<heap nr="', xml)), "mapped": mapped}))
'''


def probe(arena_max: int, mmap_threshold: int, **env: str) -> dict:
    run = subprocess.run([sys.executable, "-c", PROBE, str(arena_max), str(mmap_threshold)], cwd=ROOT,
                         env={k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")} | env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.splitlines()[-1])


def test_glibc_defaults_give_threads_arenas_and_a_rising_threshold():
    out = probe(0, 0)
    assert out["applied"] == {}
    assert out["arenas"] > 2 and out["mapped"] == 0, out


def test_tuned_arenas_are_capped_and_large_buffers_mapped_on_their_own():
    out = probe(2, 128 * 1024)
    assert out["applied"] == {"arena_max": 2, "mmap_threshold": 128 * 1024}
    assert out["arenas"] <= 2 and out["mapped"] == 1, out


def test_the_environment_wins():
    out = probe(2, 128 * 1024, MALLOC_ARENA_MAX="4")
    assert out["applied"] == {"mmap_threshold": 128 * 1024}, out


def test_a_worker_process_applies_the_settings(tmp_path):
    """worker.app tunes at import, before Celery or torch start a thread."""
    code = "import worker.app as a; import json; print(json.dumps(a._malloc))"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "BATCHRENDER_"))}
    env |= {"BATCHRENDER_HOME": str(tmp_path), "BATCHRENDER_MALLOC_ARENA_MAX": "3"}
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads(run.stdout.splitlines()[-1]) == {"arena_max": 3}  # the threshold: glibc's by default
