"""The install path works from PyPI alone: pins PyPI has, and the guards around them.

The resolution itself (every pinned version on PyPI for Linux, macOS and the Docker image) needs the
network and minutes: `.ci/run` runs `.ci/check_pypi_install.py` beside the suite. These tests are
the offline part: they read the files that installs go through, and run the check's early refusal.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHECK = ROOT / ".ci" / "check_pypi_install.py"


def test_constraints_pin_only_versions_pypi_has():
    """`torch==2.13.0+cpu` is on no index but PyTorch's and this machine's disk; `torch==2.13.0`
    matches that local wheel here and PyPI's elsewhere."""
    pins = [line.strip() for line in (ROOT / "constraints.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    assert pins, "constraints.txt has no pins"
    labelled = [pin for pin in pins if "+" in pin]
    assert labelled == [], f"local version labels PyPI never has: {labelled}"
    assert re.fullmatch(r"torch==\d+(\.\d+)+", next(p for p in pins if p.lower().startswith("torch==")))


def test_make_lock_drops_local_labels():
    """`make lock` writes what `pip list` says (torch 2.13.0+cpu here): the label must not come back."""
    dry = subprocess.run(["make", "-n", "-s", "lock"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    recipe = dry[dry.index("pip list"):]
    sed = re.search(r"sed -E '([^']+)'", recipe)
    assert sed, f"make lock writes pip list's versions unchanged, local labels included: {recipe[:200]}"
    expr = sed.group(1)
    frozen = "amqp==5.4.2\ntorch==2.13.0+cpu\ntorchvision==0.29.1+cu126\nzipp==4.1.2\n"
    out = subprocess.run(["sed", "-E", expr], input=frozen, capture_output=True, text=True, check=True).stdout
    assert out == "amqp==5.4.2\ntorch==2.13.0\ntorchvision==0.29.1\nzipp==4.1.2\n"


def test_make_install_refuses_an_unknown_torch_choice(tmp_path):
    for name in ("Makefile", "pyproject.toml", "constraints.txt"):
        shutil.copy(ROOT / name, tmp_path / name)
    proc = subprocess.run(["make", "install", "TORCH=gpu"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode != 0
    assert "TORCH=gpu is not a choice" in proc.stderr and "TORCH=cuda" in proc.stderr
    assert not (tmp_path / ".venv").exists()  # refused before anything was installed


def test_pypi_check_names_a_local_label_before_resolving(tmp_path):
    """The CI step fails on the pin that broke installs, naming it, without asking any index."""
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("amqp==5.4.2\ntorch==2.13.0+cpu\n")
    proc = subprocess.run([sys.executable, str(CHECK), "--constraints", str(constraints)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "torch==2.13.0+cpu" in proc.stdout and "torch==X matches X+cpu" in proc.stdout
