"""A campaign plan whose prompts are checked in worker processes (safety/prompt_pool.py) is the
plan checked in one process: the same cells, refusals (by moderation, by validation, duplicate
custom ids), keys and prices (issue 23). Real Redis, real worker processes."""
from __future__ import annotations

import pytest

from tests.conftest import TEST_KEYS

pytestmark = pytest.mark.timeout(600)


def catalog(n: int) -> list[dict[str, str]]:
    rows = [{"sku": f"m-{i:04d}", "colour": ("red", "teal", "oak")[i % 3], "name": f"model q{i:04d}x",
             "steps": "2"} for i in range(n)]
    rows[300]["name"] = "nude child"          # blocked by the policy, in the second chunk
    rows[650]["name"] = "a naked 12 year old"  # and in the third
    rows[520]["steps"] = "9999"                # over the step limit: refused by validation
    rows[610]["name"] = rows[613]["name"] = "model twin"  # same colour too: the same custom_id
    return rows


def plan_env(tmp_path, redis_url: str, **extra: str) -> dict[str, str]:
    """A planning client's environment: its own home and file storage, the test's Redis."""
    return {"BATCHRENDER_HOME": str(tmp_path / "home"), "BATCHRENDER_REDIS_URL": redis_url,
            "BATCHRENDER_STORAGE_URL": (tmp_path / "out").as_uri(), "BATCHRENDER_STORAGE_SHARED": "1",
            **TEST_KEYS, **extra}


def plan_with(client, spec) -> dict:
    from producer.campaigns import Campaigns

    out = Campaigns(client).plan(None, spec)["plan"]
    out.pop("eta")  # "at" is a clock reading
    return out


def test_a_plan_checked_by_workers_is_the_plan_checked_in_one_process(tmp_path, redis_url, client_for,
                                                                      monkeypatch):
    from jobs.campaign import CampaignSpec
    from safety.prompt_pool import PromptRulesPool

    env = plan_env(tmp_path, redis_url)
    rows = catalog(700)
    spec = CampaignSpec.parse({"v": 1, "name": "pool", "catalog": {"rows": rows, "key": "sku"},
                               "template": {"prompt": "a {colour} ceramic mug {name}, product photo",
                                            "negative_prompt": "text",
                                            "fields": {"model": "tiny", "steps": "{steps}", "width": 64,
                                                       "height": 64, "custom_id": "{colour}-{name}"}}})
    alone = plan_with(client_for({**env, "BATCHRENDER_CAMPAIGN_PLAN_WORKERS": "0"}), spec)

    pooled_client = client_for({**env, "BATCHRENDER_CAMPAIGN_PLAN_WORKERS": "2"})
    pool = pooled_client.prompt_pool()
    for w in pool._workers:  # ready before the plan, so every chunk after the first is theirs
        assert w.ready.wait(180) and not w.gone
    handed: list[int] = []
    submit = PromptRulesPool.submit

    def counted(self, prompts):
        ticket = submit(self, prompts)
        handed.append(len(prompts) if ticket is not None else 0)
        return ticket

    monkeypatch.setattr(PromptRulesPool, "submit", counted)
    pooled = plan_with(pooled_client, spec)

    assert pooled == alone
    assert sum(handed) >= 400  # the workers checked most prompts
    by_code = {}
    for r in alone["refusals"]:
        by_code.setdefault(r["code"], []).append(r["row"])
    assert by_code.pop("moderation_blocked") == [301, 651]
    assert by_code.pop("duplicate_custom_id") == [614]
    assert list(by_code.values()) == [[521]]  # the step limit
    assert alone["cells"] == 700 and alone["masters"] == 696


def test_uploading_a_large_catalog_starts_the_plan_workers(tmp_path, redis_url, client_for, tenants):
    """POST /v1/files (purpose campaign) of a catalog of more than one chunk starts the prompt rules
    workers after its response (producer.campaigns.expect_plan), so the plan that follows finds them
    running; a small catalog or a batch file starts none."""
    import httpx

    from producer.api import create_app
    from tests.integration.test_api_http_client import ApiServer
    from tests.workers import wait_for

    env = plan_env(tmp_path, redis_url, BATCHRENDER_CAMPAIGN_PLAN_WORKERS="1")
    who = tenants.create("uploader")
    auth = {"Authorization": f"Bearer {who.api_key}"}

    def csv(n: int) -> bytes:
        return ("sku,colour,name\n" + "".join(f"m-{i},red,model {i}\n" for i in range(n))).encode()

    client = client_for(env)
    with ApiServer(create_app(client.settings, client=client)) as server, \
            httpx.Client(base_url=server.url, timeout=60) as api:
        def upload(name: str, data: bytes, purpose: str = "campaign") -> None:
            resp = api.post("/v1/files", headers=auth, data={"purpose": purpose},
                            files={"file": (name, data, "text/csv" if name.endswith(".csv") else "application/jsonl")})
            assert resp.status_code in (200, 201), resp.text

        upload("small.csv", csv(200))
        upload("batch.jsonl", b'{"prompt": "a mug"}\n' * 400, purpose="batch")
        assert client._prompt_pool is None, "no plan of more than one chunk is coming"
        upload("large.csv", csv(300))
        # (the pool is set before its start() has added the worker: wait for both)
        wait_for(lambda: client._prompt_pool is not None and client._prompt_pool._workers, timeout=60,
                 what="the upload to start the workers")
        pool = client._prompt_pool
        assert len(pool._workers) == 1
        assert pool._workers[0].ready.wait(180) and not pool._workers[0].gone


def test_a_plan_collects_only_young_garbage_and_turns_collection_back_on(tmp_path, redis_url, client_for):
    """While a plan counts its cells, CPython's automatic collections are paused and the young
    generation is collected after each chunk (producer.campaigns._young_collections_only): cyclic
    garbage made during the plan is freed within a chunk, and collection is on again afterwards,
    also when the plan fails, and stays off when the caller had turned it off."""
    import gc
    import weakref

    from jobs.campaign import CampaignSpec
    from producer.campaigns import CHUNK, Campaigns

    env = plan_env(tmp_path, redis_url, BATCHRENDER_CAMPAIGN_PLAN_WORKERS="0")
    campaigns = Campaigns(client_for(env))
    spec = CampaignSpec.parse({"v": 1, "name": "gc", "catalog": {"rows": catalog(700), "key": "sku"},
                               "template": {"prompt": "a {colour} mug {name}",
                                            "fields": {"model": "tiny", "width": 64, "height": 64}}})
    cat = campaigns.catalog(None, spec)

    class Cycle:
        def __init__(self) -> None:
            self.me = self

    made: list[weakref.ref] = []
    enabled: set[bool] = set()

    def on_cell(_e) -> None:
        enabled.add(gc.isenabled())
        made.append(weakref.ref(Cycle()))  # garbage at once, freed only by a collection

    assert gc.isenabled()
    t = campaigns._tally(None, spec, cat, on_cell=on_cell)
    assert t.cells == 700 and enabled == {False} and gc.isenabled()
    # each chunk's cycles are freed by the next young collection: only the last chunk's can be left
    assert sum(ref() is not None for ref in made) < CHUNK

    def fail(_e) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        campaigns._tally(None, spec, cat, on_cell=fail)
    assert gc.isenabled()
    gc.disable()
    try:
        campaigns._tally(None, spec, cat)
        assert not gc.isenabled()  # the caller's choice stands
    finally:
        gc.enable()
