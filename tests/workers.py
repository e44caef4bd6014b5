"""Real ``celery worker`` processes for integration tests."""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class WorkerProcess:
    """A solo-pool celery worker in its own process group, logging to a file."""

    def __init__(self, env: dict[str, str], log_path: Path, queues: str = "render.tiny,webhooks",
                 name: str = "w", app: str = "worker.app", heartbeat: bool = False) -> None:
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", app, "worker", "-P", "solo", "-Q", queues,
             "--prefetch-multiplier", "1", "--without-gossip", "--without-mingle",
             *([] if heartbeat else ["--without-heartbeat"]), "-l", "INFO", "-n", f"{name}-{os.getpid()}-{time.monotonic_ns()}@test"],
            env={**os.environ, **env}, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60) -> "WorkerProcess":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if " ready." in self.log():
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            time.sleep(0.1)
        raise TimeoutError(f"worker not ready after {timeout}s:\n{self.log()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL the whole process group: no warm shutdown, no ack, no cleanup."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()


def wait_for(pred, timeout: float = 60.0, what: str = "condition", every: float = 0.05):
    """Poll ``pred`` until it returns something truthy; TimeoutError naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(f"timed out waiting for {what}")


def finish_with(client, job_id: str, data: bytes) -> None:
    """End a queued job as succeeded with ``data`` stored as its one output, as a worker does."""
    from jobs.schemas import ImageResult, JobResult
    from jobs.status import JobStatus

    key = f"{job_id}/0.png"
    client.storage.put(key, data, content_type="image/png")
    digest = hashlib.sha256(data).hexdigest()
    image = ImageResult(index=0, seed=1, width=64, height=64, format="png", key=key, sha256=digest,
                        bytes=len(data), pixel_sha256=digest)
    rec = client.store.get(job_id)
    result = JobResult(job_id=job_id, batch_id=rec.batch_id, custom_id=rec.custom_id, status=JobStatus.SUCCEEDED,
                       model="tiny", images=[image])
    assert client.store.transition(job_id, JobStatus.RUNNING, [JobStatus.QUEUED]).ok
    assert client.store.transition(job_id, JobStatus.SUCCEEDED, [JobStatus.RUNNING],
                                   result=result.model_dump_json()).ok


def stored_files(env: dict[str, str]) -> list[Path]:
    """Image files under a test's file:// storage root (thumbnails not counted)."""
    root = Path(env["BATCHRENDER_STORAGE_URL"].removeprefix("file://"))
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in (".png", ".jpeg", ".webp")
                  and not p.name.endswith(".thumb.webp"))


class RedisServer:
    """A private redis-server on its own port and directory, persisted (AOF, fsync always), so a
    test can kill it (-9) and start it again on the same port with the same data."""

    def __init__(self, port: int, directory: Path) -> None:
        self.port, self.dir = port, directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
             "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--protected-mode", "no"],
            stdout=open(self.dir / "redis.log", "ab"), stderr=subprocess.STDOUT, start_new_session=True)
        import redis

        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        try:
            wait_for(lambda: _pings(client), timeout=30, what=f"redis-server on {self.port}")
        finally:
            client.close()
        return self

    def kill(self) -> None:
        """SIGKILL: no shutdown save; what was fsynced to the AOF is what comes back."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        self.kill()


def _pings(client) -> bool:
    import redis

    try:
        return bool(client.ping())
    except (redis.ConnectionError, redis.exceptions.BusyLoadingError):
        return False
