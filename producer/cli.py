"""The ``batchrender`` command line."""
from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import click

from jobs.errors import BatchIncomplete, BatchRenderError, InvalidRequest, TransientError
from jobs.settings import Settings, redact_url

_SIZE = re.compile(r"^(\d+)x(\d+)$")


def _settings() -> Settings:
    return Settings.from_env()


def _client():
    from producer.client import Client

    settings = _settings()
    if settings.redis_url is None:
        # Jobs, indexes and the broker all live under the home: say which one is used.
        click.echo(f"home: {settings.home} (embedded broker)", err=True)
    return Client(settings)


def _tenants():
    from producer.tenants import Tenants

    client = _client()
    return Tenants(client.store.r, client.settings)


def _echo_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


def _size(value: str | None) -> dict[str, Any]:
    if not value:
        return {}
    m = _SIZE.match(value)
    if m:
        return {"width": int(m.group(1)), "height": int(m.group(2))}
    return {"aspect_ratio": value}


#: Exit code for "try again later" (sysexits EX_TEMPFAIL): Redis or the broker is unavailable.
EXIT_TEMPFAIL = 75


class Main(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except BatchIncomplete as e:
            # Scripts must learn exactly which jobs of the batch were queued: JSON on stdout.
            _echo_json({"batch_id": e.batch_id, "queued": e.queued, "not_queued": e.not_queued})
            click.echo(f"error: {e.message}", err=True)
            sys.exit(EXIT_TEMPFAIL)
        except TransientError as e:
            click.echo(f"error: {e.message}", err=True)
            sys.exit(EXIT_TEMPFAIL)
        except BatchRenderError as e:
            click.echo(f"error: {e.message}", err=True)
            sys.exit(2)


@click.group(cls=Main)
@click.version_option(package_name="batchrender")
def cli() -> None:
    """Bulk image rendering: Celery + diffusers, moderation, C2PA, signed webhooks."""


# -- submitting -----------------------------------------------------------------------------------
@cli.command()
@click.argument("prompt", required=False)
@click.option("--file", "file_", type=click.Path(exists=True, dir_okay=False),
              help="JSONL file, one request per line (a bad line is reported and skipped).")
@click.option("--n", "num_images", type=int, default=None, help="Images per prompt.")
@click.option("--size", help="WIDTHxHEIGHT (multiples of 8) or an aspect ratio like 16:9.")
@click.option("--seed", type=int)
@click.option("--model")
@click.option("--format", "output_format", type=click.Choice(["png", "jpeg", "webp"]))
@click.option("--quality", type=int)
@click.option("--steps", type=int)
@click.option("--negative", "negative_prompt")
@click.option("--background", type=click.Choice(["transparent", "opaque", "auto"]),
              help="transparent: RGBA PNG/WebP with the background cut out.")
@click.option("--palette", help="Comma-separated hex colours, e.g. '#1A73E8,#FBBC05'.")
@click.option("--palette-strict", is_flag=True, default=None,
              help="Render up to --palette-tries seeds per image and keep the one closest to the palette.")
@click.option("--palette-tries", type=int)
@click.option("--custom-id")
@click.option("--webhook", help="URL that receives signed webhook events.")
@click.option("--priority", type=click.Choice(["interactive", "normal", "bulk"]),
              help="Order among your own queued jobs (default normal; a --file batch: bulk).")
@click.option("--deliver-by", help="Deadline, RFC 3339 (2026-12-05T18:00:00Z) or Unix seconds: refused "
                                   "with the earliest feasible time when it cannot be met.")
@click.option("--wait", "wait_", is_flag=True, help="Wait for the job(s) with a progress bar.")
def submit(prompt, file_, wait_, **opts) -> None:
    """Queue one prompt, or every line of --file as one batch. Prints the job or batch id."""
    fields = {k: v for k, v in opts.items() if v is not None and k != "size"}
    fields.update(_size(opts.get("size")))
    if opts.get("palette"):
        fields["palette"] = [c.strip() for c in opts["palette"].split(",") if c.strip()]
    client = _client()
    if file_:
        from producer.submit import parse_batch

        items, errors, _ = parse_batch(Path(file_).read_bytes(), "application/jsonl")
        for e in errors:
            click.echo(f"{file_}:{e['line']}: not valid JSON: {e['message']}", err=True)
        bad = len(errors)
        requests: list[dict[str, Any]] = []
        line_of: list[int] = []
        for lineno, item in items:
            if not isinstance(item, dict):
                click.echo(f"{file_}:{lineno}: not valid JSON: each line must be a JSON object", err=True)
                bad += 1
                continue
            requests.append({**fields, **item})
            line_of.append(lineno)
        if len(requests) > client.settings.max_batch_jobs:
            raise InvalidRequest(f"{file_} holds {len(requests)} requests; a batch holds at most "
                                 f"{client.settings.max_batch_jobs} (BATCHRENDER_MAX_BATCH_JOBS): split the file")
        sub = client.submit_batch(requests)
        for index, err in sub.errors:
            click.echo(f"{file_}:{line_of[index]}: {err.message}", err=True)
        bad += len(sub.errors)
        click.echo(f"batch {sub.batch_id}: {len(sub.job_ids)} queued, {bad} rejected", err=True)
        click.echo(sub.batch_id)
        code = _wait_batch(client, sub.batch_id, None) if wait_ else 0
        # A rejected line is bad input (2) even when the rest ran; else 1 when a job did not succeed.
        sys.exit(2 if bad else code)
    if not prompt:
        raise click.UsageError("give a PROMPT or --file prompts.jsonl")
    job_id = client.submit({"prompt": prompt, **fields})
    click.echo(job_id)
    if wait_:
        sys.exit(_wait_job(client, job_id, None))


# -- watching -------------------------------------------------------------------------------------
@cli.command()
@click.argument("id_")
def status(id_: str) -> None:
    """Show a job (job_...) or a batch (bat_...)."""
    client = _client()
    if id_.startswith("bat_"):
        _echo_json(client.batch(id_))
    else:
        _echo_json(client.view(client.status(id_)))


def _wait_job(client, job_id: str, timeout: float | None) -> int:
    from tqdm import tqdm

    rec = client.status(job_id)
    total = int(rec.request.get("steps") or 1)
    with tqdm(total=total, desc=job_id[:12], unit="step", file=sys.stderr) as bar:
        def update(r):
            step = total if r.status.terminal else int((r.progress or {}).get("step", 0))
            bar.update(step - bar.n)
            bar.set_postfix_str(r.status.value)
        rec = client.wait(job_id, timeout, on_update=update)
    _echo_json(client.view(rec))
    return 0 if rec.status.value == "succeeded" else 1


def _wait_batch(client, batch_id: str, timeout: float | None) -> int:
    from tqdm import tqdm

    ids = client.store.batch_job_ids(batch_id)
    _, total = client.progress_steps(ids)
    with tqdm(total=total, desc=batch_id[:12], unit="step", file=sys.stderr) as bar:
        def update(info):
            done, _ = client.progress_steps(ids)
            bar.update(done - bar.n)
            bar.set_postfix_str(f"{info['done']}/{info['total']} jobs")
        info = client.wait_batch(batch_id, timeout, on_update=update)
    _echo_json(info)
    return 0 if info["counts"]["succeeded"] == info["total"] else 1


@cli.command()
@click.argument("id_")
@click.option("--timeout", type=float, default=None, help="Seconds; the job keeps running after it.")
def wait(id_: str, timeout: float | None) -> None:
    """Wait for a job or batch to end, with a progress bar. Exit 0 when everything succeeded."""
    client = _client()
    try:
        code = _wait_batch(client, id_, timeout) if id_.startswith("bat_") else _wait_job(client, id_, timeout)
    except TimeoutError as e:
        click.echo(f"timeout: {e}", err=True)
        sys.exit(3)
    sys.exit(code)


@cli.command()
@click.argument("id_")
def cancel(id_: str) -> None:
    """Cancel a queued or running job, or every unfinished job of a batch."""
    client = _client()
    if id_.startswith("bat_"):
        _echo_json(client.cancel_batch(id_))
    else:
        _echo_json(client.view(client.cancel(id_)))


# -- refinement -------------------------------------------------------------------------------------
@cli.command()
@click.argument("job_id")
@click.argument("prompt")
@click.option("--image-index", type=int, default=0, show_default=True, help="Which of the job's images to refine.")
@click.option("--strength", type=float, help="How far to move from the image, (0-1].")
@click.option("--steps", type=int, help="The parent's when unset.")
@click.option("--custom-id")
@click.option("--webhook", help="URL that receives signed webhook events.")
@click.option("--wait", "wait_", is_flag=True, help="Wait for the new job with a progress bar.")
def refine(job_id: str, prompt: str, wait_: bool, **opts) -> None:
    """Refine an image of a succeeded JOB_ID with a new PROMPT: a new job, image-to-image from it
    with its seed, model and size. Prints the new job's id; its C2PA manifest lists the parent
    image as an ingredient. Exit 1 when the new job did not succeed (a blocked prompt)."""
    from producer.refine import ANY_TENANT, refine as refine_job

    client = _client()
    rec = refine_job(client, job_id, {"prompt": prompt, **{k: v for k, v in opts.items() if v is not None}},
                     tenant=ANY_TENANT)
    click.echo(rec.job_id)
    if rec.status.terminal and rec.status.value != "succeeded":
        click.echo(f"{rec.status.value}: {(rec.error or {}).get('message', '')}", err=True)
        sys.exit(1)
    if wait_:
        sys.exit(_wait_job(client, rec.job_id, None))


@cli.command()
@click.argument("job_id")
def lineage(job_id: str) -> None:
    """The chain of refinements from its root (turn 0) to JOB_ID: id, status, turn, prompt, output URL."""
    from producer.refine import ANY_TENANT, lineage as chain

    _echo_json(chain(_client(), job_id, tenant=ANY_TENANT))


@cli.command()
@click.argument("id_")
@click.option("--download", "download_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Also save every image into this directory as CUSTOM_ID-INDEX.EXT (or JOB_ID-INDEX.EXT).")
def results(id_: str, download_dir: Path | None) -> None:
    """Print results as JSONL, one line per image (for a batch: every job's images), with fresh links."""
    client = _client()
    records = client.batch_results(id_) if id_.startswith("bat_") else [client.status(id_)]
    if download_dir:
        download_dir.mkdir(parents=True, exist_ok=True)
    for rec in records:
        for line in manifest_lines(client, rec):
            if download_dir and line.get("key"):
                path = download_dir / f"{rec.custom_id or rec.job_id}-{line['index']}.{line['format']}"
                path.write_bytes(client.storage.get(line["key"]))
                line["file"] = str(path)
            click.echo(json.dumps(line))


def manifest_lines(client, rec) -> list[dict[str, Any]]:
    """One manifest line per image of a finished job (or one line saying why it has none)."""
    base = {"job_id": rec.job_id, "batch_id": rec.batch_id, "custom_id": rec.custom_id,
            "status": rec.status.value, "prompt": rec.request.get("prompt")}
    if not rec.result or not rec.result.images:
        return [{**base, "error": rec.error}]
    timings = rec.result.timings.model_dump()
    lines = []
    for img in rec.result.images:
        line = {**base, **client.links.view(rec.job_id, img, stable=rec.tenant is not None), "timings": timings}
        local = client.storage.url_for(img.key)
        if "://" not in local:
            line["path"] = local  # local storage: the file itself
        lines.append(line)
    return lines


_AGE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")


def _age_s(value: str) -> float:
    m = _AGE.match(value.strip())
    if not m:
        raise click.BadParameter(f"{value!r}: give a number and a unit, like 30d, 12h, 90m or 45s")
    return float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


@cli.command()
@click.argument("job_id")
def delete(job_id: str) -> None:
    """Delete an ended job: its images, thumbnails, provenance entries and record."""
    _client().delete(job_id)
    click.echo(f"deleted {job_id}")


@cli.command()
@click.option("--older-than", "older_than", default=None,
              help="Age like 30d, 12h, 90m (default: BATCHRENDER_RETENTION_S, 30 days).")
def prune(older_than: str | None) -> None:
    """Delete ended jobs (outputs, provenance, records), batches and files older than the retention time."""
    client = _client()
    counts = client.prune(_age_s(older_than) if older_than else None)
    _echo_json(counts)


@cli.command()
@click.argument("batch_id")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="HTML file to write (self-contained: thumbnails embedded).")
def gallery(batch_id: str, out: Path) -> None:
    """Write a batch's contact sheet: thumbnails, prompt, seed, size, flags, C2PA state."""
    from producer.gallery import local_sheet

    out.write_text(local_sheet(_client(), batch_id), encoding="utf-8")
    click.echo(str(out))


# -- running workers ------------------------------------------------------------------------------
@cli.command()
@click.option("--models", default="tiny", show_default=True, help="Comma-separated models to serve.")
@click.option("--webhooks/--no-webhooks", default=True, show_default=True,
              help="Also start a webhook worker process (threads; BATCHRENDER_WEBHOOK_THREADS) beside the render one.")
@click.option("--name", default=None, help="Worker node name.")
@click.option("--loglevel", default="INFO")
@click.option("--metrics-port", type=int, default=None, envvar="BATCHRENDER_WORKER_METRICS_PORT",
              help="Serve the processes' Prometheus metrics (summed) on this port.")
@click.option("--metrics-address", default="127.0.0.1", show_default=True, envvar="BATCHRENDER_WORKER_METRICS_ADDRESS")
def worker(models: str, webhooks: bool, name: str | None, loglevel: str, metrics_port: int | None,
           metrics_address: str) -> None:
    """Start the workers of one host: a render worker per GPU (solo pool, so CUDA never lives in
    a forked child) and, unless --no-webhooks, a webhook worker in its own process, so a slow
    receiver never delays a render and a render never delays a delivery. Signals reach every
    process; when one exits the others are stopped and its exit code is this command's."""
    import signal
    import subprocess

    from jobs.embedded import redis_url_for
    from jobs.names import WEBHOOK_QUEUE, render_queue

    settings = _settings()
    from jobs.registry import Registry
    from storage.shared_check import require_shared_storage

    require_shared_storage(settings)  # exit 2 naming the fix, before any process starts
    from jobs.signing import require_shared_keys

    require_shared_keys(settings)  # a shared Redis without shared keys: exit 2 naming them
    names = [m.strip() for m in models.split(",") if m.strip()]
    registry = Registry(settings)
    for model in names:
        registry.get(model)  # UnknownModel (exit 2, naming the registered ones) before anything starts
    redis_url_for(settings, start=True)
    queues = ",".join(render_queue(m) for m in names)
    base = [sys.executable, "-m", "celery", "--prefetch-multiplier", "1", "--without-gossip", "--without-mingle",
            "-l", loglevel]
    render = [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-P", "solo", "-Q", queues, *base[3:]]
    commands = []
    gpus = _gpu_count()
    for i in range(max(1, gpus)):
        node = name or f"render-{os.getpid()}" + (f"-gpu{i}" if gpus > 1 else "")
        env = {**os.environ, **({"CUDA_VISIBLE_DEVICES": str(i)} if gpus > 1 else {})}
        commands.append((render + ["-n", f"{node}@%h"], env))
    if webhooks:
        commands.append(([sys.executable, "-m", "celery", "-A", "webhooks.app:app", "worker", "-P", "threads",
                          "-c", str(settings.webhook_threads), "-Q", WEBHOOK_QUEUE, *base[3:],
                          "-n", f"webhooks-{os.getpid()}@%h"], dict(os.environ)))
    metrics_dir = None
    if metrics_port is not None:
        metrics_dir = _serve_worker_metrics(settings, metrics_address, metrics_port, renderers=max(1, gpus))
        for _argv, env in commands:
            env["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    procs = [subprocess.Popen(argv, env=env) for argv, env in commands]

    def forward(signum, _frame):
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    code = None
    while code is None:
        for p in procs:
            if p.poll() is not None:
                code = p.returncode
                break
        else:
            time.sleep(0.5)
    forward(signal.SIGTERM, None)
    for p in procs:
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            p.kill()
    if metrics_dir:
        import shutil

        shutil.rmtree(metrics_dir, ignore_errors=True)
    sys.exit(code)


def _serve_worker_metrics(settings, address: str, port: int, renderers: int) -> str:
    """Start the metrics endpoint of ``batchrender worker`` in this (parent) process: the sum of
    its children's metrics (prometheus-client multiprocess mode, a fresh directory per start, so
    counters restart at zero like any process's), GPU busy ratio and queue depth."""
    import tempfile

    from prometheus_client import CollectorRegistry, start_http_server

    from jobs import redisconn
    from jobs.embedded import redis_url_for
    from jobs.metrics import BusyRatio, combined, multiprocess_registry, queue_registry
    from jobs.registry import Registry

    directory = tempfile.mkdtemp(prefix="batchrender-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    summed = multiprocess_registry()
    ratio = CollectorRegistry(auto_describe=True)
    ratio.register(BusyRatio(summed, renderers))
    queues = queue_registry(redisconn.client(redis_url_for(settings, start=False), settings, decode_responses=False),
                            Registry(settings))
    start_http_server(port, addr=address, registry=combined(summed, ratio, queues))
    click.echo(f"metrics: http://{address}:{port}/metrics", err=True)
    return directory


@cli.command()
@click.option("--address", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=5555, show_default=True, type=int)
@click.option("--url-prefix", default="", help="Serve under this path (behind a reverse proxy).")
def flower(address: str, port: int, url_prefix: str) -> None:
    """Start Flower on the job broker: every job shows as its own task (batched ones included).

    Its state (the tasks it has seen) is kept in ``home/flower.db`` across restarts. Basic auth
    comes from BATCHRENDER_FLOWER_BASIC_AUTH (user:password), passed through the environment,
    never the command line; without it Flower may only listen on loopback."""
    import ipaddress

    from jobs.embedded import redis_url_for

    settings = _settings()
    auth = settings.flower_basic_auth.get_secret_value() if settings.flower_basic_auth else ""
    try:
        local = ipaddress.ip_address(address).is_loopback
    except ValueError:
        local = address == "localhost"
    if not auth and not local:
        raise click.UsageError(f"Flower on {address} needs BATCHRENDER_FLOWER_BASIC_AUTH (user:password): "
                               "without it anyone who reaches the port can revoke jobs. Set it, or use "
                               "--address 127.0.0.1.")
    redis_url_for(settings, start=True)
    settings.home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "FLOWER_PERSISTENT": "true", "FLOWER_DB": str(settings.home.resolve() / "flower.db"),
           "FLOWER_STATE_SAVE_INTERVAL": "60000",
           "FLOWER_TASKS_COLUMNS": "name,uuid,state,args,result,received,started,runtime,worker"}
    if auth:
        env["FLOWER_BASIC_AUTH"] = auth
        env["FLOWER_UNAUTHENTICATED_API"] = "false"
    argv = [sys.executable, "-m", "celery", "-A", "jobs.monitor:app", "flower", f"--address={address}",
            f"--port={port}", *([f"--url_prefix={url_prefix}"] if url_prefix else [])]
    click.echo(f"flower: http://{address}:{port}/{url_prefix} (state in {env['FLOWER_DB']})", err=True)
    os.execve(sys.executable, argv, env)


def _gpu_count() -> int:
    # Ask nvidia-smi rather than torch: initialising CUDA here would poison the children.
    import shutil
    import subprocess

    if os.environ.get("CUDA_VISIBLE_DEVICES") is not None or not shutil.which("nvidia-smi"):
        return 1
    out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout
    return max(1, len([line for line in out.splitlines() if line.startswith("GPU ")]))


# -- models ---------------------------------------------------------------------------------------
@cli.group()
def models() -> None:
    """The model registry."""


@models.command("list")
def models_list() -> None:
    from jobs.registry import Registry

    for spec in Registry(_settings()).all().values():
        click.echo(json.dumps(spec.model_dump()))


@models.command("init-tiny")
def models_init_tiny() -> None:
    """Write the tiny random-weight model (its images are noise) and register it as `tiny`."""
    from jobs.registry import Registry
    from worker.tiny import build_tiny_pipeline

    spec = Registry(_settings()).get("tiny")
    path = build_tiny_pipeline(Path(spec.source))
    click.echo(f"tiny model written to {path} (random weights: it renders noise)")


@models.command("add")
@click.argument("name")
@click.argument("source")
@click.option("--dtype", default="auto", type=click.Choice(["auto", "float32", "float16", "bfloat16"]))
@click.option("--scheduler", default=None, help="diffusers scheduler class, e.g. EulerDiscreteScheduler")
@click.option("--family", type=click.Choice(["auto", "sd15", "sdxl", "sd3", "flux"]), default="auto",
              help="Model family; auto reads model_index.json of a local directory (hub ids: sd15 unless given).")
@click.option("--steps", "default_steps", type=int, default=None, help="Default steps (the family's when unset).")
@click.option("--guidance", "default_guidance", type=float, default=None, help="Default guidance (the family's).")
@click.option("--base-size", type=int, default=None, help="Training resolution (the family's: 512 SD 1.5, 1024 others).")
@click.option("--device", default=None)
def models_add(name: str, source: str, family: str, **opts) -> None:
    """Register a model: a local diffusers directory (save_pretrained) or a hub id."""
    from pydantic import ValidationError

    from jobs.families import family_of_pipeline
    from jobs.registry import ModelSpec, Registry, has_ip_adapter

    path = Path(source).expanduser()
    if path.exists():
        if not (path / "model_index.json").is_file():
            raise InvalidRequest(f"{source} has no model_index.json: give a directory written by a diffusers "
                                 "pipeline's save_pretrained (or a hub id like org/name)")
        source = str(path.resolve())
        cls = json.loads((path / "model_index.json").read_text()).get("_class_name", "")
        found = family_of_pipeline(cls)
        if found is None:
            raise InvalidRequest(f"{source} holds a {cls or 'pipeline without _class_name'}; supported: "
                                 "StableDiffusionPipeline, StableDiffusionXLPipeline, StableDiffusion3Pipeline, "
                                 "FluxPipeline")
        if family not in ("auto", found):
            raise InvalidRequest(f"--family {family} does not match {source}: it holds a {cls} ({found})")
        family = found
        opts["ip_adapter"] = has_ip_adapter(path)
    elif source.startswith(("/", ".", "~")) or not re.fullmatch(r"[\w.-]+/[\w.-]+", source):
        raise InvalidRequest(f"{source}: no such directory (and not a hub id like org/name)")
    try:
        spec = ModelSpec(name=name, source=source, family="sd15" if family == "auto" else family, **opts)
    except ValidationError as e:
        raise InvalidRequest("; ".join(x["msg"].removeprefix("Value error, ") for x in e.errors())) from None
    Registry(_settings()).register(spec)
    click.echo(f"registered {name}: {spec.model_dump_json()}")


# -- tenants and the HTTP API ---------------------------------------------------------------------
@cli.group()
def tenants() -> None:
    """Tenants of the HTTP API and their API keys."""


@tenants.command("create")
@click.argument("name")
def tenants_create(name: str) -> None:
    """Create a tenant; prints its API key and webhook secret ONCE (only their hashes/copies are kept)."""
    t = _tenants().create(name)
    click.echo(json.dumps({"tenant_id": t.tenant_id, "name": t.name, "api_key": t.api_key,
                           "webhook_secret": t.webhook_secret}))
    click.echo("store the API key now: it cannot be shown again", err=True)


@tenants.command("add-key")
@click.argument("tenant_id")
def tenants_add_key(tenant_id: str) -> None:
    """Another API key for a tenant (rotation); printed once."""
    click.echo(_tenants().add_key(tenant_id))


@tenants.command("rotate-webhook-secret")
@click.argument("tenant_id")
def tenants_rotate(tenant_id: str) -> None:
    """A new webhook secret; the previous one keeps signing too until the next rotation."""
    click.echo(_tenants().rotate_webhook_secret(tenant_id))


@tenants.command("revoke-key")
@click.argument("api_key")
def tenants_revoke_key(api_key: str) -> None:
    """Stop accepting one API key (the tenant's other keys keep working)."""
    if not _tenants().revoke_key(api_key):
        click.echo("error: no such API key", err=True)
        sys.exit(2)
    click.echo("revoked")


@tenants.command("set-webhook")
@click.argument("tenant_id")
@click.argument("url", required=False)
def tenants_set_webhook(tenant_id: str, url: str | None) -> None:
    """The tenant's default webhook (batch.completed of batches made OpenAI's way); no URL removes it."""
    try:
        _tenants().set_webhook(tenant_id, url)
    except KeyError:
        click.echo(f"error: no tenant {tenant_id}", err=True)
        sys.exit(2)
    click.echo(f"{tenant_id} webhook: {url or 'none'}")


@tenants.command("set-weight")
@click.argument("tenant_id")
@click.argument("weight")
def tenants_set_weight(tenant_id: str, weight: str) -> None:
    """The tenant's share of render time against other tenants with work queued (default 1: equal
    shares; 2 gets twice the render time of a tenant with 1). Takes effect at the next dispatch."""
    try:
        w = _tenants().set_weight(tenant_id, weight)
    except ValueError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except KeyError:
        click.echo(f"error: no tenant {tenant_id}", err=True)
        sys.exit(2)
    click.echo(f"{tenant_id} weight: {w:g}")


@tenants.command("disable")
@click.argument("tenant_id")
@click.option("--enable", is_flag=True, help="Undo: accept the tenant's keys and render its jobs again.")
def tenants_disable(tenant_id: str, enable: bool) -> None:
    """Refuse every key of a tenant and stop rendering its queued jobs (they fail as refused)."""
    try:
        _tenants().set_disabled(tenant_id, not enable)
    except KeyError:
        click.echo(f"error: no tenant {tenant_id}", err=True)
        sys.exit(2)
    click.echo(f"{tenant_id} {'enabled' if enable else 'disabled'}")


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
def api(host: str, port: int) -> None:
    """Serve the HTTP API (OpenAPI docs at /docs)."""
    import uvicorn

    from producer.api import create_app

    # Slow and greedy clients: headers must arrive within BATCHRENDER_API_HEADER_TIMEOUT_S (10 s,
    # producer/api/slow_headers.py), a body within 30 s (producer/api/limits.py); a response the
    # client stops reading is dropped after BATCHRENDER_API_WRITE_TIMEOUT_S; idle keep-alive
    # connections close after 5 s; at most BATCHRENDER_API_MAX_CONNECTIONS at once, and
    # _MAX_CONNECTIONS_PER_CLIENT from one address (producer/api/connections.py).
    from jobs.logs import configure_logging
    from producer.api.connections import server_options
    from storage.shared_check import require_shared_storage

    settings = _settings()
    require_shared_storage(settings)  # local storage with a shared Redis: exit 2 naming the fix
    configure_logging(settings.log_format)
    from jobs import fleet
    from jobs.signing import require_shared_keys

    require_shared_keys(settings)  # a shared Redis without shared keys: exit 2 naming them
    app = create_app(settings)
    # The API's key fingerprints in the fleet registry: a worker with other keys refuses to start,
    # and /readyz names whoever differs (jobs/fleet.py).
    r, member = app.state.client.store.r, fleet.Member("api")
    fleet.enter(lambda: r, member, fleet.local_fingerprints(settings), refuse=False)
    # log_config=None: uvicorn's loggers propagate to the root logger and its format (text/json).
    uvicorn.run(app, host=host, port=port, log_level="info", log_config=None, **server_options(settings))
    try:
        fleet.leave(r, member)
    except Exception:  # noqa: BLE001 - the entry ages out
        pass


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON line per check instead of the table.")
@click.option("--role", type=click.Choice(["all", "api", "worker"]), default="all", show_default=True,
              help="What this host runs: api (no model files or signer checked), worker, or all.")
def doctor(as_json: bool, role: str) -> None:
    """Check everything a deployment needs (Redis, storage, signer, models, keys, workers), with
    the fix for each failure. Exit 0 when nothing failed (warnings allowed), 1 otherwise."""
    from producer.doctor import FAIL, diagnose, table

    findings = diagnose(_settings(), role=role)
    if as_json:
        for f in findings:
            click.echo(json.dumps(f.__dict__))
    else:
        click.echo(table(findings))
    sys.exit(1 if any(f.state == FAIL for f in findings) else 0)


@cli.group()
def embedded() -> None:
    """The private redis-server used when BATCHRENDER_REDIS_URL is unset."""


@embedded.command("status")
def embedded_status() -> None:
    """Say which home's embedded broker this is, where, and whether it runs (exit 1 when not)."""
    from jobs.embedded import _alive, _dir

    settings = _settings()
    if settings.redis_url:
        click.echo(f"BATCHRENDER_REDIS_URL is set ({redact_url(settings.redis_url)}): no embedded broker is used")
        return
    d = _dir(settings)
    port_file = d / "port"
    port = int(port_file.read_text().strip() or 0) if port_file.exists() else None
    running = port is not None and _alive(port)
    click.echo(f"home {settings.home.resolve()}: embedded redis-server "
               f"{'running on 127.0.0.1:' + str(port) if running else 'not running'} (data {d})")
    sys.exit(0 if running else 1)


@embedded.command("stop")
def embedded_stop() -> None:
    """Stop this home's embedded redis-server (it outlives the worker and the commands that start it;
    the demo stops the one it started)."""
    from jobs.embedded import stop

    settings = _settings()
    stop(settings)
    click.echo(f"home {settings.home.resolve()}: embedded redis-server stopped")


# -- keys -----------------------------------------------------------------------------------------
@cli.group()
def keys() -> None:
    """Keys: development C2PA keys, the message-signing key, the secrets key."""


@keys.command("init")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
def keys_init(directory: Path) -> None:
    """Create a DEVELOPMENT CA and signing certificate that c2pa accepts. Not for production."""
    from provenance.devkeys import DEV_WARNING, init_dev_keys

    paths = init_dev_keys(directory)
    click.secho("!" * 78 + "\n" + DEV_WARNING + "\n" + "!" * 78, fg="red", bold=True, err=True)
    for name in ("ca_cert", "cert_chain", "private_key"):
        click.echo(f"{name}: {getattr(paths, name)}")
    click.echo(f"use: BATCHRENDER_C2PA_CERT_CHAIN={paths.cert_chain} BATCHRENDER_C2PA_PRIVATE_KEY={paths.private_key}")


@keys.command("signing-key")
def keys_signing_key() -> None:
    """Print a new key for BATCHRENDER_MESSAGE_SIGNING_KEY (signs render messages; the same on every host)."""
    import secrets

    click.echo(secrets.token_urlsafe(32))


@keys.command("secrets-key")
def keys_secrets_key() -> None:
    """Print a new key for BATCHRENDER_SECRETS_KEY (encrypts webhook secrets at rest)."""
    from cryptography.fernet import Fernet

    click.echo(Fernet.generate_key().decode())


def _attach_groups() -> None:
    from producer.campaign_cli import campaign
    from producer.demo import demo
    from provenance.cli import provenance, verify
    from safety.cli import moderation
    from storage.cli import storage
    from webhooks.cli import webhooks

    for command in (campaign, demo, verify, provenance, moderation, storage, webhooks):
        cli.add_command(command)


_attach_groups()


def main() -> None:
    cli(prog_name="batchrender")


if __name__ == "__main__":
    main()
