"""What a benchmark result records about the code it measured (shared by the benchmarks)."""
from __future__ import annotations

import subprocess
from pathlib import Path


def checkout() -> dict:
    """The commit measured and the tracked files changed on top of it (uncommitted work counts too)."""
    root = Path(__file__).resolve().parents[1]

    def git(*a: str) -> str:
        try:
            return subprocess.run(["git", *a], cwd=root, capture_output=True, text=True, timeout=10).stdout.rstrip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {"commit": git("rev-parse", "HEAD") or None,
            "modified": sorted(line[3:] for line in git("status", "--porcelain", "--untracked-files=no").splitlines())}
