"""docker-compose.yml as shipped, proven without a Docker engine.

``docker-compose config -q`` validates the file. Then every service's own command line,
environment and healthcheck are read from it and started as local processes: a private
redis-server for ``redis``, moto standing in for MinIO, and the batchrender services exactly as
written (profile ``cpu`` for the render worker). Only what a container network would provide is
rewritten: service host names and container ports become loopback ports, ``/data`` a temporary
directory. A job then goes through them: API -> render worker -> S3 -> webhook worker, and Flower
lists it.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import TEST_KEYS, free_port, require
from tests.workers import ROOT, wait_for

pytestmark = pytest.mark.timeout(420)
COMPOSE = ROOT / "docker-compose.yml"
FLOWER_AUTH = ("admin", "change-me-please")  # the file's default FLOWER_BASIC_AUTH
#: What a ``.env`` beside the file gives compose: the keys every process must share (the file
#: refuses to start without them) and development C2PA keys, asked for.
COMPOSE_ENV = {**os.environ, "MESSAGE_SIGNING_KEY": TEST_KEYS["BATCHRENDER_MESSAGE_SIGNING_KEY"],
               "SECRETS_KEY": TEST_KEYS["BATCHRENDER_SECRETS_KEY"], "C2PA_ALLOW_DEV_KEYS": "true"}


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR:-default}`` / ``${VAR:?error}`` / ``${VAR}`` / ``$$`` rules."""
    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if op == ":?" and not env.get(name):
            raise ValueError(f"compose refuses to start: {arg}")
        return env.get(name) or (arg if op == ":-" else "")
    return re.sub(r"\$\$|\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", sub, value)


class Stack:
    """The compose file's services as local processes."""

    def __init__(self, tmp: Path, s3_endpoint: str) -> None:
        self.tmp = tmp
        self.spec = yaml.safe_load(COMPOSE.read_text())["services"]
        self.home = tmp / "data"
        self.home.mkdir()
        self.ports = {"redis": {6379: free_port()}, "api": {8000: free_port()}, "flower": {5555: free_port()},
                      "render-worker-cpu": {9808: free_port()}}
        api = f"http://127.0.0.1:{self.ports['api'][8000]}"
        self.urls = {"api": api, "flower": f"http://127.0.0.1:{self.ports['flower'][5555]}"}
        # What the container network resolves, mapped to loopback.
        self.hosts = {"redis:6379": f"127.0.0.1:{self.ports['redis'][6379]}", "http://minio:9000": s3_endpoint,
                      "http://localhost:9000": s3_endpoint, "http://localhost:8000": api}
        self.procs: dict[str, subprocess.Popen] = {}

    def rewrite(self, service: str, value: str) -> str:
        for old, new in self.hosts.items():
            value = value.replace(old, new)
        for inside, outside in self.ports.get(service, {}).items():
            value = re.sub(rf"(?<![\d.]){inside}(?!\d)", str(outside), value)
        value = value.replace("0.0.0.0", "127.0.0.1")
        return re.sub(r"(?<![\w.])/data\b", str(self.home), value)

    def argv(self, service: str, command: list[str]) -> list[str]:
        args = [self.rewrite(service, interpolate(str(a), COMPOSE_ENV)) for a in command]
        head = {"batchrender": [sys.executable, "-m", "producer.cli"], "celery": [sys.executable, "-m", "celery"],
                "python": [sys.executable]}.get(args[0], [args[0]])
        return head + args[1:]

    def env(self, service: str) -> dict[str, str]:
        env = {k: self.rewrite(service, interpolate(str(v), COMPOSE_ENV))
               for k, v in (self.spec[service].get("environment") or {}).items()}
        # Test-only: the SSRF guard must let the webhook reach the loopback receiver.
        return {**os.environ, **env, "BATCHRENDER_WEBHOOK_ALLOW_HOSTS": "127.0.0.1", "HOSTNAME": socket.gethostname()}

    def start(self, service: str, *extra: str) -> subprocess.Popen:
        log = open(self.tmp / f"{service}.log", "ab")
        proc = subprocess.Popen(self.argv(service, self.spec[service]["command"]) + list(extra), env=self.env(service),
                                cwd=self.tmp, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[service] = proc
        return proc

    def run(self, service: str, timeout: float = 180) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(service, self.spec[service]["command"]), env=self.env(service), cwd=self.tmp,
                              capture_output=True, text=True, timeout=timeout)

    def healthy(self, service: str) -> bool:
        test = self.spec[service]["healthcheck"]["test"]
        if test[0] == "CMD-SHELL":
            cmd = ["sh", "-c", self.rewrite(service, interpolate(test[1], COMPOSE_ENV))
                   .replace("celery ", f"{sys.executable} -m celery ")]
        else:
            cmd = self.argv(service, test[1:])
        if service == "redis":
            cmd = [c if c != "6379" else str(self.ports["redis"][6379]) for c in cmd]
        out = subprocess.run(cmd, env=self.env(service), cwd=ROOT, capture_output=True, timeout=60)
        return out.returncode == 0

    def log(self, service: str) -> str:
        path = self.tmp / f"{service}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def stop(self) -> None:
        for name, proc in reversed(list(self.procs.items())):
            if proc.poll() is None:
                os.killpg(proc.pid, 15)
        for proc in self.procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)


def test_compose_config_is_valid():
    exe = shutil.which("docker-compose")
    require(exe is not None, "docker-compose (apt-get install docker-compose)")
    out = subprocess.run([exe, "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True, timeout=60,
                         env=COMPOSE_ENV)
    assert out.returncode == 0 and not out.stderr.strip(), out.stderr
    for profile in ("cpu", "gpu"):
        out = subprocess.run([exe, "-f", str(COMPOSE), "--profile", profile, "config", "-q"], capture_output=True,
                             text=True, timeout=60, env=COMPOSE_ENV)
        assert out.returncode == 0, out.stderr
    # Without the keys every process must share, compose refuses to start, naming them.
    bare = {k: v for k, v in COMPOSE_ENV.items() if k not in ("MESSAGE_SIGNING_KEY", "SECRETS_KEY")}
    out = subprocess.run([exe, "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True, timeout=60, env=bare)
    assert out.returncode != 0 and "MESSAGE_SIGNING_KEY" in out.stderr and "batchrender keys signing-key" in out.stderr


def test_every_service_has_a_restart_policy_and_a_healthcheck():
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    assert {"redis", "minio", "storage-init", "api", "render-worker-cpu", "render-worker-gpu", "webhook-worker",
            "flower"} <= set(services)
    for name, svc in services.items():
        assert svc.get("restart"), f"{name} has no restart policy"
        if name != "storage-init":  # a one-shot: its success is what the others wait for
            assert svc.get("healthcheck"), f"{name} has no healthcheck"
    gpu = services["render-worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"] and services["render-worker-gpu"]["profiles"] == ["gpu"]


def test_the_compose_services_run_a_job_as_local_processes(tmp_path, s3_endpoint):
    require(shutil.which("redis-server") is not None, "redis-server")
    from webhooks.testing import LoopbackReceiver

    stack = Stack(tmp_path, s3_endpoint)
    try:
        stack.start("redis", "--port", str(stack.ports["redis"][6379]), "--dir", str(tmp_path), "--save", "")
        wait_for(lambda: stack.healthy("redis"), timeout=30, what="redis healthcheck", every=0.2)

        init = stack.run("storage-init")
        assert init.returncode == 0, init.stdout + init.stderr
        assert "storage ready" in init.stdout
        assert stack.run("storage-init").returncode == 0, "init must be idempotent (it runs on every start)"

        for service in ("api", "render-worker-cpu", "webhook-worker", "flower"):
            stack.start(service)
        for service in ("api", "render-worker-cpu", "webhook-worker", "flower"):
            try:
                wait_for(lambda: stack.procs[service].poll() is None and stack.healthy(service), timeout=180,
                         what=f"{service} healthcheck", every=1.0)
            except TimeoutError:
                raise AssertionError(f"{service} never became healthy:\n{stack.log(service)}") from None

        tenant = subprocess.run(stack.argv("api", ["batchrender", "tenants", "create", "alice"]), env=stack.env("api"),
                                capture_output=True, text=True, timeout=60)
        assert tenant.returncode == 0, tenant.stderr
        key = json.loads(tenant.stdout)["api_key"]
        auth = {"Authorization": f"Bearer {key}"}
        with LoopbackReceiver() as hook, httpx.Client(base_url=stack.urls["api"], timeout=30) as api:
            job = api.post("/v1/jobs", headers=auth, json={"prompt": "a red bicycle", "seed": 3, "width": 64,
                                                           "height": 64, "steps": 2, "webhook": hook.url})
            assert job.status_code in (200, 201, 202), job.text
            job_id = job.json()["id"]
            done = wait_for(lambda: (lambda j: j if j["status"] not in ("queued", "running") else None)(
                api.get(f"/v1/jobs/{job_id}", headers=auth).json()), timeout=180, what="the job", every=0.3)
            assert done["status"] == "succeeded", done
            out = done["outputs"][0]
            png = api.get(out["url"], headers=auth, follow_redirects=True)
            assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"
            # The keyless link is presigned for the public S3 endpoint (moto here), and works.
            assert out["download_url"].startswith(s3_endpoint)
            assert httpx.get(out["download_url"], timeout=30).content == png.content
            events = wait_for(lambda: [json.loads(r.body)["type"] for r in hook.received
                                       if json.loads(r.body)["type"] == "job.succeeded"], timeout=60,
                              what="job.succeeded from the webhook worker", every=0.3)
            assert events == ["job.succeeded"]

        # Flower (basic auth from the file) lists the job as a succeeded task.
        flower = httpx.Client(base_url=stack.urls["flower"], auth=FLOWER_AUTH, timeout=10)
        assert httpx.get(f"{stack.urls['flower']}/tasks", timeout=10).status_code == 401, "basic auth is on"
        form = {"draw": "1", "start": "0", "length": "10", "search[value]": "state:SUCCESS",
                "order[0][column]": "0", "order[0][dir]": "desc", "columns[0][data]": "received"}
        rows = wait_for(lambda: [r for r in flower.post("/tasks/datatable", data=form).json()["data"]
                                 if r["uuid"] == job_id], timeout=60, what="Flower to list the job", every=0.5)
        assert rows[0]["state"] == "SUCCESS"
        # The render worker's metrics endpoint counts it.
        metrics = httpx.get(f"http://127.0.0.1:{stack.ports['render-worker-cpu'][9808]}/metrics", timeout=10).text
        assert 'batchrender_jobs_finished_total{model="tiny",status="succeeded"} 1.0' in metrics
    finally:
        stack.stop()


class _RefusingS3(BaseHTTPRequestHandler):
    """An S3 endpoint that refuses every request's credentials (MinIO after a password change)."""

    def _refuse(self) -> None:
        body = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>InvalidAccessKeyId</Code>'
                b"<Message>The Access Key Id you provided does not exist in our records.</Message></Error>")
        self.send_response(403)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_PUT = do_GET = do_HEAD = do_DELETE = do_POST = _refuse

    def log_message(self, *args) -> None:
        pass


def test_storage_init_stops_at_once_when_the_credentials_are_refused(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RefusingS3)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = {**os.environ, "BATCHRENDER_HOME": str(tmp_path), "BATCHRENDER_STORAGE_URL": "s3://renders/outputs",
               "BATCHRENDER_S3_ENDPOINT_URL": f"http://127.0.0.1:{server.server_address[1]}",
               "BATCHRENDER_S3_PATH_STYLE": "true", "BATCHRENDER_S3_ACCESS_KEY_ID": "old",
               "BATCHRENDER_S3_SECRET_ACCESS_KEY": "old-password"}
        out = subprocess.run([sys.executable, "-m", "producer.cli", "storage", "init", "--wait", "300"], env=env,
                             cwd=ROOT, capture_output=True, text=True, timeout=120)
    finally:
        server.shutdown()
    # Exit 1 at once (not after --wait 300, and never an endless loop), naming what to fix.
    assert out.returncode == 1, out.stdout + out.stderr
    assert "InvalidAccessKeyId" in out.stderr and "MINIO_ROOT_PASSWORD" in out.stderr
