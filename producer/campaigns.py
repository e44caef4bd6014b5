"""Campaigns: plan (a dry run, priced from measured history), apply (only new and changed cells
render), status, and the manifest of results.

A campaign is identified by its tenant and name: applying a document with the same name again
updates it. Each apply reads the catalog twice, a row at a time — once to plan (every cell
validated, moderated, matched against the result cache and priced), once to submit — so nothing
is queued for a campaign that is refused, and memory stays bounded however many rows it has.

Redis, per campaign: ``campaign:{id}`` (a hash: document, last plan, counters),
``campaign:{id}:cells`` (cell id → JSON: row, key, sweep, content key, job, reused-from) and
``campaign:{id}:order`` (cell ids in catalog order). The result cache is
``cache:{tenant}:{content key}`` → the job that renders (or rendered) that content; a cell is
reused when that job succeeded, or is still queued or running (it will).
"""
from __future__ import annotations

import gc
import json
import logging
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

from jobs import callstats
from jobs.campaign import CampaignSpec, Cell, Expansion, canonical_spec, check_slots, content_key
from jobs.campaign_records import campaign_id, campaign_key, iter_cells, progress, tenant_campaigns_key
from jobs.errors import IdempotencyInProgress, InvalidRequest, JobNotFound, QuotaExceeded
from jobs.families import family, size_for
from jobs.names import job_key
from jobs.schemas import RenderRequest, resolve
from producer.catalog import Catalog, read_path
from producer.result_cache import REUSABLE, cache_key

log = logging.getLogger(__name__)
#: Cells evaluated (and looked up in the cache) per Redis round trip, and submitted per batch part.
CHUNK = 256
#: Refused cells listed in a plan (all are counted).
MAX_LISTED = 200
_REUSABLE = {s.value for s in REUSABLE}  # the rule plain jobs' cache: "reuse" follows


def expect_plan(client, rows: int) -> None:
    """A catalog of ``rows`` rows was uploaded (``POST /v1/files``, purpose ``campaign``): when its
    plan will check prompts in worker processes (more than one chunk), start them now
    (``Client.prompt_pool``), so the plan finds them running rather than starting them itself.
    Run after the upload's response; a failure is logged and the plan checks in process."""
    if rows <= CHUNK:
        return
    try:
        client.prompt_pool()
    except Exception:  # noqa: BLE001 - only a head start: the plan does without
        log.warning("could not start the prompt rules workers for an uploaded catalog", exc_info=True)


@contextmanager
def _young_collections_only():
    """CPython's automatic collections paused, and the young generation collected after each
    chunk instead (``_count``). A plan makes tens of short-lived containers per cell (requests,
    models, verdicts): in a 10,000-row plan the collector ran about 300 times, 30 of them over the
    middle generation and 2-3 over everything the process holds, 0.2-0.3 s in all (timed with
    ``gc.callbacks``); with them paused the plan took 13 % less on average (docs/benchmarks.md).
    Reference counting frees the cells either way; cyclic garbage made during a chunk is freed at
    its end, older cycles when the plan ends at the latest. Two plans at once (API threads) are
    fine: collection is turned back on by the plan that turned it off."""
    paused = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if paused:
            gc.enable()


def _where(cell: Cell) -> dict[str, Any]:
    """Where a refused cell is, as a refusal names it."""
    return {"row": cell.row, "row_key": cell.row_key, "cell": cell.cell_id,
            **({"sweep": cell.sweep} if cell.sweep else {})}


def _chunks(items: Iterator[Cell], size: int) -> Iterator[list[Cell]]:
    """``items`` in lists of ``size`` (the last shorter), read lazily."""
    chunk: list[Cell] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class CampaignNotFound(JobNotFound):
    code = "campaign_not_found"


class OverBudget(InvalidRequest):
    code = "over_budget"


class CampaignRefused(InvalidRequest):
    code = "cells_refused"



@dataclass
class Evaluated:
    cell: Cell
    request: RenderRequest | None = None      # resolved
    parsed: RenderRequest | None = None       # as the client would send it (submitted as such)
    key: str | None = None                     # content key
    refusal: dict[str, Any] | None = None
    reuse: str | None = None                   # job id whose result this cell takes


@dataclass
class Tally:
    """What a pass over the cells adds up to."""

    cells: int = 0
    masters: int = 0           # cells to render
    images: int = 0            # images those cells render
    renditions: int = 0        # renditions derived from them
    outpaints: int = 0         # extend renditions: renders of their own
    reused: int = 0
    refused: int = 0
    refusals: list[dict[str, Any]] = field(default_factory=list)
    rows: set[str] = field(default_factory=set)
    #: (model, width, height, steps, kind) → pipeline rows
    shapes: dict[tuple[str, int, int, int, str], int] = field(default_factory=dict)

    def add_shape(self, model: str, w: int, h: int, steps: int, kind: str, rows: int) -> None:
        k = (model, w, h, steps, kind)
        self.shapes[k] = self.shapes.get(k, 0) + rows


class Campaigns:
    def __init__(self, client, *, allow_paths: bool = False) -> None:
        self.client = client
        self.settings = client.settings
        self.r = client.store.r
        #: The CLI reads ``catalog.path`` from its own disk; the HTTP API never does.
        self.allow_paths = allow_paths
        #: (prompt, negative prompt, level) → this plan's decision (submission audits it, not again)
        self._verdicts: dict[tuple[str, str | None, str | None], Any] = {}
        self._decisions: dict[Any, Any] = {}
        self._specs: dict[str, Any] = {}

    # -- documents and catalogs ----------------------------------------------------------------------
    def catalog(self, tenant: str | None, spec: CampaignSpec) -> Catalog:
        ref, limit = spec.catalog, self.settings.campaign_max_rows
        if ref.rows is not None:
            return Catalog.from_rows(ref.rows, max_rows=limit)
        if ref.path is not None:
            if not self.allow_paths:
                raise InvalidRequest("invalid campaign: catalog.path is read by the CLI only; upload the file "
                                     "(POST /v1/files, purpose 'campaign') and give catalog.file_id",
                                     errors=[{"field": "catalog.path", "message": "use file_id over HTTP"}])
            cat = read_path(ref.path, limit)
        else:
            from producer.files import FileNotFound, Files

            files = Files(self.client)
            try:
                rec = files.get(tenant or "", ref.file_id or "")
            except FileNotFound:
                raise InvalidRequest(f"invalid campaign: catalog.file_id: no file {ref.file_id!r}",
                                     errors=[{"field": "catalog.file_id", "message": "no such file"}]) from None
            cat = Catalog.from_bytes(files.content(rec), filename=rec.filename, max_rows=limit)
        if ref.format:
            cat.format = ref.format
        return cat

    def cells(self, spec: CampaignSpec, catalog: Catalog) -> Iterator[Cell]:
        """Every cell, in catalog order; InvalidRequest (before the first cell where it can be known)
        for an unknown slot, a missing key column, a duplicate key, or too many cells."""
        columns = catalog.columns()
        check_slots(spec, columns)
        key = spec.catalog.key
        if key is not None and key not in columns:
            raise InvalidRequest(f"invalid campaign: catalog.key: the catalog has no column {key!r}; its columns: "
                                 f"{', '.join(columns[:40])}", errors=[{"field": "catalog.key",
                                                                       "message": f"no column {key!r}"}])
        per_row, limit = spec.cells_per_row, self.settings.campaign_max_cells
        if per_row > limit:
            raise InvalidRequest(f"invalid campaign: sweeps: the sweeps make {per_row} cells per row; a campaign "
                                 f"holds at most {limit} cells (BATCHRENDER_CAMPAIGN_MAX_CELLS)",
                                 errors=[{"field": "sweeps", "message": f"{per_row} cells per row > {limit}"}])
        expansion = Expansion(spec)
        seen: dict[str, int] = {}
        n = 0
        for row, values in catalog.rows():
            if key is not None:
                k = str(values.get(key, "")).strip()
                if not k:
                    raise InvalidRequest(f"invalid catalog: row {row}, column {key!r} (the key) is empty",
                                         errors=[{"field": "catalog", "row": row, "column": key, "message": "empty key"}])
                if k in seen:
                    raise InvalidRequest(f"invalid catalog: row {row}, column {key!r}: {k[:40]!r} is also the key of "
                                         f"row {seen[k]}; keys must be unique",
                                         errors=[{"field": "catalog", "row": row, "column": key, "message": "duplicate key"}])
                seen[k] = row
            n += per_row
            if n > limit:
                raise InvalidRequest(f"invalid campaign: sweeps: {row} rows × {per_row} cells per row pass the limit "
                                     f"of {limit} cells (BATCHRENDER_CAMPAIGN_MAX_CELLS)",
                                     errors=[{"field": "sweeps", "row": row, "message": f"more than {limit} cells"}])
            yield from expansion.cells(row, values, key)

    # -- evaluating cells ----------------------------------------------------------------------------
    def _spec(self, model: str):
        """A model's registry entry and its canonical JSON (content keys), read once per plan."""
        if model not in self._specs:
            spec = self.client.registry.get(model)
            self._specs[model] = (spec, canonical_spec(spec))
        return self._specs[model]

    def _moderate(self, tenant: str | None, req: RenderRequest, rules_verdicts=None):
        k = (req.prompt, req.negative_prompt, req.moderation)
        if k not in self._verdicts:
            if len(self._verdicts) > 50_000:
                self._verdicts.clear()
            decision = self.client.moderation.check_prompt(req.prompt, req.negative_prompt,
                                                           actor=tenant or "producer", audit_allowed=False,
                                                           level=req.moderation, rules_verdicts=rules_verdicts)
            # Decisions are values, and a catalog's are nearly all the same "allow": one object is
            # kept for each distinct one, not one per cell held until submission.
            self._verdicts[k] = self._decisions.setdefault(decision, decision)
        return self._verdicts[k]

    def _validate(self, tenant: str | None, cell: Cell) -> Evaluated:
        """A cell parsed and resolved against its model (a refusal when it is invalid)."""
        ev = Evaluated(cell)
        try:
            req = RenderRequest.parse(cell.request)
            spec, _ = self._spec(req.model)
            ev.parsed, ev.request = req, resolve(req, spec, self.settings)
            if req.image or req.mask or req.references:
                # Fetched through the SSRF guard and checked now, as submission will (Client.prepare):
                # a bad image refuses its cell in the plan, before anything is queued.
                self.client.prepare(req, tenant=tenant)
        except InvalidRequest as e:
            first = (e.errors or [{}])[0]
            ev.refusal = {**_where(cell), "code": e.code, "field": first.get("field"), "column": first.get("column"),
                          "message": e.message.removeprefix("invalid request: "), "errors": e.errors}
        return ev

    def _ask(self, pool, evs: list[Evaluated]):
        """Hand the prompts of a chunk's valid cells that this plan has not decided yet to a worker
        of ``pool`` (``safety.prompt_pool``): (the ticket or None, the prompts asked)."""
        if pool is None:
            return None, []
        pairs = list(dict.fromkeys((ev.request.prompt, ev.request.negative_prompt) for ev in evs
                                   if ev.refusal is None and ev.request is not None and
                                   (ev.request.prompt, ev.request.negative_prompt, ev.request.moderation)
                                   not in self._verdicts))
        ticket = pool.submit(pairs) if pairs else None
        return ticket, pairs if ticket is not None else []

    def _moderated(self, tenant: str | None, evs: list[Evaluated], ticket=None, pairs=()) -> list[Evaluated]:
        """Valid cells' prompts moderated (a refusal when blocked), then the content keys of those
        allowed. A chunk at a time, each step over the whole chunk: the moderation rules run back to
        back, which on a small CPU cache is markedly faster than one cell's steps after another's.
        ``ticket``: the rules' verdicts on ``pairs`` (prompt, negative prompt), from a worker."""
        given: dict[tuple[str, str | None], Any] = {}
        if ticket is not None:
            verdicts = ticket.verdicts(self.client.moderation.rules.allow)
            if verdicts is not None:  # else the worker is gone: checked here
                given = dict(zip(pairs, verdicts))
        valid = [ev for ev in evs if ev.refusal is None]
        for ev, decision in [(ev, self._moderate(tenant, ev.request, given.get(
                (ev.request.prompt, ev.request.negative_prompt)))) for ev in valid]:
            if decision.action.value == "block":
                info = decision.to_dict()
                ev.refusal = {**_where(ev.cell), "code": "moderation_blocked", "field": "prompt",
                              "message": info.get("message") or "blocked by the content policy",
                              "categories": info.get("categories", [])}
        for ev in valid:
            if ev.refusal is None:
                ev.key = content_key(ev.request, self._spec(ev.request.model)[1])
        return evs

    def _evaluated(self, tenant: str | None, spec: CampaignSpec, catalog: Catalog) -> Iterator[Evaluated]:
        """Cells evaluated a chunk at a time, with cache hits looked up per chunk (at most two round
        trips per chunk). From the second chunk on, the prompts are checked against the policy's
        rules in worker processes (``Client.prompt_pool``) while this process validates the next
        chunks; a few chunks are in flight at once, and they are finished in catalog order."""
        custom_ids: dict[str, int] = {}
        pool = None
        in_flight: deque[tuple[list[Evaluated], Any, list[tuple[str, str | None]]]] = deque()
        for n, cells in enumerate(_chunks(self.cells(spec, catalog), CHUNK)):
            if n == 1:
                pool = self.client.prompt_pool()  # more than one chunk: worth the workers
            evs = [self._validate(tenant, cell) for cell in cells]
            in_flight.append((evs, *self._ask(pool, evs)))
            # Ahead of the chunk it finishes, this process keeps every worker's queue full and one
            # more chunk per worker validated: it waits for a worker only when all are behind.
            while len(in_flight) > (1 + (pool.QUEUE + 1) * pool.size if pool is not None else 0):
                yield from self._finish(tenant, custom_ids, *in_flight.popleft())
        while in_flight:
            yield from self._finish(tenant, custom_ids, *in_flight.popleft())

    def _finish(self, tenant: str | None, custom_ids: dict[str, int], evs: list[Evaluated], ticket,
                pairs: list[tuple[str, str | None]]) -> list[Evaluated]:
        chunk = self._moderated(tenant, evs, ticket, pairs)
        for e in chunk:
            cell = e.cell
            cid_ = e.request.custom_id if e.request is not None else None
            if e.refusal is None and cid_ is not None:
                if cid_ in custom_ids:
                    e.refusal = {"row": cell.row, "row_key": cell.row_key, "cell": cell.cell_id,
                                 "code": "duplicate_custom_id", "field": "custom_id",
                                 "message": f"custom_id {cid_!r} is also row {custom_ids[cid_]}'s; results are "
                                            "joined on custom_id, so each cell's must be unique: put the key "
                                            "column and the sweep values in the pattern (e.g. {sku}-{style})"}
                    e.key = None
                else:
                    custom_ids[cid_] = cell.row
        return self._lookup(tenant, chunk)

    def _lookup(self, tenant: str | None, chunk: list[Evaluated]) -> list[Evaluated]:
        keyed = [e for e in chunk if e.key]
        if not keyed:
            return chunk
        hits = self.r.mget([cache_key(tenant, e.key or "") for e in keyed])
        found = [(e, j) for e, j in zip(keyed, hits) if j]
        if found:
            with self.r.pipeline(transaction=False) as p:
                for _e, j in found:
                    p.hmget(job_key(j), "status", "tenant")
                states = p.execute()
            for (e, j), (status, owner) in zip(found, states):
                if status in _REUSABLE and (owner or None) == (tenant or None):
                    e.reuse = j
        return chunk

    # -- plan ----------------------------------------------------------------------------------------
    def _tally(self, tenant: str | None, spec: CampaignSpec, catalog: Catalog,
               on_cell=None) -> Tally:
        t = Tally()
        with _young_collections_only():
            self._count(tenant, spec, catalog, t, on_cell)
        return t

    def _count(self, tenant: str | None, spec: CampaignSpec, catalog: Catalog, t: Tally, on_cell) -> None:
        seen: set[str] = set()
        for e in self._evaluated(tenant, spec, catalog):
            if t.cells % CHUNK == 0:
                gc.collect(0)
            t.cells += 1
            if e.key and not e.reuse and e.key in seen:
                e.reuse = "(an earlier cell of this apply)"  # the same content twice: rendered once
            elif e.key:
                seen.add(e.key)
            t.rows.add(e.cell.row_key)
            if on_cell is not None:
                on_cell(e)
            if e.refusal is not None:
                t.refused += 1
                if len(t.refusals) < MAX_LISTED:
                    t.refusals.append(e.refusal)
                continue
            if e.reuse:
                t.reused += 1
                continue
            r = e.request
            assert r is not None and r.width and r.height and r.steps
            t.masters += 1
            t.images += r.num_images
            t.renditions += r.num_images * len(r.renditions or [])
            strength = r.strength if r.image is not None else None
            extends = r.extends
            t.add_shape(r.model, r.width, r.height, callstats.denoised_steps(r.steps, strength),
                        callstats.kind_of(False, strength), r.num_images * (r.renders_per_image - len(extends)))
            if extends:
                fam = family(self.client.registry.get(r.model).family)
                base = self.client.registry.get(r.model).base_size
                for x in extends:
                    w, h = size_for(x.ratio, base, fam)
                    t.outpaints += r.num_images
                    t.add_shape(r.model, w, h, r.steps, "inpaint", r.num_images)

    def _price(self, t: Tally) -> dict[str, Any]:
        """GPU-seconds per shape from the fleet's measured calls, an ETA against the live queue, a cost."""
        by_shape, total, unmeasured = [], 0.0, []
        per_model: dict[str, float] = {}
        for (model, w, h, steps, kind), rows in sorted(t.shapes.items()):
            est = callstats.estimate(self.r, model=model, width=w, height=h, steps=steps, kind=kind)
            entry: dict[str, Any] = {"model": model, "width": w, "height": h, "steps": steps, "kind": kind, "rows": rows}
            if est is None:
                entry.update(gpu_seconds=None, source="unmeasured",
                             note=f"no call of model {model!r} has been measured yet: render one job with it first")
                unmeasured.append(entry)
            else:
                seconds = est.seconds_per_row * rows
                entry.update(gpu_seconds=round(seconds, 3), **est.to_dict())
                total += seconds
                per_model[model] = per_model.get(model, 0.0) + seconds
            by_shape.append(entry)
        complete = not unmeasured
        eta = self._eta(per_model) if complete else None
        price = self.settings.gpu_second_price
        cost = round(total * price, 6) if price is not None and complete else None
        return {"gpu_seconds": {"total": round(total, 3) if complete else None, "measured_total": round(total, 3),
                                "complete": complete, "by_shape": by_shape},
                "eta": eta,
                "cost": {"amount": cost, "currency": self.settings.currency, "price_per_gpu_second": price,
                         **({} if price is not None else {"note": "BATCHRENDER_GPU_SECOND_PRICE is not set"})}}

    def _eta(self, per_model: dict[str, float]) -> dict[str, Any]:
        models, finish = {}, 0.0
        for model, seconds in per_model.items():
            snap = callstats.queue_snapshot(self.r, model)
            workers = int(snap.get("workers") or 0)
            ahead = snap.get("ahead_gpu_seconds")
            if ahead is None:
                spr = snap.get("seconds_per_row")
                ahead = (snap.get("queued_rows") or snap.get("queued_jobs") or 0) * (spr or 0.0)
            eta_s = (ahead + seconds) / workers if workers else None
            models[model] = {**snap, "campaign_gpu_seconds": round(seconds, 3),
                             "eta_s": None if eta_s is None else round(eta_s, 1)}
            if eta_s is None:
                finish = float("nan")
            elif finish == finish:
                finish = max(finish, eta_s)
        known = finish == finish and models
        return {"seconds": round(finish, 1) if known else None,
                "at": round(time.time() + finish, 1) if known else None,
                "by_model": models,
                **({} if known else {"note": "no live worker serves some model of this campaign"})}

    def _summary(self, spec: CampaignSpec, t: Tally, previous_rows: set[str]) -> dict[str, Any]:
        priced = self._price(t)
        budget = spec.budget
        fits, reasons = True, []
        gpu_total = priced["gpu_seconds"]["total"]
        cost = priced["cost"]["amount"]
        price_missing = "budget.max_cost needs a price: set BATCHRENDER_GPU_SECOND_PRICE"
        for name, limit, planned, shown, missing in (
                ("max_gpu_seconds", budget and budget.max_gpu_seconds, gpu_total,
                 lambda v: f"planned {v:.1f} GPU-seconds", None),
                ("max_cost", budget and budget.max_cost, cost,
                 lambda v: f"planned cost {v:.4f} {self.settings.currency}",
                 price_missing if self.settings.gpu_second_price is None else None)):
            if limit is None:
                continue
            if missing or planned is None or planned > limit:
                fits = False
                reasons.append(missing or (
                    f"the plan cannot price {self._unmeasured(priced)}, so {name} cannot be checked: render one "
                    "job with that model first, or leave the budget out" if planned is None else
                    f"{shown(planned)} exceeds budget.{name} {limit:g}"))
        removed = sorted(previous_rows - t.rows)
        return {
            "cells": t.cells, "masters": t.masters, "images": t.images, "renditions": t.renditions,
            "outpaint_renders": t.outpaints, "reused": t.reused, "refused": t.refused,
            "refusals": t.refusals, "removed_rows": removed[:MAX_LISTED], "removed_row_count": len(removed),
            **priced,
            "budget": {**(budget.model_dump() if budget else {}), "fits": fits, "reasons": reasons},
        }

    @staticmethod
    def _unmeasured(priced: dict[str, Any]) -> str:
        models = sorted({x["model"] for x in priced["gpu_seconds"]["by_shape"] if x["source"] == "unmeasured"})
        return "model " + ", ".join(repr(m) for m in models) + " (never measured on this fleet)"

    def plan(self, tenant: str | None, spec: CampaignSpec, catalog: Catalog | None = None) -> dict[str, Any]:
        """A dry run: nothing is queued or written."""
        cat = catalog or self.catalog(tenant, spec)
        self._check_webhook(spec)
        t = self._tally(tenant, spec, cat)
        cid = campaign_id(tenant, spec.name)
        return {"id": cid, "name": spec.name, "dry_run": True,
                "plan": self._summary(spec, t, self._previous_rows(cid))}

    def _check_webhook(self, spec: CampaignSpec) -> None:
        if spec.webhook:
            from producer.submit import check_webhook

            check_webhook(RenderRequest(prompt="-", webhook=spec.webhook), self.settings)

    def _previous_rows(self, cid: str) -> set[str]:
        rows: set[str] = set()
        for _k, raw in self.r.hscan_iter(f"{campaign_key(cid)}:cells", count=1000):
            rows.add(json.loads(raw)["row_key"])
        return rows

    # -- apply ---------------------------------------------------------------------------------------
    def apply(self, tenant: str | None, spec: CampaignSpec, catalog: Catalog | None = None, *,
              skip_refused: bool = False) -> dict[str, Any]:
        """Plan, refuse (cells refused by validation or moderation, over budget, over quota), then
        submit only the cells whose content is not already rendered or rendering."""
        cat = catalog or self.catalog(tenant, spec)
        self._check_webhook(spec)
        cid = campaign_id(tenant, spec.name)
        previous = self._previous_rows(cid)
        t = self._tally(tenant, spec, cat)
        summary = self._summary(spec, t, previous)
        if t.refused and not skip_refused:
            listed = "; ".join(f"row {x['row']} ({x['row_key']}): {x['message']}" for x in t.refusals[:5])
            raise CampaignRefused(f"{t.refused} of {t.cells} cells are refused, nothing was queued: {listed}"
                                  f"{' ...' if t.refused > 5 else ''}; fix those rows, or apply with skip_refused",
                                  errors=t.refusals)
        if not summary["budget"]["fits"]:
            raise OverBudget("the campaign is over its budget, nothing was queued: " + "; ".join(summary["budget"]["reasons"]),
                             errors=[{"field": "budget", "message": m} for m in summary["budget"]["reasons"]])
        lock = f"{campaign_key(cid)}:applying"
        if not self.r.set(lock, "1", nx=True, ex=600):
            raise IdempotencyInProgress(f"campaign {spec.name!r} is being applied by another request; retry when it "
                                        "has finished")
        try:
            return self._apply(tenant, spec, cat, cid, t, summary)
        finally:
            self.r.delete(lock)

    def _apply(self, tenant, spec: CampaignSpec, cat: Catalog, cid: str, t: Tally, summary: dict[str, Any]
               ) -> dict[str, Any]:
        applied = int(self.r.hincrby(campaign_key(cid), "applies", 1))
        if tenant and t.masters:
            from producer.submit import reserve_capacity

            reserve_capacity(self.client, tenant, t.masters)
        batch_id = f"bat_{cid[4:]}_{applied}" if t.masters else None
        staging = f"{campaign_key(cid)}:staging:{applied}"
        counts = {"submitted": 0, "reused": 0, "refused": 0}
        held = [t.masters if tenant else 0]  # reserved slots not yet handed to submit_batch
        failure: BaseException | None = None
        try:
            self._submit_cells(tenant, spec, cat, cid, batch_id, t.masters, staging, counts, held)
        except BaseException as e:  # noqa: BLE001 - recorded below, then raised
            failure = e
        finally:
            if held[0] > 0:
                self.client.store.release(tenant, held[0])
        if batch_id and counts["submitted"] == 0:
            batch_id = None  # nothing was recorded: no batch
        elif batch_id and counts["submitted"] < t.masters:
            # Cells that became reuses between the passes, or an apply stopped half-way: the batch
            # holds what was queued, and completes (with its events) when those jobs end.
            if self.client.store.shrink_batch(batch_id, t.masters - counts["submitted"]) is not None:
                self._completed_now(tenant, spec, cid)
        now = time.time()
        staged = counts["submitted"] + counts["reused"] + counts["refused"]
        with self.r.pipeline(transaction=True) as p:
            # This apply's cells replace the last one's at once (cells of removed rows go with them).
            for part in ("cells", "order"):
                if staged:
                    p.rename(f"{staging}:{part}", f"{campaign_key(cid)}:{part}")
                else:
                    p.delete(f"{campaign_key(cid)}:{part}")
            p.hsetnx(campaign_key(cid), "created_at", repr(now))
            p.hset(campaign_key(cid), mapping={
                "id": cid, "tenant": tenant or "", "name": spec.name, "updated_at": repr(now),
                "document": spec.model_dump_json(), "batch_id": batch_id or "", "plan": json.dumps(summary),
                "applied": json.dumps(counts)})
            ttl = self.settings.record_ttl_s
            for k in (campaign_key(cid), f"{campaign_key(cid)}:cells", f"{campaign_key(cid)}:order"):
                p.expire(k, ttl)
            p.zadd(tenant_campaigns_key(tenant), {cid: now})
            p.execute()
        if failure is not None:
            # What was queued is in the campaign's cells; the rest was not: applying again submits it.
            raise failure
        if not batch_id:
            self._completed_now(tenant, spec, cid)
        return {"id": cid, "name": spec.name, "dry_run": False, "apply": applied, "batch_id": batch_id,
                "plan": summary, "applied": counts}

    def _submit_cells(self, tenant, spec: CampaignSpec, cat: Catalog, cid: str, batch_id: str | None,
                      planned: int, staging: str, counts: dict[str, int], held: list[int]) -> None:
        pending: list[Evaluated] = []
        meta = {"campaign_id": cid, "campaign": spec.name}
        #: content key → the job of this apply that renders it (None until its part is submitted)
        rendering: dict[str, str | None] = {}

        def flush() -> None:
            nonlocal pending
            if not pending:
                return
            if counts["submitted"] + len(pending) > planned:
                # More to render than planned (cached jobs failed between the passes): never more than planned.
                raise InvalidRequest("the campaign changed while it was being applied (cached results went away); "
                                     "apply it again")
            reqs = []
            for e in pending:
                assert e.parsed is not None
                # The request as parsed, not resolved: submission resolves it (resolving twice would
                # turn references into an image, then refuse both).
                reqs.append(e.parsed.model_copy(update={"webhook": spec.webhook} if spec.webhook else {}))
            first = counts["submitted"] == 0
            reserved = min(len(reqs), held[0])
            held[0] -= reserved  # submit_batch now owns these slots: records keep them, it gives back the rest
            sub = self.client.submit_batch(reqs, tenant=tenant, batch_id=batch_id, meta=meta,
                                           reserved=reserved, total=planned, append=not first,
                                           decided=self._verdicts)
            if sub.errors:
                # Refused at submission though the plan passed it (an image gone since): the others of
                # this part are queued and recorded; this cell is not.
                bad = {i for i, _e in sub.errors}
                done = [e for i, e in enumerate(pending) if i not in bad]
                self._record_part(staging, done, sub.job_ids, counts, rendering, tenant)
                pending = []
                raise sub.errors[0][1]
            self._record_part(staging, pending, sub.job_ids, counts, rendering, tenant)
            pending = []

        with self.r.pipeline(transaction=False) as p:
            p.delete(f"{staging}:cells", f"{staging}:order")
            p.execute()
        buffered: list[Evaluated] = []
        order: list[str] = []  # cell ids in catalog order, whenever their records are written
        for e in self._evaluated(tenant, spec, cat):
            order.append(e.cell.cell_id)
            if len(order) >= CHUNK:
                self.r.rpush(f"{staging}:order", *order)
                self.r.expire(f"{staging}:order", 3600)
                order = []
            if e.key and not e.reuse and e.key in rendering:
                # The same content as an earlier cell of this apply: rendered once, by that cell.
                if rendering[e.key] is None:
                    flush()
                e.reuse = rendering[e.key]
            elif e.key and not e.reuse:
                rendering[e.key] = None
            if e.refusal is not None:
                counts["refused"] += 1
                buffered.append(e)
            elif e.reuse:
                counts["reused"] += 1
                buffered.append(e)
            else:
                pending.append(e)
                if len(pending) >= CHUNK:
                    flush()
            if len(buffered) >= CHUNK:
                self._write_staged(staging, buffered)
                buffered = []
        flush()
        self._write_staged(staging, buffered)
        if order:
            self.r.rpush(f"{staging}:order", *order)

    def _record_part(self, staging: str, items: list[Evaluated], job_ids: list[str], counts: dict[str, int],
                     rendering: dict[str, str | None], tenant: str | None) -> None:
        with self.r.pipeline(transaction=False) as p:
            for e, job in zip(items, job_ids):
                rendering[e.key or ""] = job
                p.set(cache_key(tenant, e.key or ""), job, ex=self.settings.record_ttl_s)
                self._stage(p, staging, e, job=job)
            p.expire(f"{staging}:cells", 3600)
            p.execute()
        counts["submitted"] += len(items)

    def _write_staged(self, staging: str, items: list[Evaluated]) -> None:
        if not items:
            return
        with self.r.pipeline(transaction=False) as p:
            for e in items:
                self._stage(p, staging, e, job=e.reuse)
            p.expire(f"{staging}:cells", 3600)
            p.execute()

    @staticmethod
    def _stage(p, staging: str, e: Evaluated, job: str | None) -> None:
        c = e.cell
        record = {"row": c.row, "row_key": c.row_key, "sweep": c.sweep, "cell": c.cell_id,
                  "custom_id": (e.request.custom_id if e.request else c.request.get("custom_id")),
                  "key": e.key, "job_id": job, "reused_from": e.reuse,
                  "refused": e.refusal}
        p.hset(f"{staging}:cells", c.cell_id, json.dumps(record, default=str))

    def _completed_now(self, tenant: str | None, spec: CampaignSpec, cid: str) -> None:
        """Nothing to render (every cell reused or refused): the campaign is complete at once."""
        if not spec.webhook:
            return
        from webhooks.campaign_events import send_campaign_completed

        send_campaign_completed(self.client, cid)

    # -- reading -------------------------------------------------------------------------------------
    def record(self, tenant: str | None, cid: str) -> dict[str, Any]:
        h = self.r.hgetall(campaign_key(cid))
        if not h or (h.get("tenant") or None) != (tenant or None):
            raise CampaignNotFound(f"no campaign {cid!r}")
        return h

    def iter_cells(self, cid: str) -> Iterator[list[dict[str, Any]]]:
        """The campaign's cells in catalog order, a chunk at a time."""
        return iter_cells(self.r, cid)

    def status(self, tenant: str | None, cid: str) -> dict[str, Any]:
        """The campaign, its last plan, and progress: cells done of total, GPU-seconds spent against planned."""
        h = self.record(tenant, cid)
        plan = json.loads(h.get("plan") or "{}")
        prog, counts = progress(self.r, cid, (plan.get("gpu_seconds") or {}).get("total"))
        return {"id": cid, "name": h.get("name"), "created_at": float(h.get("created_at") or 0),
                "updated_at": float(h.get("updated_at") or 0), "applies": int(h.get("applies") or 0),
                "batch_id": h.get("batch_id") or None,
                "status": "completed" if prog["cells_done"] >= prog["cells_total"] else "in_progress",
                "progress": prog,
                "counts": counts, "applied": json.loads(h.get("applied") or "{}"), "plan": plan,
                "document": json.loads(h.get("document") or "{}")}

    def list(self, tenant: str | None, limit: int = 50) -> list[dict[str, Any]]:
        ids = self.r.zrevrange(tenant_campaigns_key(tenant), 0, limit - 1)
        out = []
        for cid in ids:
            h = self.r.hmget(campaign_key(cid), "name", "updated_at", "applies", "batch_id")
            if h[0]:
                out.append({"id": cid, "name": h[0], "updated_at": float(h[1] or 0), "applies": int(h[2] or 0),
                            "batch_id": h[3] or None})
        return out

    def manifest(self, tenant: str | None, cid: str, base: str | None = None) -> Iterator[dict[str, Any]]:
        """One line per delivered file (each master, then its renditions), and one per cell without
        images (refused, failed, still running): row, sweep values, rendition, status, links, C2PA
        state and where a reused result came from."""
        self.record(tenant, cid)
        links = self.client.links
        for cells in self.iter_cells(cid):
            jobs = [c["job_id"] for c in cells if c.get("job_id")]
            recs = {}
            for rec in self.client.store.get_many(jobs):
                if rec is not None:
                    recs[rec.job_id] = rec
            for c in cells:
                common = {"row": c["row"], "row_key": c["row_key"], "cell": c["cell"], "sweep": c.get("sweep") or {},
                          "custom_id": c.get("custom_id"), "job_id": c.get("job_id"),
                          "reused_from": c.get("reused_from")}
                if c.get("refused"):
                    yield {**common, "status": "refused", "rendition": None, "error": c["refused"].get("message")}
                    continue
                rec = recs.get(c.get("job_id"))
                if rec is None:
                    yield {**common, "status": "expired", "rendition": None, "error": "the job's record is gone"}
                    continue
                status = rec.status.value
                images = rec.result.images if rec.result else []
                if not images:
                    yield {**common, "status": status, "rendition": None,
                           "error": (rec.error or {}).get("message") if rec.error else None}
                    continue
                for image in images:
                    view = links.view(rec.job_id, image, base, stable=rec.tenant is not None)
                    yield {**common, "status": status, "image": image.index, "rendition": "master",
                           "width": image.width, "height": image.height, "format": image.format.value,
                           "url": view.get("url"), "download_url": view.get("download_url"),
                           "thumbnail_url": view.get("thumbnail_url"),
                           "c2pa": image.c2pa, "sha256": image.sha256}
                    for rv in view.get("renditions") or []:
                        yield {**common, "status": status, "image": image.index, "rendition": rv.get("name"),
                               "width": rv.get("width"), "height": rv.get("height"), "format": rv.get("format"),
                               "fit": rv.get("fit"), "url": rv.get("url"), "download_url": rv.get("download_url"),
                               "c2pa": rv.get("c2pa"), "sha256": rv.get("sha256"), "master_sha256": image.sha256}


MANIFEST_COLUMNS = ["row", "row_key", "cell", "sweep", "custom_id", "job_id", "reused_from", "status", "image",
                    "rendition", "fit", "width", "height", "format", "url", "download_url", "c2pa", "sha256",
                    "master_sha256", "error"]


def manifest_csv_line(line: dict[str, Any]) -> list[str]:
    out = []
    for col in MANIFEST_COLUMNS:
        v = line.get(col)
        out.append("" if v is None else json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else str(v))
    return out


__all__ = ["Campaigns", "CampaignNotFound", "OverBudget", "CampaignRefused", "campaign_id", "cache_key",
           "MANIFEST_COLUMNS", "manifest_csv_line", "QuotaExceeded"]
