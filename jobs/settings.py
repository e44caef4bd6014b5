"""One frozen ``Settings`` object, built from the environment in one place and passed explicitly.

Every field ``foo_bar`` is read from ``BATCHRENDER_FOO_BAR``. Lists are comma-separated.
Secrets are ``SecretStr`` so they never show in ``repr`` or logs.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal, Mapping

from pydantic import (BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_serializer, field_validator,
                      model_validator)

from jobs.errors import ConfigurationError

ENV_PREFIX = "BATCHRENDER_"
#: A webhook attempt's claim lasts the HTTP timeout plus this margin; another worker may take the
#: attempt over only after it (a worker that died mid-attempt leaves its claim behind).
WEBHOOK_CLAIM_SLACK_S = 30.0


def default_home(environ: Mapping[str, str] | None = None) -> Path:
    """The user's data directory for batchrender (absolute)."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_DATA_HOME") or str(Path(env.get("HOME") or Path.home()) / ".local" / "share")
    return Path(base).expanduser().absolute() / "batchrender"


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for logs, reprs and messages): the userinfo's
    password, and query parameters that carry one (``redis://host/0?password=...``, ``?token=...``)."""
    url = re.sub(r"(://[^/@:]*:)[^/@]*@", r"\1***@", url)
    return re.sub(r"([?&](?:password|passwd|pass|secret|token|key|access_token|api_key)=)[^&#;]*", r"\1***",
                  url, flags=re.IGNORECASE)


#: Settings that are URLs: they may carry a password, so dumps show them through ``redact_url``.
URL_FIELDS = ("redis_url", "storage_url", "s3_endpoint_url", "s3_public_endpoint_url", "public_base_url",
              "c2pa_tsa_url")


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    # -- where things live ---------------------------------------------------------------------
    #: Working directory for the registry, the tiny model, the embedded broker, indexes and logs.
    #: Always absolute; default the user's data directory (``$XDG_DATA_HOME/batchrender``, else
    #: ``~/.local/share/batchrender``), so every command finds the same one wherever it runs.
    home: Path = Field(default_factory=lambda: default_home())
    #: Redis URL for broker, job records and indexes: ``redis://``, ``rediss://`` (TLS), or Redis
    #: Sentinel ``sentinel://host1:26379;sentinel://host2:26379/0`` (jobs/redisconn.py). Unset: an
    #: embedded private redis-server.
    redis_url: str | None = None
    #: With a ``sentinel://`` URL: the name of the master the sentinels monitor (required).
    redis_master_name: str | None = None
    #: With a ``sentinel://`` URL: the sentinels' own password, if they have one (the Redis
    #: servers' password goes in the URL: ``sentinel://:password@host:26379;...``).
    redis_sentinel_password: SecretStr | None = None
    #: How long a job's record, outputs, provenance entry and webhook log are kept, counted from
    #: its creation: then ``prune`` (run hourly by one worker, or ``batchrender prune``) deletes them.
    retention_s: int = Field(default=30 * 24 * 3600, gt=0)
    #: Redis expiry of records after a job ends: a backstop for deployments that never prune.
    #: Must be at least ``retention_s``, or a record vanishes before prune finds its outputs.
    record_ttl_s: int = 37 * 24 * 3600

    # -- request limits ------------------------------------------------------------------------
    max_pixels: int = 2048 * 2048
    max_side: int = 2048
    max_steps: int = 150
    max_images: int = 8
    max_prompt_chars: int = 2000
    #: Budget per job: width × height × steps × num_images (default: two 2048² images at 50 steps,
    #: or eight 1024² images at 50). Caps what one request can cost however the limits above combine.
    max_job_cost: int = Field(default=2048 * 2048 * 50 * 2, gt=0)
    #: Jobs one batch may hold (the HTTP API and the CLI).
    max_batch_jobs: int = Field(default=1000, ge=1, le=10_000)
    #: Campaigns: rows one catalog may hold, and cells (rows × sweep combinations) one campaign
    #: may expand to.
    campaign_max_rows: int = Field(default=10_000, ge=1, le=1_000_000)
    campaign_max_cells: int = Field(default=50_000, ge=1, le=5_000_000)
    #: Worker processes a campaign plan checks its prompts against the policy's rules in, while
    #: the process planning validates and prices the cells (safety/prompt_pool.py): started by the
    #: first plan of more than one chunk (256 cells), kept until the process ends. 0: none, every
    #: prompt is checked in the planning process. Default: one less than the CPUs, at most 4.
    campaign_plan_workers: int | None = Field(default=None, ge=0, le=32)
    #: Files (``/v1/files``) one tenant may hold at once, and their bytes (0: no limit): an upload
    #: over either is refused with 429 naming the quota and the usage (storage/files.py). A
    #: finished batch's output and error files count but are never refused. Files are deleted
    #: ``retention_s`` after their creation, like jobs.
    files_max_per_tenant: int = Field(default=1000, ge=0)
    files_max_bytes_per_tenant: int = Field(default=1024 ** 3, ge=0)
    #: Price of one GPU-second, for a campaign plan's cost and ``budget.max_cost`` (unset: plans
    #: report GPU-seconds only, and a budget in money is refused). ``currency`` names its unit.
    gpu_second_price: float | None = Field(default=None, ge=0)
    currency: str = Field(default="USD", max_length=8)

    #: Key that signs render messages (jobs/signing.py); the same in every API, producer and
    #: worker process. Unset: ``home/keys/message.key``, made on first use.
    message_signing_key: SecretStr | None = None
    #: A job fails as ``message_unverifiable`` once this many of its render messages were dropped
    #: because they, and its stored message, were signed with another key (jobs/signing.py).
    unverifiable_message_limit: int = Field(default=3, ge=1, le=1000)
    #: A render message is signed with an expiry this long after submission (jobs/signing.py): a
    #: worker drops a message past it (a job still queued then fails as ``message_expired``), and
    #: a deleted job's tombstone outlives it, so a captured message cannot bring the job back.
    message_ttl_s: int = Field(default=7 * 24 * 3600, ge=60)
    #: CPU seconds an untrusted reference image may take to decode (in a child process).
    image_decode_cpu_s: float = Field(default=1.0, gt=0, le=60)
    #: What decoding all the images of one request may cost (an OpenAI edit: up to 16 images and a
    #: mask): CPU seconds, and pixels counted from their headers before anything is decoded.
    image_decode_request_cpu_s: float = Field(default=4.0, gt=0, le=600)
    image_decode_request_pixels: int = Field(default=4 * 2048 * 2048, gt=0)

    # -- queue ---------------------------------------------------------------------------------
    soft_time_limit_s: int = 600
    hard_time_limit_s: int = 660
    #: Rendering time one job may use across all its attempts (retries and lost workers), counted
    #: from its first start; a job over it fails as ``time_limit`` at its next claim.
    job_time_limit_s: int = Field(default=1800, gt=0)
    #: Must exceed the hard limit, or a slow job is redelivered while it still runs.
    visibility_timeout_s: int = 3600
    #: Transient failures (Redis, S3, 5xx) retried with backoff before a job fails (jobs/retry.py).
    max_retries: int = 5
    #: Workers that may die holding one job (SIGKILL, OOM) before it fails as ``worker_lost``;
    #: counted apart from ``max_retries``.
    max_worker_losses: int = Field(default=3, ge=0)
    #: Render workers look for queued jobs whose message was lost (worker/sweep.py) every this
    #: many seconds, one worker at a time; a job counts once it has been queued this long.
    job_sweep_every_s: float = Field(default=60.0, gt=0)
    job_sweep_overdue_s: float = Field(default=120.0, ge=0)
    #: How queued jobs share the render workers (jobs/fairshare.py, docs/scheduling.md): ``fair``
    #: (weighted fair share of render time between tenants, priorities inside a tenant) or ``fifo``
    #: (one queue per model in submission order). Workers serve both; set it on API and producers.
    scheduler: Literal["fair", "fifo"] = "fair"
    #: Inside a tenant, a ``normal`` / ``bulk`` job competes as an ``interactive`` one submitted this
    #: many seconds later: interactive work goes first, and bulk is never starved (bounded wait).
    priority_delay_normal_s: float = Field(default=60.0, ge=0, le=86_400)
    priority_delay_bulk_s: float = Field(default=600.0, ge=0, le=7 * 86_400)
    #: Each render worker tops up its models' ready queues from the tenants' lanes this often.
    dispatch_every_s: float = Field(default=0.2, gt=0, le=10)
    #: A batch's job record whose message is still unpublished after this long was left behind
    #: by a broker failure or a dead producer: ``Client.reconcile`` ends it as ``not_queued``.
    batch_publish_grace_s: int = 600

    # -- storage -------------------------------------------------------------------------------
    #: ``file:///abs/path`` or ``s3://bucket/prefix``. Unset: ``file://{home}/outputs``.
    storage_url: str | None = None
    #: Local storage is one directory every process of the deployment sees (a network mount at
    #: the same path on every host). Without it, local storage with ``redis_url`` set is refused.
    storage_shared: bool = False
    key_template: str = "{batch_id}/{job_id}/{index}.{ext}"
    quarantine_prefix: str = "_quarantine"
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    s3_access_key_id: SecretStr | None = None
    s3_secret_access_key: SecretStr | None = None
    s3_path_style: bool = False
    s3_multipart_threshold: int = 8 * 1024 * 1024
    s3_max_attempts: int = 5
    presign_expiry_s: int = Field(default=3600, ge=1, le=7 * 24 * 3600)
    #: The S3 endpoint clients reach (presigned URLs are signed for this host), when it differs
    #: from ``s3_endpoint_url`` (e.g. ``http://minio:9000`` inside docker-compose).
    s3_public_endpoint_url: str | None = None
    #: Where clients reach the HTTP API (``https://render.example.com``): the base of the stable
    #: output URLs in webhooks and results. Unset: the API answers with the request's own base
    #: URL and webhooks carry paths (``/v1/jobs/.../outputs/0``).
    public_base_url: str | None = None
    #: Key for signed output and gallery links (``?expires=&signature=``), at least 16 bytes, the
    #: same in every API and worker process. Unset: derived from the message-signing key
    #: (jobs/signing.py ``link_key``). Never kept in Redis.
    url_signing_key: SecretStr | None = None
    #: Longest life a signed link may have: links are never signed for longer (``presign_expiry_s``
    #: must be within it), and a link whose expiry lies further ahead than this is refused even
    #: when its signature verifies (a forged or leaked key cannot mint links valid for years).
    link_max_ttl_s: int = Field(default=7 * 24 * 3600, ge=60)
    #: Longest side of the WebP thumbnail the worker writes beside each image (0: none).
    thumbnail_px: int = Field(default=256, ge=0, le=1024)
    #: glibc malloc in worker processes (worker/malloc.py): at most this many arenas (threads
    #: share them), and optionally buffers of at least this many bytes mapped on their own, so
    #: image buffers freed by many threads do not leave a growing heap behind. 0: glibc's default;
    #: MALLOC_ARENA_MAX / MALLOC_MMAP_THRESHOLD_ in the environment win.
    malloc_arena_max: int = Field(default=2, ge=0, le=64)
    malloc_mmap_threshold: int = Field(default=0, ge=0, le=32 * 2**20)
    #: How long a rendered, signed image waits for storage to come back (uploads retried with
    #: backoff, the bytes kept in memory) before the job is retried instead. Capped at run time
    #: so the job's message is never redelivered while it waits (see ``storage_wait_budget_s``).
    storage_outage_s: int = 1800

    # -- C2PA ----------------------------------------------------------------------------------
    #: PEM certificate chain (leaf first) and private key. Unset: the dev keys under ``home/keys``
    #: are created on first use and the worker says loudly that they are for development only.
    c2pa_cert_chain: Path | None = None
    c2pa_private_key: Path | None = None
    #: ``module:callable`` returning a ``c2pa`` signer callback, for keys held in a KMS/HSM.
    c2pa_signer_callback: str | None = None
    c2pa_tsa_url: str | None = None
    #: Development keys (made per host under ``home/keys``, or a chain from ``batchrender keys
    #: init``) are refused when ``redis_url`` is set, unless this is on (a test deployment).
    c2pa_allow_dev_keys: bool = False

    # -- provenance ----------------------------------------------------------------------------
    #: ``redis`` (use the job Redis) or ``sqlite`` (a file under home). Default: redis when
    #: ``redis_url`` is configured, sqlite in the embedded default.
    provenance_index: str | None = None

    # -- moderation ----------------------------------------------------------------------------
    policy_file: Path | None = None
    #: Default output-image classifier: ``open_nsfw`` (packaged weights, CPU) or ``off``.
    nsfw_classifier: str = "open_nsfw"
    text_classifier_dir: Path | None = None
    image_classifier_dir: Path | None = None
    safety_checker_dir: Path | None = None
    #: A transformers semantic-segmentation model (local directory, loaded offline) that makes the
    #: alpha channel of ``background: transparent`` images; unset: the backdrop is keyed out.
    matting_model_dir: Path | None = None
    phash_blocklist: Path | None = None
    #: Stage names the operator explicitly allows to fail open when they error.
    moderation_fail_open: list[str] = Field(default_factory=list)
    #: Re-render with a new seed when an output-stage block is below this severity.
    moderation_reroll_max: int = 0
    moderation_reroll_below_severity: int = 3
    audit_log_prompts: bool = False
    #: Bearer key for the policy's ``moderation_service`` (OpenAI, or a vLLM/TGI ``--api-key``).
    moderation_service_key: SecretStr | None = None
    #: Hosts (names, IPs or CIDRs) the policy's ``moderation_service.url`` may resolve to although
    #: they are loopback/private (a classifier served inside the deployment); checked like webhooks.
    moderation_service_allow_hosts: list[str] = Field(default_factory=list)

    # -- webhooks ------------------------------------------------------------------------------
    #: Hosts (names, IPs or CIDRs) the SSRF guard lets through despite being private/loopback.
    webhook_allow_hosts: list[str] = Field(default_factory=list)
    #: The same for reference-image URLs (image-to-image); a separate list, so opening one
    #: internal host to webhooks does not open it to fetches (and the other way round).
    image_fetch_allow_hosts: list[str] = Field(default_factory=list)
    webhook_timeout_s: float = 15.0
    #: Deliveries of one tenant in flight at once, fleet-wide: a slow receiver holds at most
    #: this many of the webhook worker's threads.
    webhook_tenant_concurrency: int = Field(default=4, ge=1)
    #: Threads of the webhook worker that ``batchrender worker`` starts beside the render worker.
    webhook_threads: int = Field(default=16, ge=1, le=256)
    #: ``user:password`` (comma-separated for several) that Flower asks for. Unset, ``batchrender
    #: flower`` listens on loopback only.
    flower_basic_auth: SecretStr | None = None
    #: Workers look for pending events whose task message was lost (a worker died between
    #: recording an event and sending its message, a publish failed) every this many seconds,
    #: one worker at a time, traffic or not; an event counts as lost once its attempt is
    #: ``webhook_sweep_overdue_s`` past due.
    webhook_sweep_every_s: float = Field(default=60.0, gt=0)
    webhook_sweep_overdue_s: float = Field(default=120.0, ge=0)
    #: Seconds between attempts; default spans about three days like Standard Webhooks.
    webhook_schedule_s: list[float] = Field(
        default_factory=lambda: [0, 5, 300, 1800, 7200, 18000, 36000, 36000, 86400, 86400]
    )
    webhook_progress_interval_s: float = 2.0
    #: Secret used when a request brings no per-request secret (``whsec_...``).
    webhook_secret: SecretStr | None = None
    #: Fernet key that encrypts tenants' webhook secrets in Redis (jobs/secretbox.py); the same in
    #: every process. Unset: ``home/keys/secrets.key``, made on first use.
    secrets_key: SecretStr | None = None

    # -- HTTP API ------------------------------------------------------------------------------
    api_rate_per_s: float = 20.0
    api_burst: int = 40
    api_max_queued_per_tenant: int = 1000
    api_max_body_bytes: int = 4 * 1024 * 1024
    #: How long ``POST /v1/images/generations`` (OpenAI-compatible, synchronous) waits for its
    #: render; the OpenAI SDK's default timeout is 10 minutes.
    openai_sync_timeout_s: float = Field(default=540.0, gt=0)
    #: Seconds a client has to send its whole request body (408 after that).
    api_body_timeout_s: float = Field(default=30.0, gt=0)
    #: Seconds a client has to send a request's headers, from connecting or from the first byte of
    #: the next request on a kept-alive connection (408 and closed after that).
    api_header_timeout_s: float = Field(default=10.0, gt=0)
    #: Connections the API serves at once (uvicorn's ``limit_concurrency``: 503 over it).
    api_max_connections: int = Field(default=1000, ge=1)
    #: Connections one client address (an IPv6 /64) may hold open at once; more are answered 429
    #: and closed (producer/api/connections.py). 0: no cap (behind a proxy that has its own).
    api_max_connections_per_client: int = Field(default=100, ge=0)
    #: Seconds a response may wait on a client that does not read (its send buffer full) before
    #: the connection is dropped.
    api_write_timeout_s: float = Field(default=30.0, gt=0)
    #: Seconds ``/readyz`` reuses its last report: at most one check (and one worker inspect) runs
    #: at a time, in a thread of its own, however many probes ask.
    api_readiness_ttl_s: float = Field(default=5.0, ge=0, le=300)

    # -- worker --------------------------------------------------------------------------------
    #: ``cuda``, ``cpu``, or unset for cuda-when-present.
    device: str | None = None
    max_batch: int = 0  # 0: chosen from the device's memory
    #: Gathering a call: wait for more jobs while they keep arriving (no arrival for this long, or
    #: 2.5 x the recent gap between a burst's arrivals, ends it), but never longer than batch_max_wait_ms.
    batch_window_ms: int = 30
    batch_max_wait_ms: int = Field(default=2000, ge=0, le=60_000)
    #: Threads that moderate, encode, sign and upload while the GPU renders; 0: CPU count, at most 8.
    postprocess_threads: int = 0
    postprocess_queue: int = 8
    model_cache_size: int = 2
    # Render options (docs/render-options.md): each one off by default, so a default worker renders
    # exactly the pixels of the bare pipeline.
    #: UNet and VAE in channels-last memory format (faster convolutions on most GPUs).
    channels_last: bool = False
    #: ``torch.compile`` the denoiser (UNet, or the transformer of SD3/FLUX); slow first call per shape.
    compile_unet: bool = False
    #: ``torch.compile`` the VAE decoder.
    compile_vae: bool = False
    #: ``torch.compile`` mode for ``compile_unet``/``compile_vae``.
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "default"
    #: ``torch.compile`` backend (``eager`` traces but generates no code: the tests use it); checked at model load.
    compile_backend: str = Field(default="inductor", min_length=1)
    #: Scaled-dot-product attention kernel: ``auto`` lets torch choose; any other is forced for every
    #: pipeline call, and a worker whose device cannot run it refuses to load the model.
    sdpa_backend: Literal["auto", "flash", "efficient", "cudnn", "math"] = "auto"
    #: Prompt embeddings kept per model (SD 1.5/SDXL) for repeated prompts and negative prompts; 0: off.
    prompt_cache_size: int = Field(default=0, ge=0, le=100_000)
    #: VAE slicing (decode a call's images one at a time): ``auto`` only when the call would not fit
    #: in free memory otherwise; ``always`` / ``never`` force it.
    vae_slicing: Literal["auto", "always", "never"] = "auto"
    #: Decode with VAE tiling at or above this many pixels, whatever the free memory (below it,
    #: tiling turns on only when one image would not fit in free memory).
    vae_tiling_above_pixels: int = Field(default=1536 * 1536, ge=0)
    #: Bearer token the API's ``/metrics`` wants (unset: open, like ``/healthz``; its labels name tenants).
    metrics_token: SecretStr | None = None
    #: ``text`` or ``json`` (one object per line, with ``job_id``/``job_ids`` on every line about jobs).
    log_format: Literal["text", "json"] = "text"
    #: Celery task events (what Flower shows): on, and sent for every job of a batched call too.
    task_events: bool = True

    def __repr_args__(self):
        # SecretStr fields are masked by pydantic; URLs may carry a password (redis://:pw@host).
        return [(k, redact_url(v) if isinstance(v, str) and "://" in v else v)
                for k, v in super().__repr_args__() if v not in (None, [], False)]

    @field_serializer(*URL_FIELDS)
    def _dump_url_redacted(self, v: str | None) -> str | None:
        # model_dump()/model_dump_json() are for showing settings (doctor, logs, support bundles):
        # a URL's password stays out, as SecretStr fields are masked. Code that connects reads the
        # attribute itself, which keeps the real value.
        return None if v is None else redact_url(str(v))

    @field_validator("home", mode="after")
    @classmethod
    def _absolute_home(cls, v: Path) -> Path:
        # A relative home would follow the current directory (a second embedded broker, an empty
        # index): fix it to an absolute path once, here.
        return v.expanduser().absolute()

    @field_validator("redis_url", "storage_url", "s3_endpoint_url", "s3_public_endpoint_url", "public_base_url",
                     "message_signing_key", "secrets_key", "url_signing_key", "webhook_secret", "redis_master_name",
                     "redis_sentinel_password", mode="before")
    @classmethod
    def _empty_is_none(cls, v: Any) -> Any:
        return None if v == "" else v

    @model_validator(mode="after")
    def _check(self) -> "Settings":
        if self.visibility_timeout_s <= self.hard_time_limit_s:
            raise ValueError(
                f"visibility_timeout_s ({self.visibility_timeout_s}) must exceed hard_time_limit_s "
                f"({self.hard_time_limit_s}), or a slow job is redelivered while it still runs"
            )
        if self.visibility_timeout_s <= self.webhook_lease_s:
            raise ValueError(
                f"visibility_timeout_s ({self.visibility_timeout_s}) must exceed the webhook claim lease "
                f"(webhook_timeout_s {self.webhook_timeout_s:g} + {WEBHOOK_CLAIM_SLACK_S:g} = {self.webhook_lease_s:g}), "
                "or a delivery whose worker died comes back while its claim still holds"
            )
        if self.record_ttl_s < self.retention_s:
            raise ValueError(f"record_ttl_s ({self.record_ttl_s}) must be at least retention_s ({self.retention_s}), "
                             "or job records expire before prune can delete their outputs")
        if self.message_ttl_s > self.record_ttl_s:
            raise ValueError(f"message_ttl_s ({self.message_ttl_s}) must be at most record_ttl_s ({self.record_ttl_s}): "
                             "a deleted job's tombstone lasts record_ttl_s and must outlive its messages")
        if self.presign_expiry_s > self.link_max_ttl_s:
            raise ValueError(f"presign_expiry_s ({self.presign_expiry_s}) must be at most link_max_ttl_s "
                             f"({self.link_max_ttl_s}): links are never signed for longer than the cap")
        for name in ("public_base_url", "s3_public_endpoint_url"):
            value = getattr(self, name)
            if value is not None and not value.startswith(("http://", "https://")):
                raise ValueError(f"{name} must be an http(s) URL like https://render.example.com, got {value!r}")
        if self.soft_time_limit_s >= self.hard_time_limit_s:
            raise ValueError("soft_time_limit_s must be below hard_time_limit_s")
        if self.provenance_index not in (None, "redis", "sqlite"):
            raise ValueError("provenance_index must be 'redis' or 'sqlite'")
        if self.nsfw_classifier not in ("open_nsfw", "off"):
            raise ValueError(f"nsfw_classifier must be 'open_nsfw' or 'off', got {self.nsfw_classifier!r}")
        if self.redis_url is not None or self.redis_master_name or self.redis_sentinel_password:
            from jobs.redisconn import settings_url

            try:  # checked here so every process refuses a bad URL at start; carries the master name
                object.__setattr__(self, "redis_url", settings_url(self))
            except ConfigurationError as e:
                raise ValueError(e.message) from None
        return self

    # -- derived -------------------------------------------------------------------------------
    @property
    def storage_wait_budget_s(self) -> float:
        """``storage_outage_s``, but never so long that the job's unacked message is handed to
        another worker meanwhile (visibility timeout minus the render's hard limit and a margin)."""
        return max(0.0, min(float(self.storage_outage_s),
                            self.visibility_timeout_s - self.hard_time_limit_s - 60.0))

    @property
    def webhook_lease_s(self) -> float:
        """How long one webhook attempt's claim holds (HTTP timeout + a margin)."""
        return self.webhook_timeout_s + WEBHOOK_CLAIM_SLACK_S

    @property
    def resolved_storage_url(self) -> str:
        return self.storage_url or (self.home.resolve() / "outputs").as_uri()

    @property
    def resolved_postprocess_threads(self) -> int:
        return self.postprocess_threads or max(1, min(8, os.cpu_count() or 1))

    @property
    def resolved_campaign_plan_workers(self) -> int:
        if self.campaign_plan_workers is not None:
            return self.campaign_plan_workers
        return max(0, min(4, (os.cpu_count() or 1) - 1))

    @property
    def models_file(self) -> Path:
        return self.home / "models.json"

    @property
    def resolved_provenance_index(self) -> str:
        return self.provenance_index or ("redis" if self.redis_url else "sqlite")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> "Settings":
        """Build settings from ``BATCHRENDER_*`` variables; a bad value is a ConfigurationError."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, field in cls.model_fields.items():
            raw = env.get(ENV_PREFIX + name.upper())
            if raw is None or (raw == "" and field.default is None):
                continue  # unset, or set empty (compose's ${X:-}) where unset means "not configured"
            if "list" in str(field.annotation):
                values[name] = [p.strip() for p in raw.split(",") if p.strip()]
            else:
                values[name] = raw
        unknown = sorted(
            k for k in env if k.startswith(ENV_PREFIX) and k[len(ENV_PREFIX):].lower() not in cls.model_fields
        )
        if unknown:
            raise ConfigurationError(f"unknown setting(s): {', '.join(unknown)}")
        values.update(overrides)
        try:
            return cls(**values)
        except ValidationError as e:
            problems = "; ".join(
                f"{ENV_PREFIX}{'.'.join(map(str, err['loc'])).upper() or 'SETTINGS'}: {err['msg']}" for err in e.errors()
            )
            raise ConfigurationError(f"invalid settings: {problems}") from None
