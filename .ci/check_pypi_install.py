#!/usr/bin/env python3
"""Prove the install path resolves from PyPI alone: no pip config, no local wheels, no other index.

For each target platform, pip resolves (``install --dry-run --report``, wheels only) what
``make install`` or the Dockerfile asks for: the project with its extras under constraints.txt.
It fails when a pinned version is not on PyPI for that platform (``torch==2.13.0+cpu`` was not:
``make install`` worked only where the machine served that wheel locally).

    python3 .ci/check_pypi_install.py                    # every target; CI runs this
    python3 .ci/check_pypi_install.py --target macos-arm64 --python 3.12

Where PyTorch's CPU index answers, it also checks that the torch the CPU default takes from it
(``make install`` on Linux, the Dockerfile) needs no nvidia/CUDA package. Needs network to PyPI;
pip reads wheel metadata with HTTP range requests (fast-deps), so nothing large is downloaded.
Exit 0: every target resolved; 1: the first lines of pip's error for each target that did not.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYPI = "https://pypi.org/simple"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
MAKE_EXTRAS = "worker,api,monitor,test"  # Makefile: pip install -e '.[worker,api,monitor,test]'
DOCKER_EXTRAS = "worker,api,monitor"  # Dockerfile: pip install '.[worker,api,monitor]'


def manylinux(glibc_minor: int, arch: str) -> list[str]:
    """pip does not widen --platform manylinux_2_N to older glibc tags: list them all."""
    return [f"manylinux_2_{n}_{arch}" for n in range(glibc_minor, 4, -1)] + [f"manylinux2014_{arch}"]


LINUX_X86 = {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix"}
LINUX_ARM = {**LINUX_X86, "platform_machine": "aarch64"}
MACOS_ARM = {"sys_platform": "darwin", "platform_system": "Darwin", "platform_machine": "arm64", "os_name": "posix"}
#: name -> (platform tags, environment markers, extras, what it stands for)
TARGETS: dict[str, tuple[list[str], dict, str, str]] = {
    "linux-x86_64": (manylinux(28, "x86_64"), LINUX_X86, MAKE_EXTRAS, "make install on Linux x86_64, glibc >= 2.28"),
    "linux-aarch64": (manylinux(28, "aarch64"), LINUX_ARM, MAKE_EXTRAS, "make install on Linux aarch64, glibc >= 2.28"),
    "macos-arm64": (["macosx_14_0_arm64"], MACOS_ARM, MAKE_EXTRAS, "make install on macOS 14+, Apple silicon"),
    # The Dockerfile's base, python:3.11-slim-bookworm: glibc 2.36; amd64, and arm64 (Apple silicon hosts).
    "docker-amd64": (manylinux(36, "x86_64"), LINUX_X86, DOCKER_EXTRAS, "the Dockerfile on linux/amd64, as TORCH=cuda"),
    "docker-arm64": (manylinux(36, "aarch64"), LINUX_ARM, DOCKER_EXTRAS, "the Dockerfile on linux/arm64, as TORCH=cuda"),
}
# pip's --platform/--python-version choose wheels, but pip evaluates dependency markers
# (`; platform_system == "Linux"`) for the machine it runs on. pip with the target's markers:
PIP_WITH_MARKERS = (
    "import json, os, sys\n"
    "import pip._vendor.packaging.markers as markers\n"
    "_host, _target = markers.default_environment, json.loads(os.environ['BR_TARGET_MARKERS'])\n"
    "markers.default_environment = lambda: {**_host(), **_target}\n"
    "from pip._internal.cli.main import main\n"
    "sys.exit(main(sys.argv[1:]))\n")
LINUX_TARGETS = ("linux-x86_64", "linux-aarch64", "docker-amd64", "docker-arm64")
CUDA_NAME = re.compile(r"^(nvidia-|cuda-)", re.I)  # as make install and the Dockerfile count them


def pypi_only_env(cache_dir: str) -> dict[str, str]:
    """The environment of a machine with only PyPI: every PIP_* setting dropped, no config file."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_INDEX_URL=PYPI, PIP_DISABLE_PIP_VERSION_CHECK="1",
               PIP_NO_INPUT="1", PIP_CACHE_DIR=cache_dir)
    return env


def local_labels(constraints: Path) -> list[str]:
    """Pins with a local version label (``+cpu``): PyPI never has those."""
    return [line.strip() for line in constraints.read_text().splitlines()
            if re.match(r"^[A-Za-z0-9_.\-]+==[^#\s]*\+", line.strip())]


def pinned(constraints: Path, name: str) -> str | None:
    for line in constraints.read_text().splitlines():
        m = re.match(rf"^{re.escape(name)}==(\S+)", line.strip(), re.I)
        if m:
            return m.group(1)
    return None


def pip_for(venv: Path, env: dict, target: str, python: str) -> tuple[list[str], dict]:
    """The pip command line and environment that resolve for `target` under Python `python`."""
    markers = {**TARGETS[target][1], "python_version": python}
    if python != "%d.%d" % sys.version_info[:2]:
        markers["python_full_version"] = python + ".0"
    nodot = python.replace(".", "")
    cmd = [str(venv / "bin" / "python"), "-c", PIP_WITH_MARKERS, "install", "--dry-run", "--ignore-installed",
           "--quiet", "--use-feature=fast-deps", "--only-binary=:all:", "--python-version", python,
           "--implementation", "cp", "--abi", f"cp{nodot}",
           *(a for p in TARGETS[target][0] for a in ("--platform", p))]
    return cmd, {**env, "BR_TARGET_MARKERS": json.dumps(markers)}


def resolve(venv: Path, env: dict, target: str, python: str, constraints: Path, out: Path) -> tuple[bool, str]:
    """A dry run of the install for one platform; (ok, summary or pip's error)."""
    report = out / f"{target}-py{python}.json"
    cmd, env = pip_for(venv, env, target, python)
    cmd += ["--report", str(report), "-c", str(constraints), f"{out / 'project'}[{TARGETS[target][2]}]"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=out)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if "fast-deps" not in ln and ln.strip()]
        return False, "\n    ".join(lines[-6:]) or f"pip exited {proc.returncode}"
    installs = json.loads(report.read_text())["install"]
    versions = {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in installs}
    want = pinned(constraints, "torch")
    if want and versions.get("torch") != want:
        return False, f"torch resolved to {versions.get('torch')}, constraints.txt pins {want}"
    cuda = sorted(n for n in versions if CUDA_NAME.match(n))
    return True, (f"{len(installs)} packages, torch {versions.get('torch')} from PyPI"
                  + (f" (the CUDA build: {len(cuda)} nvidia/CUDA packages)" if cuda else " (no CUDA packages)"))


def cpu_index_torch(venv: Path, env: dict, target: str, python: str, torch: str, out: Path,
                    index: str = TORCH_CPU_INDEX) -> tuple[bool, str]:
    """What `make install` (Linux) and the Dockerfile take by default: torch alone from the CPU index."""
    report = out / f"{target}-py{python}-cpu-index.json"
    cmd, env = pip_for(venv, env, target, python)
    cmd += ["--report", str(report), "--no-deps", "--index-url", index, f"torch=={torch}"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=out)
    if proc.returncode != 0:
        return False, "\n    ".join(proc.stderr.strip().splitlines()[-4:])
    meta = json.loads(report.read_text())["install"][0]["metadata"]
    cuda = [r for r in meta.get("requires_dist") or []
            if (CUDA_NAME.match(r) or r.lower().startswith("triton")) and "extra ==" not in r]
    if cuda:
        return False, f"torch {meta['version']} from the CPU index requires {cuda}"
    return True, f"torch {meta['version']} from the CPU index needs no CUDA package"


def reachable(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=10).close()
        return True
    except OSError:
        return False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", action="append", choices=sorted(TARGETS), help="default: all")
    ap.add_argument("--python", action="append", help="Python version(s) to resolve for (default: 3.11)")
    ap.add_argument("--constraints", type=Path, default=ROOT / "constraints.txt")
    ap.add_argument("--torch-cpu-index", default=TORCH_CPU_INDEX, help="a mirror of PyTorch's CPU index")
    args = ap.parse_args()
    targets, pythons = args.target or list(TARGETS), args.python or ["3.11"]
    constraints = args.constraints.resolve()

    bad = local_labels(constraints)
    if bad:
        print(f"FAIL {constraints.name} pins a local version label PyPI never has: {', '.join(bad)}. "
              "Pin the public version (torch==X matches X+cpu too); `make lock` drops the label.")
        return 1
    if not reachable(f"{PYPI}/pip/"):
        print(f"FAIL {PYPI} is not reachable: this check needs PyPI")
        return 1

    with tempfile.TemporaryDirectory(prefix="pypi-only-") as tmp:
        out = Path(tmp)
        env = pypi_only_env(str(out / "cache"))
        # A fresh venv with a current pip from PyPI, as `make install` has (pip install --upgrade pip).
        # The project's metadata from a copy of pyproject.toml: building it in the checkout would write
        # batchrender.egg-info there, beside a `make install` that CI runs at the same time.
        (out / "project").mkdir()
        (out / "project" / "pyproject.toml").write_bytes((ROOT / "pyproject.toml").read_bytes())
        venv = out / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = venv / "bin" / "pip"
        subprocess.run([str(pip), "install", "-q", "--upgrade", "pip"], env=env, check=True)
        config = subprocess.run([str(pip), "config", "list"], env=env, capture_output=True, text=True).stdout
        settings = {line.split("=", 1)[0] for line in config.splitlines() if "=" in line}
        assert settings <= {f":env:.{k.lower()[4:].replace('_', '-')}" for k in env if k.startswith("PIP_")}, config
        print(f"pip config: none; index: {PYPI} only; no find-links; constraints: {constraints}")

        jobs = [(t, py) for py in pythons for t in targets]
        with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
            results = list(pool.map(lambda j: resolve(venv, env, j[0], j[1], constraints, out), jobs))
        failed = 0
        for (target, py), (ok, text) in zip(jobs, results):
            failed += not ok
            print(f"{'ok  ' if ok else 'FAIL'} {target} py{py} ({TARGETS[target][3]}): {text}")

        linux = [(t, py) for (t, py) in jobs if t in LINUX_TARGETS]
        if linux and reachable(f"{args.torch_cpu_index}/torch/"):
            torch = pinned(constraints, "torch")
            with ThreadPoolExecutor(max_workers=len(linux)) as pool:
                cpu = list(pool.map(lambda j: cpu_index_torch(venv, env, j[0], j[1], torch, out,
                                                              args.torch_cpu_index), linux))
            for (target, py), (ok, text) in zip(linux, cpu):
                failed += not ok
                print(f"{'ok  ' if ok else 'FAIL'} {target} py{py} CPU default: {text}")
        elif linux:
            print(f"skip CPU-index check: {args.torch_cpu_index} does not answer from here "
                  "(make install then takes PyPI's build and says so; the Dockerfile stops, naming the fix)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
