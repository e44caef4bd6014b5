"""The render pipeline for a group of compatible jobs, in numbered stages.

1. claim     each job, as its call starts: queued/running → running, by this worker (a redelivered
             job is claimed again; a finished, canceled or blocked one is skipped, so a
             redelivery never renders twice). Not when it is pulled for a later call: a job
             waiting in a busy worker's session stays ``queued`` and may be handed back to the
             queue for an idle worker (worker/batching.py, docs/scheduling.md)
2. moderate  the prompt, before any GPU time (blocked → ``blocked``, nothing rendered); a job that
             ends here is claimed first, so its record reads "taken, then refused"
3. load      the model (cached per process); a job whose prompt the model cannot read whole
             (SD3/FLUX past 511 T5 tokens) fails here, alone, before the call
4. render    one pipeline call; progress and cancellation at every step
5. deliver   per image: output moderation, encode, sign, store under deterministic keys, index
6. finish    result record, terminal status, events

A job's Celery message is acknowledged only after this returns (late acks), i.e. after its
outputs are stored; a crash anywhere before that redelivers it.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from jobs import callstats, leases
from jobs.callstats import worker_id
from jobs.errors import BatchRenderError, InvalidRequest, PermanentError, TimeLimitExceeded, TransientError
from jobs.logs import job_context
from jobs.metrics import PIPELINE_CALLS, PIPELINE_ROWS, RENDER_BUSY, job_timed
from jobs.names import KEY_PREFIX, input_key, mask_key, reference_key
from jobs.retry import RetryPolicy, WorkerLost
from jobs.schemas import MAX_SEED, ImageResult, JobMessage, JobResult, Timings, limit_errors
from jobs.status import JobStatus
from worker.conditioning import pipeline_prompts
from worker.context import WorkerContext
from worker.colour import palette_report
from worker.deliver import Delivered, as_delivered, deliver_image
from worker.prompts import prompt_tokens, t5_window_error
from worker.render import CallShape, RenderItem, StepHook, render
from worker.renditions import Extended, extend_canvas

log = logging.getLogger(__name__)
Q, R = JobStatus.QUEUED, JobStatus.RUNNING
#: Seconds spent inside pipeline calls, summed over workers (the benchmark's GPU-idle figure).
STATS_BUSY_KEY = f"{KEY_PREFIX}stats:render_busy_s"
#: Pipeline calls and the rows they rendered, padding included (the benchmark's padding-waste figure).
STATS_CALLS_KEY = f"{KEY_PREFIX}stats:pipeline_calls"
STATS_ROWS_KEY = f"{KEY_PREFIX}stats:rows_rendered"


@dataclass
class Outcome:
    job_id: str
    status: JobStatus
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class Live:
    """A claimed job that passed prompt moderation and still needs rendering."""

    msg: JobMessage
    flags: dict[str, Any] | None
    #: When its call started and claimed it (until then, when it was admitted).
    claimed_at: float
    #: The decoded reference image, for image-to-image jobs, and its inpainting mask.
    image: Any = None
    mask: Any = None
    #: The decoded references an IP-Adapter reads.
    references: tuple = ()
    #: Claimed (stage 1) by this worker: set when its call starts.
    claimed: bool = False


@dataclass
class Rendered:
    """A job's images from one pipeline call (``outcome`` set when it ended instead: canceled)."""

    live: Live
    images: list[Any]
    timings: Timings
    outcome: Outcome | None = None
    #: Tokens of the prompt the text encoder read (worker/prompts.py).
    prompt_tokens: int | None = None
    #: Per image, its ``extend`` renditions' outpainted canvases by name (worker/renditions.py).
    extended: list[dict[str, Extended]] | None = None


Progress = Callable[[str, int, int], None]


def tried_step(k: int, step: int, steps: int, tries: int) -> int:
    """The progress step to report at step ``step`` of try ``k`` (0-based) of a job rendered up to
    ``tries`` times (palette_strict), in the job's own ``steps``: the tries share the steps, so
    progress never goes back and reaches ``steps`` only at the last try's last step. One try: ``step``."""
    return (k * steps + step) // tries


def is_interactive(x: Live) -> bool:
    """Someone waits on this job (``priority: interactive``): it renders and is delivered first."""
    return x.msg.request.priority == "interactive"


def group_by_shape(live: list[Live], max_rows: int = 0) -> list[list[Live]]:
    """Jobs that can share one pipeline call, in arrival order, packed to at most ``max_rows``
    images per group (a job with more images than that gets a group of its own).

    Interactive jobs (``priority: interactive``) go first: into the first call of their shape, and
    a shape holding one goes before the others. They are not rendered alone: a call is padded to
    its full row count (worker/render.py), so a call of one job takes as long as a full one."""
    hot = [x for x in live if is_interactive(x)]
    by_shape: dict[CallShape, list[Live]] = {}
    for x in hot + [x for x in live if not is_interactive(x)]:
        by_shape.setdefault(shape_of(x.msg), []).append(x)
    out: list[list[Live]] = []
    for jobs in by_shape.values():
        group: list[Live] = []
        rows = 0
        for x in jobs:
            n = x.msg.request.num_images
            if group and max_rows and rows + n > max_rows:
                out.append(group)
                group, rows = [], 0
            group.append(x)
            rows += n
        if group:
            out.append(group)
    return out


def references_used(msg: JobMessage) -> dict[str, Any] | None:
    """What became of a job's ``references``: all read by the IP-Adapter, or the first used for
    image-to-image (a model without one)."""
    if msg.reference_keys:
        return {"given": len(msg.reference_keys), "used": len(msg.reference_keys), "method": "ip_adapter"}
    if msg.references_given:
        return {"given": msg.references_given, "used": 1, "method": "image_to_image"}
    return None


def shape_of(msg: JobMessage) -> CallShape:
    r = msg.request
    assert r.width and r.height and r.steps and r.guidance_scale is not None
    return CallShape(r.model, r.width, r.height, r.steps, float(r.guidance_scale),
                     float(r.strength) if msg.input_key and r.strength is not None else None,
                     inpaint=bool(msg.mask_key), references=msg.job_id if msg.reference_keys else None)


class JobRunner:
    def __init__(self, ctx: WorkerContext, rows_per_call: int = 0) -> None:
        self.ctx = ctx
        #: Every pipeline call runs at this many rows (padded) so pixels never depend on batching.
        self.rows_per_call = rows_per_call
        #: Seconds spent inside pipeline calls (for the GPU-idle figure).
        self.busy_s = 0.0
        self.policy = RetryPolicy.from_settings(ctx.settings)

    # 1. claim ------------------------------------------------------------------------------------
    def claim(self, msg: JobMessage) -> Outcome | None:
        """Take the job for this worker; an Outcome means there is nothing (more) to do."""
        store = self.ctx.store
        if store.status(msg.job_id) is None:
            # The record expired or the producer died after sending: rebuild it from the message.
            store.create(msg)
        if store.cancel_requested(msg.job_id):
            store.transition(msg.job_id, JobStatus.CANCELED, [Q, R])
            self.ctx.events.emit("job.canceled", msg)
            return Outcome(msg.job_id, JobStatus.CANCELED, {"reason": "canceled before start"})
        # The claim names this process; its lease says it is alive (jobs/leases.py): the job sweep
        # re-sends a running job with no message only once that lease has expired.
        leases.hold(store.r, worker_id())
        t = store.transition(msg.job_id, R, [Q, R], started_at=repr(time.time()), worker=worker_id())
        if not t.ok:
            # Redelivered after it ended: render nothing, but send its terminal events again (a
            # worker may have died between the transition and the events; they are deduplicated).
            self._reemit(msg)
            return Outcome(msg.job_id, t.current or JobStatus.FAILED, {"reason": "already ended; skipped"})
        if msg.batch_id:
            store.mark_published([msg.job_id])  # a worker has it: never reconcile it as not_queued
        attempts, retries = store.bump_attempts(msg.job_id)
        try:
            self.policy.check_claim(attempts, retries)
            self.recheck(msg)
        except (WorkerLost, InvalidRequest, TimeLimitExceeded) as e:
            return self.fail(msg, e, retryable=False)
        self.ctx.events.emit("job.started", msg)
        return None

    def recheck(self, msg: JobMessage) -> None:
        """Never trust a message: the tenant must exist and be enabled, and the request must be
        within today's limits (they may have changed while it waited). InvalidRequest if not."""
        s, r = self.ctx.settings, msg.request
        if msg.tenant:
            state = self.ctx.store.tenant_state(msg.tenant)
            if state != "active":
                raise InvalidRequest(f"tenant {msg.tenant} is {state or 'unknown'}: its jobs are not rendered",
                                     errors=[{"field": "tenant", "message": state or "unknown"}])
        if msg.reference_keys != [reference_key(msg.job_id, i) for i in range(len(msg.reference_keys))]:
            raise InvalidRequest("the references must be the job's own uploads",
                                 errors=[{"field": "references", "message": "not this job's references"}])
        if (msg.input_key and msg.input_key != input_key(msg.job_id)) or \
                (msg.mask_key and msg.mask_key != mask_key(msg.job_id)):
            raise InvalidRequest("the reference image and mask must be the job's own uploads",
                                 errors=[{"field": "image", "message": "not this job's reference"}])
        used = self.ctx.store.time_used(msg.job_id)  # on Redis's clock: attempts may run on other hosts
        if used > s.job_time_limit_s:
            raise TimeLimitExceeded(f"the job has been rendering for {used:.0f} s over its attempts; the limit is "
                                    f"{s.job_time_limit_s} s (BATCHRENDER_JOB_TIME_LIMIT_S)")
        errors = limit_errors(r.width or 0, r.height or 0, r.steps or 0, r.num_images, r.prompt, s,
                              tries=r.renders_per_image)
        if errors:
            raise InvalidRequest("invalid request: " + "; ".join(f"{x['field']}: {x['message']}" for x in errors),
                                 errors=errors)

    def precheck(self, msg: JobMessage) -> tuple[Outcome | None, bool]:
        """Before stage 2, without claiming: a job that ended already or whose cancel was asked for
        is claimed now, which ends it (``claim``); a record that expired is rebuilt.
        Returns ``(ended, claimed)``."""
        store = self.ctx.store
        status = store.status(msg.job_id)
        if status is None:
            store.create(msg)  # the record expired or the producer died after sending
            return None, False
        if status.terminal or store.cancel_requested(msg.job_id):
            done = self.claim(msg)
            return done, done is None
        return None, False

    def _refuse(self, msg: JobMessage, claimed: bool, end: Callable[[], Outcome]) -> Outcome:
        """End a job at stage 2. One not claimed yet is claimed first (attempts, ``job.started``:
        its record reads as it always did, taken and then refused); when the claim itself ends
        it (canceled or ended meanwhile, out of attempts), that outcome stands."""
        if not claimed:
            taken = self.claim(msg)
            if taken is not None:
                return taken
        return end()

    # 2. moderate ---------------------------------------------------------------------------------
    def check_reference(self, msg: JobMessage, claimed: bool = True) -> tuple[Outcome | None, Any, Any, bool]:
        """Image-to-image: load the stored reference (and mask) and check them again (never trust
        a message): ``(ended, image, mask, real_person_context)``."""
        if not msg.input_key:
            return None, None, None, False
        checked = []
        for what, key in (("reference image", msg.input_key), ("mask", msg.mask_key)):
            if key is None:
                checked.append(None)
                continue
            try:
                data = self.ctx.storage.get(key)
            except KeyError:
                return self._refuse(msg, claimed, lambda: self.fail(
                    msg, PermanentError(f"{what} {key!r} is missing from storage"), retryable=False)), None, None, False
            check = self.ctx.moderation.check_input_image(data, actor=msg.tenant or "worker", job_id=msg.job_id)
            if check.decision.blocked:
                return self._refuse(msg, claimed, lambda: self.fail(
                    msg, PermanentError(f"the {what} was refused: {check.decision.message}"),
                    retryable=False)), None, None, False
            checked.append(check)
        image, mask = checked
        return None, image.image, mask.image if mask else None, image.real_person_context or msg.real_person_context

    def check_references(self, msg: JobMessage, claimed: bool = True) -> tuple[Outcome | None, tuple, bool]:
        """IP-Adapter references: each loaded from storage and checked again by the input-image
        stage: ``(ended, images, real_person_context)``."""
        images, faces = [], False
        for i, key in enumerate(msg.reference_keys):
            try:
                data = self.ctx.storage.get(key)
            except KeyError:
                return self._refuse(msg, claimed, lambda: self.fail(
                    msg, PermanentError(f"reference {i} ({key!r}) is missing from storage"), retryable=False)), (), False
            check = self.ctx.moderation.check_input_image(data, actor=msg.tenant or "worker", job_id=msg.job_id)
            if check.decision.blocked:
                return self._refuse(msg, claimed, lambda: self.fail(
                    msg, PermanentError(f"reference {i} was refused: {check.decision.message}"),
                    retryable=False)), (), False
            images.append(check.image)
            faces = faces or check.real_person_context
        return None, tuple(images), faces

    def moderate_prompt(self, msg: JobMessage, real_person_context: bool = False, claimed: bool = True
                        ) -> tuple[Outcome | None, dict[str, Any] | None]:
        # The chain appends every decision to the audit log itself (a prompt hash, not the prompt).
        decision = self.ctx.moderation.check_prompt(msg.request.prompt, msg.request.negative_prompt,
                                                    real_person_context=real_person_context,
                                                    actor=msg.tenant or "worker", job_id=msg.job_id,
                                                    level=msg.request.moderation)
        if decision.action.value == "block":
            info = decision.to_dict()

            def block() -> Outcome:
                self._end(msg, JobStatus.BLOCKED, error={
                    "code": "moderation_blocked", "message": decision.message,
                    "stage": info.get("blocking_stage"), "categories": info.get("categories", []),
                }, moderation=info)
                return Outcome(msg.job_id, JobStatus.BLOCKED, info)
            return self._refuse(msg, claimed, block), None
        return None, (decision.to_dict() if decision.action.value == "flag" else None)

    # the whole pipeline, in phases the batching session can schedule separately -----------------
    def admit(self, msgs: list[JobMessage]) -> tuple[dict[str, Outcome], list[Live]]:
        """Stage 2 for each job, before its call (the batching session runs it while the previous
        call renders): the ones that ended, and the ones still to render. Nothing is claimed here
        unless it ends here (``_refuse``): the live ones are claimed when their call starts
        (``render_group``), so a job prepared for a later call still reads ``queued`` and can be
        handed to an idle worker instead."""
        ended: dict[str, Outcome] = {}
        live: list[Live] = []
        for msg in msgs:
            with job_context(msg.job_id):  # every log line of these stages names the job
                done, claimed = self.precheck(msg)
                flags = image = mask = None
                refs: tuple = ()
                real_person = False
                if done is None:
                    done, image, mask, real_person = self.check_reference(msg, claimed)
                if done is None and msg.reference_keys:
                    done, refs, faces = self.check_references(msg, claimed)
                    real_person = real_person or faces
                if done is None:
                    done, flags = self.moderate_prompt(msg, real_person, claimed)
            if done is not None:
                ended[msg.job_id] = done
            else:
                live.append(Live(msg, flags, time.time(), image, mask, refs, claimed=claimed))
        return ended, live

    def start(self, live: list[Live]) -> tuple[list[Live], dict[str, Rendered]]:
        """Stage 1 for the jobs of a call that is starting: each is claimed now. Returns the ones
        to render and, by job id, the ones the claim ended (canceled or ended meanwhile, out of
        attempts, no longer within limits)."""
        go: list[Live] = []
        ended: dict[str, Rendered] = {}
        for x in live:
            if not x.claimed:
                with job_context(x.msg.job_id):
                    done = self.claim(x.msg)
                if done is not None:
                    ended[x.msg.job_id] = Rendered(x, [], Timings(), done)
                    continue
                x.claimed, x.claimed_at = True, time.time()
            go.append(x)
        return go, ended

    def run(self, msgs: list[JobMessage], progress: Progress | None = None) -> list[Outcome]:
        """All stages for a list of jobs, one after another (the unbatched path)."""
        outcomes, live = self.admit(msgs)
        for group in group_by_shape(live, self.rows_per_call):
            rendered = self.render_group(group, progress)
            for item in rendered:
                outcomes[item.live.msg.job_id] = item.outcome or self.deliver(item)
        return [outcomes[m.job_id] for m in msgs]

    def render_group(self, live: list[Live], progress: Progress | None = None) -> list[Rendered]:
        """Stage 1 (each job claimed as its call starts), then stages 3-4 for jobs of one shape
        (logged with every job id of the call). Jobs the claim ends come back ended."""
        go, ended = self.start(live)
        if go:
            with job_context(*[x.msg.job_id for x in go]):
                ended.update({item.live.msg.job_id: item for item in self._render_group(go, progress)})
        return [ended[x.msg.job_id] for x in live]

    def _render_group(self, live: list[Live], progress: Progress | None = None) -> list[Rendered]:
        """Stages 3-4 for jobs of one shape: one pipeline call. Canceled jobs come back ended, and so
        does a job whose prompt the model cannot read whole (SD3/FLUX past their T5 limit): it
        fails alone, before the call, and the others of its group render."""
        shape = shape_of(live[0].msg)
        assert all(shape_of(x.msg) == shape for x in live), "jobs in one call must share a shape"
        spec = self.ctx.registry.get(shape.model)
        loaded, load_s = self.ctx.models.get(spec)
        # Hex codes named, palette and keyable backdrop added (worker/conditioning.py).
        items = [RenderItem(*pipeline_prompts(x.msg.request), tuple(x.msg.seeds), x.image, x.mask, x.references)
                 for x in live]
        # Per job, here rather than at admission: only the loaded pipeline has the T5 tokenizer, and
        # this is the render thread (a fast tokenizer must not be used from two threads at once).
        refused: dict[str, Rendered] = {}
        for x, item in zip(live, items):
            r = x.msg.request
            error = t5_window_error(loaded.pipe, shape.model, item.prompt, item.negative_prompt or "",
                                    conditioned=(item.prompt, item.negative_prompt or "")
                                    != (r.prompt, r.negative_prompt or ""))
            if error is not None:
                log.info("job %s refused before its call: %s", x.msg.job_id, error.message)
                refused[x.msg.job_id] = Rendered(x, [], Timings(), self.fail(x.msg, error, retryable=False))
        keep = [i for i, x in enumerate(live) if x.msg.job_id not in refused]
        rendered = self._render_call(loaded, load_s, shape, [live[i] for i in keep], [items[i] for i in keep],
                                     progress) if keep else []
        by_id = {**refused, **{item.live.msg.job_id: item for item in rendered}}
        return [by_id[x.msg.job_id] for x in live]

    def _render_call(self, loaded, load_s: float, shape: CallShape, live: list[Live], items: list[RenderItem],
                     progress: Progress | None) -> list[Rendered]:
        """The pipeline call (and palette re-renders) for jobs that passed every check."""
        loaded.prepare_for(shape.width, shape.height, self.rows_per_call or sum(len(x.msg.seeds) for x in live))
        store = self.ctx.store
        ids = [x.msg.job_id for x in live]
        last_write = [0.0]
        started = time.monotonic()
        timed_out = [False]
        shown: dict[str, int] = {}  # the last progress step recorded per job

        def report(x: Live, step: int, total: int) -> None:
            # Progress is best effort: a Redis blip must not abort a render (the job store retries
            # each command first; what still fails is skipped this step).
            if step < shown.get(x.msg.job_id, 0):
                return  # a round of re-renders or extends in several calls restarts its steps per call
            try:
                store.set_progress(x.msg.job_id, step, total)
                self.ctx.events.progress(x.msg, step, total)
                if progress:
                    progress(x.msg.job_id, step, total)
                shown[x.msg.job_id] = step
            except TransientError as e:
                log.warning("progress of job %s not recorded: %s", x.msg.job_id, e)

        def step_hook(k: int, jobs: list[Live]) -> StepHook:
            """The step callback of try ``k`` of ``jobs`` (0: the first call; 1+: palette re-renders)."""
            def on_step(step: int, total: int) -> bool:
                now = time.monotonic()
                if step == total or now - last_write[0] > 0.2:
                    last_write[0] = now
                    for x in jobs:
                        report(x, tried_step(k, step, total, x.msg.request.renders_per_image), total)
                # Celery's time limits do not apply to the solo pool, so the render keeps its own.
                if now - started > self.ctx.settings.soft_time_limit_s:
                    timed_out[0] = True
                    return True
                # Stop only when every job in the call is canceled; others still need their images.
                try:
                    return all(store.cancel_requested(j) for j in ids)
                except TransientError:
                    return False
            return on_step

        calls = [0, 0, 0]  # pipeline calls, rows with a job's image, rows rendered (padding included)
        measured: list[tuple[CallShape, int, float]] = []  # per finished call, for jobs/callstats.py

        def on_call(rows: int, rendered: int, call: CallShape | None = None, seconds: float | None = None) -> None:
            calls[0] += 1
            calls[1] += rows
            calls[2] += rendered
            if call is not None and seconds is not None:
                measured.append((call, rendered, seconds))

        t0 = time.perf_counter()
        images = render(loaded.pipe, loaded.device, shape, items, step_hook(0, live), self.rows_per_call, on_call)
        strict = [x for x in live if x.msg.request.palette_strict]
        if images is not None and strict:
            images = self.keep_best_palette(loaded.pipe, loaded.device, shape, live, items, images, step_hook,
                                            on_call)
        extended: list[list[dict[str, Extended]]] | None = [[{} for _ in x.msg.seeds] for x in live]
        if images is not None and any(x.msg.request.extends for x in live):
            extended = self.extend(loaded, shape, live, items, images, step_hook, on_call)
            if extended is None:
                images = None
        # A job whose images passed before its last try: its rendering is done all the same.
        for x in live if images is not None else []:
            if (x.msg.request.palette_strict or x.msg.request.extends) and shown.get(x.msg.job_id, 0) < shape.steps:
                report(x, shape.steps, shape.steps)
        render_s = time.perf_counter() - t0
        self.busy_s += render_s
        RENDER_BUSY.inc(render_s)
        PIPELINE_CALLS.inc(calls[0])
        PIPELINE_ROWS.labels(kind="image").inc(calls[1])
        PIPELINE_ROWS.labels(kind="padding").inc(calls[2] - calls[1])
        # Per call, not per task: a session's task ends after its last job is already visible.
        with self.ctx.store.r.pipeline(transaction=False) as p:
            p.incrbyfloat(STATS_BUSY_KEY, render_s)
            p.incrby(STATS_CALLS_KEY, calls[0])
            p.incrby(STATS_ROWS_KEY, calls[2])
            p.execute()
        callstats.record_calls(self.ctx.store.r, measured)  # per shape, for planning; never raises
        if images is None:
            if timed_out[0]:
                err = PermanentError(f"render exceeded the time limit of {self.ctx.settings.soft_time_limit_s}s")
                return [Rendered(x, [], Timings(), self.fail(x.msg, err, retryable=False)) for x in live]
            return [Rendered(x, [], Timings(), self._canceled(x.msg)) for x in live]
        out = []
        assert extended is not None
        for x, imgs, item, ext in zip(live, images, items, extended):
            timings = Timings(queue_wait_s=max(0.0, x.claimed_at - x.msg.submitted_at), load_s=load_s,
                              render_s=render_s / len(live), batch_size=len(live))
            # Rendered alongside others, but its owner gave up: discard, never deliver.
            ended = self._canceled(x.msg) if store.cancel_requested(x.msg.job_id) else None
            out.append(Rendered(x, imgs, timings, ended, prompt_tokens(loaded.pipe, item.prompt), ext))
        return out

    def extend(self, loaded, shape: CallShape, live: list[Live], items: list[RenderItem], images: list[list[Any]],
               step_hook: Callable[[int, list[Live]], StepHook],
               on_call: Callable[..., None] | None = None) -> list[list[dict[str, Extended]]] | None:
        """``extend`` renditions: each image outpainted to each such rendition's ratio, on a canvas
        of the model's native size for that ratio (worker/renditions.py ``extend_canvas``), by the
        inpainting pipeline at strength 1.0 with the job's prompts and the image's seed. Here, on
        the render thread, after the image's own call (and palette re-renders); one call per
        canvas size and rendition position, at the usual rows per call. Every call goes to
        ``on_call``; progress is round ``k`` = the image's tries + the rendition's position, of
        ``renders_per_image``. None when a call was interrupted (canceled or out of time)."""
        from jobs.families import family, size_for

        spec = self.ctx.registry.get(shape.model)
        fam = family(getattr(spec, "family", "sd15"))
        out: list[list[dict[str, Extended]]] = [[{} for _ in imgs] for imgs in images]
        # (canvas size, round k) -> [(job, image, rendition, canvas, mask, placement, seed)]
        calls: dict[tuple[tuple[int, int], int], list[tuple]] = {}
        for j, x in enumerate(live):
            r = x.msg.request
            first = r.palette_tries if r.palette_strict else 1
            for e, rendition in enumerate(r.extends):
                size = size_for(rendition.ratio, spec.base_size, fam)
                for i, img in enumerate(images[j]):
                    canvas, mask, placement = extend_canvas(img, rendition.ratio, size)
                    seed = img.info.get("palette_seed", items[j].seeds[i])
                    calls.setdefault((size, first + e), []).append((j, i, rendition, canvas, mask, placement, seed))
        for ((w, h), k), rows in calls.items():
            call_shape = CallShape(shape.model, w, h, shape.steps, shape.guidance_scale, strength=1.0, inpaint=True,
                                   references=shape.references)
            loaded.prepare_for(w, h, self.rows_per_call or len(rows))
            jobs = [live[j] for j in dict.fromkeys(row[0] for row in rows)]
            painted = render(loaded.pipe, loaded.device, call_shape, [
                RenderItem(items[j].prompt, items[j].negative_prompt, (seed,), canvas, mask, items[j].references)
                for j, _, _, canvas, mask, _, seed in rows], step_hook(k, jobs), self.rows_per_call, on_call)
            if painted is None:
                return None
            for (j, i, rendition, _, _, placement, seed), (img,) in zip(rows, painted):
                out[j][i][rendition.name] = Extended(img, placement, seed)
        return out

    #: ``scorer(image, palette) -> {"score": 0-1, "passes": bool, ...}``; tests inject a stand-in.
    palette_scorer: Callable[[Any, list[str]], dict[str, Any]] = staticmethod(palette_report)

    def keep_best_palette(self, pipe, device: str, shape: CallShape, live: list[Live], items: list[RenderItem],
                          images: list[list[Any]], step_hook: Callable[[int, list[Live]], StepHook],
                          on_call: Callable[..., None] | None = None) -> list[list[Any]] | None:
        """``palette_strict``: an image whose palette does not pass is rendered again with the next
        seed (image i of n tries seed + i + k·n, k < palette_tries), until one passes or the tries
        run out; the best-scoring render is kept, its seed and every try recorded on the image
        (``info``) for delivery. One pipeline call per round for all images still trying, at the
        usual rows per call, so a kept image is pixel-identical to a plain render of its seed.
        None when a re-render was interrupted (canceled or out of time).

        Every re-render call goes to ``on_call`` (the pipeline-row statistics count it like any
        call). Progress: ``step_hook(k, jobs)`` is the step callback of round ``k`` for the jobs
        still trying. A job's progress stays in its own steps (``total`` = the request's steps,
        what clients and ``job.progress`` webhooks read) and spreads its palette_tries over them
        (``tried_step``): it never goes back, and reaches ``total`` at the last try's last step,
        or, when an image passes sooner, once the tries end.
        """
        best: dict[tuple[int, int], tuple[float, Any, int]] = {}
        tries: dict[tuple[int, int], list[tuple[int, float]]] = {}
        trying: list[tuple[int, int]] = []

        def judge(j: int, i: int, img, seed: int) -> bool:
            x = live[j].msg
            delivered, _ = as_delivered(self.ctx, x, img)
            verdict = self.palette_scorer(delivered, x.request.requested_palette)
            score = float(verdict["score"])
            tries.setdefault((j, i), []).append((seed, score))
            if (j, i) not in best or score > best[(j, i)][0]:
                best[(j, i)] = (score, img, seed)
            return bool(verdict["passes"])

        for j, x in enumerate(live):
            if x.msg.request.palette_strict:
                for i, (img, seed) in enumerate(zip(images[j], items[j].seeds)):
                    if not judge(j, i, img, seed):
                        trying.append((j, i))
        for k in range(1, max((live[j].msg.request.palette_tries for j, _ in trying), default=1)):
            trying = [(j, i) for j, i in trying if k < live[j].msg.request.palette_tries]
            if not trying:
                break
            seeds = [(items[j].seeds[i] + k * len(items[j].seeds)) % (MAX_SEED + 1) for j, i in trying]
            jobs = [live[j] for j in dict.fromkeys(j for j, _ in trying)]
            again = render(pipe, device, shape, [
                RenderItem(items[j].prompt, items[j].negative_prompt, (seed,), items[j].image, items[j].mask,
                           items[j].references)
                for (j, i), seed in zip(trying, seeds)], step_hook(k, jobs), self.rows_per_call, on_call)
            if again is None:
                return None
            trying = [(j, i) for (j, i), seed, (img,) in zip(trying, seeds, again) if not judge(j, i, img, seed)]
        out = [list(imgs) for imgs in images]
        for (j, i), (_, img, seed) in best.items():
            img.info["palette_seed"], img.info["palette_tries"] = seed, tries[(j, i)]
            out[j][i] = img
        return out

    def deliver(self, item: Rendered) -> Outcome:
        """Stages 5-6 for one rendered job; thread-safe, so it can run off the GPU's critical path."""
        with job_context(item.live.msg.job_id):
            return self._deliver(item.live.msg, item.images, item.timings, item.live.flags, item.prompt_tokens,
                                 item.extended)

    def _deliver(self, msg: JobMessage, imgs, timings: Timings, flags, prompt_tokens: int | None = None,
                 extended: list[dict[str, Extended]] | None = None) -> Outcome:
        t0 = time.perf_counter()
        results: list[ImageResult] = []
        for index, (img, seed) in enumerate(zip(imgs, msg.seeds)):
            d: Delivered = deliver_image(self.ctx, msg, index, seed, img,
                                         extended[index] if extended and index < len(extended) else None)
            if d.blocked is not None:
                rerolled = self._maybe_reroll(msg, d.blocked)
                if rerolled is not None:
                    return rerolled
                self._end(msg, JobStatus.BLOCKED, error={
                    "code": "moderation_blocked", "message": d.blocked.get("message", "output withheld"),
                    "stage": d.blocked.get("blocking_stage"), "categories": d.blocked.get("categories", []),
                }, moderation=d.blocked, timings=timings)
                return Outcome(msg.job_id, JobStatus.BLOCKED, d.blocked)
            results.append(d.image)
        timings.postprocess_s = time.perf_counter() - t0
        self._end(msg, JobStatus.SUCCEEDED, images=results, timings=timings, moderation=flags,
                  prompt_tokens=prompt_tokens)
        return Outcome(msg.job_id, JobStatus.SUCCEEDED, {"images": len(results)})

    def _maybe_reroll(self, msg: JobMessage, blocked: dict[str, Any]) -> Outcome | None:
        """Output classifiers misfire; below the operator's severity, try again with a new seed.

        The job goes back on its queue with a fresh base seed (recorded in the job's request),
        rather than being re-rendered here: this runs in a post-processing thread, and a pipeline
        must not be called from two threads at once.
        """
        s = self.ctx.settings
        if (msg.reroll >= s.moderation_reroll_max or self.ctx.publish is None
                or int(blocked.get("severity", 99)) >= s.moderation_reroll_below_severity):
            return None
        assert msg.request.seed is not None
        again = msg.model_copy(update={
            "reroll": msg.reroll + 1,
            "request": msg.request.model_copy(update={"seed": (msg.request.seed + 7919 * (msg.reroll + 1)) % 2**32}),
        })
        t = self.ctx.store.transition(msg.job_id, Q, [R], request=again.request.model_dump_json(),
                                      error={"code": "rerolled", "message": "an output was withheld by moderation; "
                                             f"re-rendering with a new seed (attempt {again.reroll})"})
        if not t.ok:
            return None
        self.ctx.publish(again)
        return Outcome(msg.job_id, JobStatus.QUEUED, {"reroll": again.reroll})

    def _canceled(self, msg: JobMessage) -> Outcome:
        self._end(msg, JobStatus.CANCELED, error={"code": "canceled", "message": "canceled while running; "
                                                  "its half-made images were discarded"})
        return Outcome(msg.job_id, JobStatus.CANCELED)

    def fail(self, msg: JobMessage, exc: BaseException, *, retryable: bool) -> Outcome:
        """Record a final failure (permanent error, exhausted retries, or an unexpected bug)."""
        if isinstance(exc, BatchRenderError):
            error = self._public(msg, exc)
        else:
            # A bug or a library's own error: its text (tensor shapes, paths, hosts) is for the
            # operator's log (every caller has logged its traceback); the job says so in the
            # project's words, with the id to look it up by.
            log.error("job %s failed with an internal error: %s: %s", msg.job_id, type(exc).__name__, exc)
            error = {"code": "internal_error", "message": f"the worker hit an internal error rendering this job; "
                     f"the operator can find it in the worker's log under {msg.job_id}"}
        error["retryable"] = retryable
        status = JobStatus.CANCELED if error.get("code") == "canceled" else JobStatus.FAILED
        self._end(msg, status, error=error)
        return Outcome(msg.job_id, status, error)

    def requeue(self, msg: JobMessage, exc: TransientError) -> None:
        """A transient failure: back to queued (a retry is scheduled), keeping the reason visible."""
        if self.ctx.store.transition(msg.job_id, Q, [R], error=self._public(msg, exc)).ok:
            self.ctx.store.bump_retries(msg.job_id)

    @staticmethod
    def _public(msg: JobMessage, exc: BatchRenderError) -> dict[str, Any]:
        """The error as the job's record keeps it (a tenant reads it): an error whose message names
        the deployment's insides (storage paths, Redis hosts) shows its public message, and the
        log keeps the message under the job's id."""
        if exc.public_message is not None:
            log.warning("job %s: %s: %s", msg.job_id, exc.code, exc.message)
        return exc.to_public_dict()

    def _end(self, msg: JobMessage, status: JobStatus, *, images: list[ImageResult] | None = None,
             timings: Timings | None = None, moderation=None, error=None, prompt_tokens: int | None = None) -> None:
        result = JobResult(job_id=msg.job_id, batch_id=msg.batch_id, custom_id=msg.request.custom_id,
                           status=status, model=msg.request.model, images=images or [],
                           timings=timings or Timings(), moderation=moderation, error=error,
                           prompt_tokens=prompt_tokens, references=references_used(msg))
        fields: dict[str, Any] = {"result": result.model_dump_json()}
        if error is not None:
            fields["error"] = error
        t = self.ctx.store.transition(msg.job_id, status, [Q, R], **fields)
        if not t.ok:
            log.info("job %s already %s; not recording %s", msg.job_id, t.current, status.value)
            if t.already:
                self._reemit(msg)
            return
        if status is JobStatus.SUCCEEDED and timings is not None:
            job_timed(queue_wait_s=timings.queue_wait_s, render_s=timings.render_s, postprocess_s=timings.postprocess_s)
        self.ctx.events.finished(msg, result, batch_done=t.batch_done)
        if status in (JobStatus.FAILED, JobStatus.CANCELED):
            self._remove_leftovers(msg)  # after the events: storage that is slow delays nothing

    def _remove_leftovers(self, msg: JobMessage) -> None:
        """A job that failed (or was canceled) keeps no outputs: delete what an attempt that died
        after storing, or one that failed half-way, left under its keys, which no record names and
        no delete or retention would find (measured: 2 such objects in a chaos run of 320 jobs and
        36 worker kills). Best effort: storage that is away leaves them, logged."""
        from storage.links import job_output_keys

        for key in job_output_keys(self.ctx.settings, msg):
            try:
                self.ctx.storage.delete(key)
            except Exception as e:  # noqa: BLE001 - the job has ended either way
                log.warning("job %s ended without outputs; could not delete %s: %s", msg.job_id, key, e)
                return

    def _reemit(self, msg: JobMessage) -> None:
        """Send the terminal events of a job that already ended, from its stored result.

        Event ids derive from (job, type), so events that were sent before are not sent twice;
        this only fills in what a crash between "ended" and "events enqueued" left out,
        ``batch.completed`` included.
        """
        store = self.ctx.store
        rec = store.get(msg.job_id)
        if not rec.status.terminal or rec.result is None:
            return
        done = None
        if rec.batch_id:
            info = store.batch_info(rec.batch_id)
            done = info["done"] if info["done"] >= info["total"] else None
        self.ctx.events.finished(msg, rec.result, batch_done=done)


__all__ = ["JobRunner", "Outcome", "shape_of", "PermanentError"]
