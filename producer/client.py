"""The Python client: submit, watch, cancel and collect render jobs.

It sends tasks by name (``jobs.names``) and never imports worker code or torch.
"""
from __future__ import annotations

import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from kombu.exceptions import OperationalError

from jobs.celery_app import make_app, publish_render
from jobs.embedded import redis_url_for
from jobs.errors import (BatchIncomplete, BrokerUnavailable, ConfigurationError, InvalidRequest, JobNotFound,
                         OutputNotFound)
from jobs.registry import Registry
from jobs.schemas import ImageResult, JobMessage, JobResult, RenderRequest, resolve
from jobs.settings import Settings
from jobs.status import JobStatus
from jobs.store import JobRecord, JobStore
from jobs.names import job_key, mask_key, reference_key, tenant_key
from producer.inputs import input_key, load_reference
from safety.decode import request_budget

Q, R = JobStatus.QUEUED, JobStatus.RUNNING
#: Seconds a webhook URL that passed the SSRF guard is not looked up again by this client (each
#: delivery attempt checks it again anyway).
WEBHOOK_CHECK_REUSE_S = 60.0


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


@dataclass
class BatchSubmission:
    """A submitted batch: the jobs that were queued, and the items that were refused (by index)."""

    batch_id: str
    job_ids: list[str]
    errors: list[tuple[int, InvalidRequest]] = field(default_factory=list)


class Client:
    def __init__(self, settings: Settings | None = None, *, redis_url: str | None = None) -> None:
        self.settings = settings or Settings.from_env()
        url = redis_url or redis_url_for(self.settings, start=True)
        self.redis_url = url
        self.app = make_app(self.settings, url)
        self.store = JobStore.from_url(url, self.settings.record_ttl_s)
        self.registry = Registry(self.settings)
        self._moderation: Any = None
        self._storage: Any = None
        self._events: Any = None
        self._links: Any = None
        self._signer: Any = None
        self._provenance: Any = None
        self._dispatcher: Any = None
        self._prompt_pool: Any = None
        #: Lazy parts are built once: 40 API threads meeting a cold client built the moderation
        #: chain (~0.5 s of CPU each) 40 times over, holding every thread meanwhile.
        self._build_lock = threading.RLock()
        #: Webhook URLs the SSRF guard passed lately (monotonic time): a batch asks DNS once per URL.
        self._webhooks_checked: dict[str, float] = {}

    @property
    def dispatcher(self):
        """Moves this producer's queued jobs from the tenants' lanes to the workers (jobs/fairshare.py)."""
        if self._dispatcher is None:
            from jobs.fairshare import Dispatcher

            self._dispatcher = Dispatcher(self.app, self.store.r)
        return self._dispatcher

    @property
    def moderation(self):
        """The prompt stages of the moderation chain (torch-free), built on first use."""
        if self._moderation is None:
            with self._build_lock:
                if self._moderation is None:
                    from safety.chain import ModerationChain

                    self._moderation = ModerationChain.producer_side(self.settings)
        return self._moderation

    def prompt_pool(self):
        """Worker processes that check a plan's prompts against the policy's rules
        (safety/prompt_pool.py), started on first use; None when ``campaign_plan_workers`` is 0."""
        workers = self.settings.resolved_campaign_plan_workers
        if workers <= 0 or self.moderation.rules is None:
            return None
        with self._build_lock:
            if self._prompt_pool is None:
                from safety.policy import policy_fingerprint
                from safety.prompt_pool import PromptRulesPool

                self._prompt_pool = PromptRulesPool(self.settings.policy_file,
                                                    policy_fingerprint(self.moderation.policy), workers)
            self._prompt_pool.start()
        return self._prompt_pool

    @property
    def signer(self):
        """Signs render messages (jobs/signing.py): workers drop what it did not sign."""
        if self._signer is None:
            from jobs.signing import Signer

            self._signer = Signer.for_settings(self.settings)
        return self._signer

    @property
    def storage(self):
        if self._storage is None:
            with self._build_lock:
                if self._storage is None:
                    from storage import open_storage

                    self._storage = open_storage(self.settings)
        return self._storage

    @property
    def events(self):
        if self._events is None:
            from webhooks.job_events import Events, webhook_sender

            self._events = Events(webhook_sender(self.settings, self.redis_url, self.store, app=self.app))
        return self._events

    # -- submitting ------------------------------------------------------------------------------
    def prepare(self, request: RenderRequest | dict[str, Any], *, batch_id: str | None = None,
                tenant: str | None = None, job_id: str | None = None, priority: str = "normal") -> JobMessage:
        """Validate and resolve a request into the message a worker will run (raises InvalidRequest).
        ``priority``: the job's priority when the request does not name one."""
        req = request if isinstance(request, RenderRequest) else RenderRequest.parse(request)
        # The images of one request (image, mask, references) share one decode budget.
        with request_budget(self.settings.image_decode_request_pixels, self.settings.image_decode_request_cpu_s):
            return self._prepare(req, batch_id, tenant, job_id, priority)

    def _prepare(self, req: RenderRequest, batch_id: str | None, tenant: str | None, job_id: str | None,
                 priority: str) -> JobMessage:
        if req.webhook:
            self._check_webhook(req, tenant)
        elif req.webhook_events_filter is not None:  # bounded and known, with or without a webhook
            from webhooks.events import parse_event_filter

            parse_event_filter(req.webhook_events_filter)
        spec = self.registry.get(req.model)
        resolved = resolve(req, spec, self.settings)
        if resolved.priority is None:
            resolved = resolved.model_copy(update={"priority": priority})
        job_id = job_id or new_id("job")
        # Signed expiry and nonce: the message is good for this record of the job only, and only
        # for message_ttl_s (jobs/signing.py: a replay after DELETE does not bring the job back).
        now = time.time()
        msg = self._with_references(JobMessage(job_id=job_id, batch_id=batch_id, tenant=tenant, request=resolved,
                                               submitted_at=now, expires_at=now + self.settings.message_ttl_s,
                                               nonce=secrets.token_hex(12)),
                                    spec, tenant)
        resolved = msg.request
        if resolved.image is None:
            return self.signer.sign(msg)
        # Without an IP-Adapter the first of the references is the image-to-image reference.
        field = "image" if req.image is not None else "references[0]"
        data, check = self._checked_image(field, resolved.image, tenant, job_id)
        mask = self._checked_image("mask", req.mask, tenant, job_id)[0] if req.mask else None
        # No image bytes in messages or records: the reference goes to storage, the message has its key.
        msg = msg.model_copy(update={
            "request": resolved.model_copy(update={"image": None, "mask": None}), "input_key": input_key(job_id),
            "mask_key": mask_key(job_id) if mask else None,
            "real_person_context": check.real_person_context or msg.real_person_context})
        msg._input_bytes, msg._mask_bytes = data, mask
        return self.signer.sign(msg)

    def _check_webhook(self, req: RenderRequest, tenant: str | None) -> None:
        """A webhook is refused here, before anything is queued, when its events could never be
        sent: a target the SSRF guard refuses (``producer.submit.check_webhook``, which names
        BATCHRENDER_WEBHOOK_ALLOW_HOSTS), or no secret to sign them with (the tenant's, else
        BATCHRENDER_WEBHOOK_SECRET): the worker would refuse every event of the job, and only its
        log would say so."""
        from producer.submit import check_webhook

        now = time.monotonic()
        if now - self._webhooks_checked.get(req.webhook, -WEBHOOK_CHECK_REUSE_S) >= WEBHOOK_CHECK_REUSE_S:
            check_webhook(req, self.settings)
            if len(self._webhooks_checked) > 1024:
                self._webhooks_checked.clear()
            self._webhooks_checked[req.webhook] = now
        else:  # the filter is the request's own: checked every time (no DNS)
            from webhooks.events import parse_event_filter

            parse_event_filter(req.webhook_events_filter)
        if self.settings.webhook_secret:
            return
        if tenant and self.store.r.hexists(tenant_key(tenant), "webhook_secrets"):
            return
        raise ConfigurationError(
            "webhook: no webhook secret to sign this job's events, so none would ever be sent: a job "
            "submitted without a tenant (the CLI, the Python client) is signed with BATCHRENDER_WEBHOOK_SECRET, "
            "which is not set here. Set BATCHRENDER_WEBHOOK_SECRET=whsec_... (the receiver verifies with it) "
            "here and for the workers, or submit through the HTTP API with a tenant's key (each tenant has a "
            "webhook secret of its own)")

    def _with_references(self, msg: JobMessage, spec, tenant: str | None) -> JobMessage:
        """``references`` out of the message: for an IP-Adapter model each is fetched, checked by the
        input-image stage and kept for storage under its own key; otherwise only counted (the
        first is already the image-to-image reference, ``jobs.schemas.resolve``)."""
        refs = msg.request.references or []
        if not refs:
            return msg
        update: dict[str, Any] = {"request": msg.request.model_copy(update={"references": None}),
                                  "references_given": len(refs)}
        blobs = []
        if spec.ip_adapter:
            checks = [self._checked_image(f"references[{i}]", value, tenant, msg.job_id) for i, value in enumerate(refs)]
            blobs = [data for data, _check in checks]
            update["reference_keys"] = [reference_key(msg.job_id, i) for i in range(len(refs))]
            update["real_person_context"] = any(c.real_person_context for _d, c in checks)
        out = msg.model_copy(update=update)
        out._reference_bytes = blobs
        return out

    def _checked_image(self, field: str, value: str, tenant: str | None, job_id: str):
        """An input image's bytes (and the check), fetched and checked like every reference."""
        data = load_reference(value, self.settings, field=field)
        check = self.moderation.check_input_image(data, actor=tenant or "producer", job_id=job_id)
        if check.decision.blocked:
            rule = next((v.rule for v in check.decision.verdicts if v.action.value == "block"), "")
            message = f"the {'reference image' if field == 'image' else field} was refused " \
                      f"({rule or check.decision.message}); send a PNG, JPEG or WebP within the size and pixel limits"
            raise InvalidRequest(f"invalid request: {field}: {message}", errors=[{"field": field, "message": message}])
        return data, check

    def enqueue(self, msg: JobMessage, *, reserved: bool = False) -> None:
        """Moderate the prompt, publish the job, then record it as queued.

        Publishing comes first so that a producer dying in between loses nothing: the worker
        rebuilds a missing record from the message (the other order would leave a ``queued``
        record with no message behind it). A prompt the policy blocks ends here as ``blocked``
        and is never queued, so it costs no GPU time (workers check again, in case the policy
        changed while it waited). Redis or the broker being down raises ``BrokerUnavailable``;
        the job was then not queued. ``reserved``: the tenant's slot was taken already
        (``JobStore.reserve``) and is given back when no record is written.
        """
        if self.store.status(msg.job_id) is not None:
            if reserved and msg.tenant:
                self.store.release(msg.tenant, 1)
            return  # already recorded: an idempotent resubmission
        decision = self._check_prompt(msg)
        if decision.action.value == "block":
            self.store.create(msg, reserved=reserved)
            self._block(msg, decision)
            return
        plan = self._plan(msg)
        if self.settings.scheduler == "fair":
            # The record first: the dispatch publishes the message stored with it. Dying between
            # the two leaves a queued record with no lane entry, which the job sweep re-sends.
            if self.store.create(msg, reserved=reserved):
                self._publish(msg, plan)
                self._dispatch(msg.request.model)
            return
        self._publish(msg, plan)
        # A no-op when a fast worker has already rebuilt the record from the message.
        self.store.create(msg, reserved=reserved)

    def _plan(self, msg: JobMessage) -> tuple[float | None, float | None]:
        """(planned completion, lane order) of a job about to be queued; ``InvalidRequest`` for a
        ``deliver_by`` in the past or one the plan cannot meet (``jobs.fairshare.plan_delivery``).
        Jobs without a deadline are planned only when they enter a lane (no extra reads)."""
        if msg.request.deliver_by is None:
            return None, None
        from jobs.fairshare import plan_delivery

        try:
            return plan_delivery(self.store.r, self.settings, msg)
        except InvalidRequest:
            raise
        except Exception as e:  # noqa: BLE001 - Redis away: the submit fails as unavailable
            raise BrokerUnavailable(f"could not plan job {msg.job_id}: {e}") from e

    def _dispatch(self, model: str) -> None:
        """Hand the workers a job at once when they are idle (workers also do it themselves)."""
        try:
            self.dispatcher.fill(model, want=1)
        except Exception as e:  # noqa: BLE001 - the job is queued in its lane; a worker dispatches it
            import logging

            logging.getLogger(__name__).warning("dispatch after submit failed (a worker will do it): %s", e)

    def _check_prompt(self, msg: JobMessage, decided: Mapping[tuple[str, str | None, str | None], Any] | None = None):
        r = msg.request
        known = None if decided is None or msg.real_person_context else \
            decided.get((r.prompt, r.negative_prompt, r.moderation))
        return self.moderation.check_prompt(r.prompt, r.negative_prompt, real_person_context=msg.real_person_context,
                                            actor=msg.tenant or "producer", job_id=msg.job_id, level=r.moderation,
                                            decided=known)

    def _block(self, msg: JobMessage, decision) -> None:
        """End a recorded, queued job as ``blocked`` by the producer's prompt check."""
        info = decision.to_dict()
        error = {"code": "moderation_blocked", "message": info.get("message"), "stage": info.get("blocking_stage"),
                 "categories": info.get("categories", [])}
        result = JobResult(job_id=msg.job_id, batch_id=msg.batch_id, custom_id=msg.request.custom_id,
                           status=JobStatus.BLOCKED, model=msg.request.model, moderation=info, error=error)
        t = self.store.transition(msg.job_id, JobStatus.BLOCKED, [Q], error=error, result=result.model_dump_json())
        if t.ok:
            self.events.finished(msg, result, t.batch_done)

    def _publish(self, msg: JobMessage, plan: tuple[float | None, float | None] = (None, None)) -> None:
        """Store the reference image (if any) and send the render message (``scheduler: fair``: put
        the recorded job in its tenant's lane); BrokerUnavailable if not sent. ``plan``: planned
        completion and lane order from ``_plan``."""
        for key, data in zip(msg.reference_keys, msg._reference_bytes):
            self.storage.put(key, data, content_type="application/octet-stream",
                             metadata={"job_id": msg.job_id, "kind": "reference"})
        if msg.mask_key and msg._mask_bytes is not None:
            self.storage.put(msg.mask_key, msg._mask_bytes, content_type="application/octet-stream",
                             metadata={"job_id": msg.job_id, "kind": "mask"})
        if msg.input_key and msg._input_bytes is not None:
            self.storage.put(msg.input_key, msg._input_bytes, content_type="application/octet-stream",
                             metadata={"job_id": msg.job_id, "kind": "reference"})
        planned, score = plan
        if self.settings.scheduler == "fair":
            from jobs import fairshare

            try:
                fairshare.enqueue(self.store.r, msg, self.settings, score=score, planned=planned)
            except Exception as e:  # noqa: BLE001 - redis-py errors: not queued
                raise BrokerUnavailable(f"could not queue job {msg.job_id}: Redis is unavailable ({e})") from e
            return
        try:
            publish_render(self.app, msg, retry=True, retry_policy={"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5})
        except (OperationalError, ConnectionError, OSError) as e:
            raise BrokerUnavailable(f"could not queue job {msg.job_id}: the broker is unavailable ({e})") from e
        if planned is not None:
            self.store.r.hset(job_key(msg.job_id), "planned_completion", repr(planned))

    def submit(self, request: RenderRequest | dict[str, Any], *, tenant: str | None = None) -> str:
        """Queue one job; returns its id. With ``cache: "reuse"``, the id of an earlier job of the
        same content that succeeded or is still queued or running, when there is one: nothing is
        queued then (``producer.result_cache``)."""
        req = request if isinstance(request, RenderRequest) else RenderRequest.parse(request)
        content = None
        if req.cache == "reuse":
            from producer import result_cache

            cached, content = result_cache.lookup(self, tenant, req)
            if cached is not None:
                return cached.job_id
        msg = self.prepare(req, tenant=tenant)
        self.enqueue(msg)
        if content is not None:
            from producer import result_cache

            result_cache.remember(self, tenant, content, msg.job_id)
        return msg.job_id

    def refine(self, job_id: str, prompt: str, *, tenant: str | None = None, **fields: Any) -> str:
        """Queue a refinement of an image of the succeeded job ``job_id``: image-to-image from it
        with a new ``prompt``, its seed, model and size; returns the new job's id. ``fields``:
        ``image_index`` (0), ``strength``, ``steps``, ``custom_id``, ``metadata``, ``webhook``
        (producer.refine.RefineRequest). Raises ``JobNotFound`` (unknown id, or not ``tenant``'s
        job), ``ParentNotSucceeded``, ``InvalidRequest`` naming the field."""
        from producer.refine import refine

        return refine(self, job_id, {"prompt": prompt, **fields}, tenant=tenant).job_id

    def lineage(self, job_id: str, *, tenant: str | None = None) -> dict[str, Any]:
        """The chain of refinements from its root (turn 0) to ``job_id`` (``turns``: id, status,
        turn, prompt, image index, URL of the image carried forward)."""
        from producer.refine import lineage

        return lineage(self, job_id, tenant=tenant)

    def campaign(self, doc: Any, *, catalog: str | bytes | None = None, dry_run: bool = False,
                 skip_refused: bool = False, tenant: str | None = None) -> dict[str, Any]:
        """Plan (``dry_run``) or apply a campaign (``producer.campaigns``).

        ``doc``: a dict, a ``CampaignSpec``, or the path of a JSON or YAML file (its ``catalog.path``
        is relative to the file). ``catalog``: a local CSV/JSONL file's path, or its bytes, in place
        of the document's catalog. Returns the plan, or what was applied (``applied``: submitted,
        reused, refused cells; ``batch_id``). Raises ``InvalidRequest`` naming the row, column or
        field (``CampaignRefused`` lists refused cells by row, ``OverBudget`` the budget's reasons;
        nothing is queued then) and ``QuotaExceeded``."""
        from producer.campaign_documents import local_catalog, spec_of
        from producer.campaigns import Campaigns

        spec = spec_of(doc)
        campaigns = Campaigns(self, allow_paths=True)  # this process's own disk: paths are fine
        cat = local_catalog(catalog, spec, self.settings.campaign_max_rows) if catalog is not None else None
        if dry_run:
            return campaigns.plan(tenant, spec, cat)
        return campaigns.apply(tenant, spec, cat, skip_refused=skip_refused)

    def campaign_status(self, id_or_name: str, *, tenant: str | None = None) -> dict[str, Any]:
        """A campaign (by id or name): status, progress, cells per state, the last plan."""
        from producer.campaign_results import resolve_id
        from producer.campaigns import Campaigns

        return Campaigns(self).status(tenant, resolve_id(tenant, id_or_name))

    def submit_batch(self, requests: Iterable[RenderRequest | dict[str, Any]], *,
                     tenant: str | None = None, batch_id: str | None = None,
                     meta: dict[str, Any] | None = None, reserved: int = 0, total: int | None = None,
                     append: bool = False, priority: str = "bulk",
                     decided: Mapping[tuple[str, str | None, str | None], Any] | None = None) -> BatchSubmission:
        """Queue many jobs as one batch. Invalid items are reported by index; the valid ones run.

        The batch and all its job records are written in one Redis transaction, then the
        messages are published one by one. If the broker fails half-way, ``BatchIncomplete``
        says exactly which jobs were queued and which were not; the ones that were not end as
        ``failed`` (code ``not_queued``) at once, or, when Redis itself is down, at the first
        ``reconcile`` after it is back (``batch``/``wait_batch`` and workers run it), so the
        batch always completes. ``reserved``: slots already taken for the tenant
        (``JobStore.reserve``); those that do not become jobs are given back. ``total``: the
        batch's size when it is sent in parts (a campaign's cells); ``append``: this part joins
        ``batch_id``, made by an earlier part. ``priority``: of the items that name none (bulk).
        ``decided``: prompt decisions this process has just made, by (prompt, negative prompt,
        level) (a campaign's plan): an item found there without a real person's image is not
        moderated again (its decision is still audited).
        """
        batch_id = batch_id or new_id("bat")
        msgs: list[JobMessage] = []
        errors: list[tuple[int, InvalidRequest]] = []
        held = reserved if tenant else 0  # reserved slots not yet owned by a record
        try:
            plans: dict[str, tuple[float | None, float | None]] = {}
            for i, req in enumerate(requests):
                try:
                    m = self.prepare(req, batch_id=batch_id, tenant=tenant, priority=priority)
                    plans[m.job_id] = self._plan(m)
                    msgs.append(m)
                except InvalidRequest as e:
                    errors.append((i, e))
            decisions = {m.job_id: self._check_prompt(m, decided) for m in msgs}
            try:
                if append:
                    self.store.append_batch_records(batch_id, msgs, tenant=tenant, reserved=bool(held))
                else:
                    self.store.create_batch_records(batch_id, msgs, tenant=tenant, meta=meta, reserved=bool(held),
                                                    total=total)
            except BrokerUnavailable as e:
                raise BatchIncomplete(batch_id, [], [m.job_id for m in msgs], e) from e
            if held:
                self.store.release(tenant, held - len(msgs))  # the items that were refused
            held = 0
        finally:
            if held:
                try:
                    self.store.release(tenant, held)
                except BrokerUnavailable:
                    pass  # Redis is away: the count stays high by these slots (docs/security.md)
        done: list[str] = []
        for i, m in enumerate(msgs):
            try:
                if decisions[m.job_id].action.value == "block":
                    self._block(m, decisions[m.job_id])
                else:
                    self._publish(m, plans[m.job_id])
                done.append(m.job_id)
                self.store.mark_published([m.job_id])
            except BrokerUnavailable as e:
                not_queued = [x.job_id for x in msgs[i:] if x.job_id not in done]
                self._not_queued(not_queued, e)
                raise BatchIncomplete(batch_id, done, not_queued, e) from e
        if self.settings.scheduler == "fair":
            for model in sorted({m.request.model for m in msgs}):
                self._dispatch(model)
        return BatchSubmission(batch_id, [m.job_id for m in msgs], errors)

    def _not_queued(self, job_ids: list[str], cause: BaseException) -> int:
        """End recorded jobs whose message was never published as failed (``not_queued``).

        Best effort: when Redis itself is down this does nothing and ``reconcile`` does it later.
        Returns how many were ended here.
        """
        error = {"code": "not_queued", "retryable": True,
                 "message": "the job was recorded but never queued: the broker became unavailable while its "
                            f"batch was being submitted ({type(cause).__name__}); submit it again"}
        ended = 0
        try:
            for job_id in job_ids:
                t = self.store.transition(job_id, JobStatus.FAILED, [Q], error=error)
                if t.ok:
                    ended += 1
                    rec = self.store.get(job_id)
                    msg = self.store.message(job_id)
                    result = JobResult(job_id=job_id, batch_id=rec.batch_id, custom_id=rec.custom_id,
                                       status=JobStatus.FAILED, model=rec.model, error=error)
                    self.events.finished(msg, result, t.batch_done)
            self.store.forget_unpublished(job_ids)
        except BrokerUnavailable:
            pass
        return ended

    def reconcile(self, grace_s: float | None = None) -> int:
        """End jobs recorded more than ``grace_s`` ago whose message was never published.

        Such a record is left behind when Redis or the producer died half-way through
        ``submit_batch``. Returns how many jobs were ended.
        """
        grace = self.settings.batch_publish_grace_s if grace_s is None else grace_s
        stale = self.store.stale_unpublished(grace)
        return self._not_queued(stale, BrokerUnavailable("the producer stopped before publishing it")) if stale else 0

    # -- watching --------------------------------------------------------------------------------
    def status(self, job_id: str) -> JobRecord:
        return self.store.get(job_id)

    def wait(self, job_id: str, timeout: float | None = None, poll_s: float = 0.1,
             on_update: Callable[[JobRecord], None] | None = None) -> JobRecord:
        """Block until the job ends; raises TimeoutError (the job keeps running) after ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            rec = self.store.get(job_id)
            if on_update:
                on_update(rec)
            if rec.status.terminal:
                return rec
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} is still {rec.status.value} after {timeout}s")
            time.sleep(poll_s)

    def batch(self, batch_id: str) -> dict[str, Any]:
        self.reconcile()
        return self.store.batch_info(batch_id)

    def wait_batch(self, batch_id: str, timeout: float | None = None, poll_s: float = 0.2,
                   on_update: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self.reconcile()
            info = self.store.batch_info(batch_id)
            if on_update:
                on_update(info)
            if info["done"] >= info["total"]:
                return info
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"batch {batch_id}: {info['done']}/{info['total']} done after {timeout}s")
            time.sleep(poll_s)

    def progress_steps(self, job_ids: list[str]) -> tuple[int, int]:
        """(steps done, steps total) summed over jobs: what a progress bar shows."""
        done = total = 0
        for rec in self.store.get_many(job_ids):
            steps = int(rec.request.get("steps") or 1)
            total += steps
            if rec.status.terminal:
                done += steps
            elif rec.progress:
                done += min(steps, int(rec.progress.get("step", 0)))
        return done, total

    # -- canceling -------------------------------------------------------------------------------
    def cancel(self, job_id: str) -> JobRecord:
        """Cancel a queued job at once, or a running one at its next step. Ended jobs stay as they are."""
        rec = self.store.get(job_id)
        if rec.status.terminal:
            return rec
        self.store.request_cancel(job_id)
        error = {"code": "canceled", "message": "canceled before it started"}
        t = self.store.transition(job_id, JobStatus.CANCELED, [Q], error=error)
        if t.ok and rec.request.get("webhook"):
            msg = self.store.message(job_id)
            result = JobResult(job_id=job_id, batch_id=rec.batch_id, custom_id=rec.custom_id,
                               status=JobStatus.CANCELED, model=rec.model, error=error)
            self.events.finished(msg, result, t.batch_done)
        return self.store.get(job_id)

    def cancel_batch(self, batch_id: str) -> dict[str, Any]:
        for job_id in self.store.batch_job_ids(batch_id):
            try:
                self.cancel(job_id)
            except JobNotFound:
                continue
        return self.store.batch_info(batch_id)

    # -- results ---------------------------------------------------------------------------------
    @property
    def links(self):
        """Fresh links to outputs (``storage.links.Links``), built on first use."""
        if self._links is None:
            from storage.links import open_links

            self._links = open_links(self.settings)
        return self._links

    def results(self, job_id: str) -> list[ImageResult]:
        rec = self.store.get(job_id)
        return list(rec.result.images) if rec.result else []

    def batch_results(self, batch_id: str) -> list[JobRecord]:
        return self.store.get_many(self.store.batch_job_ids(batch_id))

    def output(self, job_id: str, index: int) -> ImageResult:
        """Image ``index`` of a succeeded job; ``OutputNotFound`` names what exists."""
        rec = self.store.get(job_id)
        images = rec.result.images if rec.result else []
        for image in images:
            if image.index == index:
                return image
        if not images:
            raise OutputNotFound(f"job {job_id} has no outputs (it is {rec.status.value})")
        raise OutputNotFound(f"job {job_id} has no output {index}; its outputs are "
                             f"{', '.join(str(i.index) for i in images)}")

    def view(self, rec: JobRecord, base: str | None = None) -> dict[str, Any]:
        """A job as the API, webhooks and the CLI show it: outputs with links made now."""
        view = rec.to_dict()
        if rec.result is not None:
            view["outputs"] = [self.links.view(rec.job_id, i, base, stable=rec.tenant is not None)
                               for i in rec.result.images]
        if rec.status is JobStatus.QUEUED:
            from jobs.fairshare import queued_place

            try:
                view.update(queued_place(self.store.r, self.settings, rec.job_id, rec.model, rec.tenant, rec.request))
            except Exception as e:  # noqa: BLE001 - Redis away: the rest of the view still answers
                view["queue_position"] = None
                view["eta_basis"] = f"unavailable: {type(e).__name__}"
        return view

    # -- listing and retention -------------------------------------------------------------------
    def list_jobs(self, tenant: str | None = None, **filters: Any) -> tuple[list[JobRecord], str | None]:
        """A page of jobs, newest first, and the cursor of the next (``JobStore.list_jobs``)."""
        return self.store.list_jobs(tenant, **filters)

    def list_batches(self, tenant: str | None = None, **filters: Any) -> tuple[list[dict[str, Any]], str | None]:
        return self.store.list_batches(tenant, **filters)

    def delete(self, job_id: str, *, tombstone: bool = True) -> JobRecord:
        """Delete an ended job: images, thumbnails, provenance entries, record (``storage.retention``).
        ``JobNotEnded`` while it is queued or running: cancel it first."""
        from storage.retention import delete_job

        return delete_job(self.store, self.storage, self.provenance, job_id, tombstone=tombstone)

    def prune(self, older_than_s: float | None = None) -> dict[str, int]:
        """Delete ended jobs and batches created more than ``older_than_s`` ago (default: ``retention_s``)."""
        from storage.retention import prune

        return prune(self.store, self.storage, self.provenance,
                     self.settings.retention_s if older_than_s is None else older_than_s)

    @property
    def provenance(self):
        if self._provenance is None:
            from provenance.index import open_provenance_index

            self._provenance = open_provenance_index(self.settings)
        return self._provenance

    def close(self) -> None:
        """Release what this client opened: storage clients, the provenance index, Redis."""
        for part in (self._storage, self._provenance, self._prompt_pool):
            if part is not None:
                part.close()
        self.store.r.close()
