"""The fair-share dispatch (jobs/fairshare.py) on real Redis: order between tenants by weight,
inside a tenant by priority and deadline, work conservation, and where a queued job stands."""
from __future__ import annotations

import itertools

import pytest
import redis

from jobs import fairshare
from jobs.names import job_key, render_queue, tenant_key
from jobs.schemas import JobMessage, RenderRequest
from jobs.settings import Settings

_ids = itertools.count()


@pytest.fixture
def r(redis_url):
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def settings(tmp_path):
    return Settings(home=tmp_path)


def queue(r, settings, tenant, n=1, *, priority="normal", at=1000.0, images=1, size=64, deliver_by=None):
    """Record ``n`` queued jobs of ``tenant`` (as the producer does) and put them in its lane."""
    ids = []
    for i in range(n):
        msg = JobMessage(job_id=f"job_{next(_ids)}", tenant=tenant, submitted_at=at + i * 1e-3,
                         request=RenderRequest(prompt="p", width=size, height=size, steps=4, num_images=images,
                                               priority=priority, deliver_by=deliver_by))
        r.hset(job_key(msg.job_id), mapping={"status": "queued", "tenant": tenant or "",
                                             "message": msg.model_dump_json()})
        fairshare.enqueue(r, msg, settings)
        ids.append(msg.job_id)
    return ids


def tenant_of(r, job_id):
    return r.hget(job_key(job_id), "tenant")


def drain(r, n, model="tiny"):
    """Dispatch ``n`` jobs one at a time (the queue is kept empty), as workers take them."""
    d = fairshare.Dispatcher(None, r)
    out = []
    for _ in range(n):
        got = d.pop(model, want=1)
        if not got:
            break
        out.append(got[0][0])
    return out


def test_equal_tenants_alternate_and_a_late_tenant_is_served_next(r, settings):
    a = queue(r, settings, "ten_a", 50, priority="bulk")
    first = drain(r, 10)
    assert first == a[:10], "alone, a tenant has every turn (work-conserving)"
    b = queue(r, settings, "ten_b", 3, priority="interactive", at=1001.0)
    nxt = [tenant_of(r, j) for j in drain(r, 6)]
    assert nxt[0] == "ten_b", "the new tenant's job goes next, not after the 40 queued before it"
    assert nxt.count("ten_b") == 3 and nxt.count("ten_a") == 3, nxt
    assert "ten_b,ten_b,ten_b" not in ",".join(nxt), f"no credit for idle time: they take turns ({nxt})"
    assert drain(r, 100)[-1] == a[-1]
    assert not r.exists(fairshare.state_key("tiny")) and not r.smembers(fairshare.lanes_key("tiny")), \
        "empty lanes reset the virtual clock"
    assert b


def test_weights_two_to_one_share_render_work_two_to_one(r, settings):
    r.hset(tenant_key("ten_a"), "weight", "2")
    queue(r, settings, "ten_a", 300)
    queue(r, settings, "ten_b", 300)
    got = [tenant_of(r, j) for j in drain(r, 300)]
    share = got.count("ten_a") / got.count("ten_b")
    assert 1.9 <= share <= 2.1, share


def test_shares_are_of_render_work_not_of_jobs(r, settings):
    """A tenant whose jobs are 4 images each gets a quarter as many jobs through as one of 1 image."""
    queue(r, settings, "ten_a", 100, images=4)
    queue(r, settings, "ten_b", 200, images=1)
    got = [tenant_of(r, j) for j in drain(r, 100)]
    assert got.count("ten_b") == pytest.approx(4 * got.count("ten_a"), abs=4)


def test_inside_a_tenant_interactive_goes_first_and_bulk_waits_a_bounded_time(r, settings):
    bulk = queue(r, settings, "ten_a", 3, priority="bulk", at=1000.0)
    normal = queue(r, settings, "ten_a", 1, priority="normal", at=1001.0)
    inter = queue(r, settings, "ten_a", 1, priority="interactive", at=1002.0)
    assert drain(r, 2) == [inter[0], normal[0]]
    # An interactive job submitted after the bulk jobs' delay (600 s) no longer overtakes them.
    late = queue(r, settings, "ten_a", 1, priority="interactive", at=1000.0 + settings.priority_delay_bulk_s + 1)
    assert drain(r, 4) == bulk + late


def test_a_deadline_moves_a_job_ahead_of_its_own_tenants_work(r, settings):
    queue(r, settings, "ten_a", 5, priority="interactive", at=1000.0)
    urgent = queue(r, settings, "ten_a", 1, priority="bulk", at=1001.0, deliver_by=990.0)
    assert drain(r, 1) == urgent


def test_ended_jobs_are_skipped_and_cost_nothing(r, settings):
    a = queue(r, settings, "ten_a", 4)
    b = queue(r, settings, "ten_b", 2)
    r.hset(job_key(a[0]), "status", "canceled")
    r.delete(job_key(a[1]))  # expired or deleted while waiting
    got = drain(r, 10)
    assert a[0] not in got and a[1] not in got
    assert sorted(got) == sorted(a[2:] + b)
    assert r.hget(job_key(got[0]), "lane") == "0" and r.hget(job_key(got[0]), "dispatched")


def test_the_queue_is_only_topped_up(r, settings):
    """``want``: the Celery queue's length to reach; nothing moves while it holds that many."""
    queue(r, settings, "ten_a", 5)
    r.lpush(render_queue("tiny"), "x", "y")
    d = fairshare.Dispatcher(None, r)
    assert d.pop("tiny", want=2) == []
    assert len(d.pop("tiny", want=4)) == 2
    assert len(d.pop("tiny", want=3, limit=10)) == 1


def test_fill_publishes_the_stored_signed_message_to_the_models_queue(r, settings, redis_url):
    from jobs.celery_app import make_app

    ids = queue(r, settings, "ten_a", 2)
    d = fairshare.Dispatcher(make_app(settings, redis_url), r)
    assert d.fill("tiny", want=5) == 2
    bodies = r.lrange(render_queue("tiny"), 0, -1)
    assert len(bodies) == 2 and all(any(i in b for i in ids) for b in bodies)


def test_a_failed_publish_puts_the_jobs_back_in_their_lanes(r, settings, redis_url):
    """The dispatch's messages go in one round trip to a broker that does not answer (a real app
    whose broker is a port nobody listens on): every job moved goes back to its lane, none is lost."""
    import socket

    from jobs.celery_app import make_app

    ids = queue(r, settings, "ten_a", 3)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"redis://127.0.0.1:{s.getsockname()[1]}/0"
    app = make_app(settings, redis_url)
    app.conf.broker_url = dead  # the result backend stays reachable: only the publish fails
    with pytest.raises(Exception) as caught:
        fairshare.Dispatcher(app, r).fill("tiny", want=3)
    assert "Connection" in type(caught.value).__name__ or "refused" in str(caught.value), repr(caught.value)
    for j in ids:
        assert r.zscore(fairshare.lane_key("tiny", "ten_a"), j) is not None
        assert r.hget(job_key(j), "lane") == "1" and not r.hget(job_key(j), "dispatched")


def test_position_counts_other_tenants_by_share(r, settings):
    queue(r, settings, "ten_a", 100)
    b = queue(r, settings, "ten_b", 3, at=1001.0)
    snap = fairshare.Snapshot.read(r, "tiny", "fair")
    cost = fairshare.cost_of(RenderRequest(prompt="p", width=64, height=64, steps=4))
    score = r.zscore(fairshare.lane_key("tiny", "ten_b"), b[2])
    place = snap.place("ten_b", score, cost, job_id=b[2])
    assert place.jobs_ahead == 4, "two of its own and two of ten_a's (alternating), not 102"
    order = [tenant_of(r, j) for j in drain(r, 6)]
    assert order.index("ten_b", order.index("ten_b", order.index("ten_b") + 1) + 1) == 5


def test_weights_are_checked():
    for bad in (0, -1, "x", float("nan"), 1001):
        with pytest.raises(ValueError, match="weight must be"):
            fairshare.check_weight(bad)
    assert fairshare.check_weight("2.5") == 2.5


def test_urgent_dispatch_takes_interactive_work_only_while_the_fair_pick_is_interactive(r, settings):
    """A busy worker asks for urgent work between polls of its call: it gets the interactive job
    the fair order would take next, however full the queue is, and nothing else; a tenant that
    marks its flood interactive gets no more than its fair share that way."""
    d = fairshare.Dispatcher(None, r)
    flood = queue(r, settings, "A", 6, priority="bulk", at=1000.0)
    r.rpush(render_queue("tiny"), "a message the dispatch keeps ready")
    assert d.pop("tiny", want=0, limit=4, urgent=True) == []  # no interactive job: nothing moves
    assert drain(r, 0) == []
    single = queue(r, settings, "B", 1, priority="interactive", at=1001.0)
    got = d.pop("tiny", want=0, limit=4, urgent=True)
    assert [x[0] for x in got] == single  # B's job, though the queue is not empty; A's flood stays
    assert r.zcard(fairshare.urgent_key("tiny")) == 0
    assert r.zcard(fairshare.lane_key("tiny", "A")) == len(flood)

    # A floods interactive work too: urgent dispatch takes A's job only when A is the fair pick.
    a_hot = queue(r, settings, "A", 3, priority="interactive", at=1002.0)
    b_bulk = queue(r, settings, "B", 3, priority="bulk", at=1002.0)
    order = []
    for _ in range(6):
        got = d.pop("tiny", want=0, limit=1, urgent=True) or d.pop("tiny", want=10, limit=1)
        order.append(got[0][0])
    assert set(order) == set(a_hot + b_bulk)
    # Equal weights: the two tenants alternate; A's interactive marks do not buy it B's turns.
    tenants = [tenant_of(r, j) for j in order]
    assert tenants.count("A") == tenants.count("B") == 3
    assert all(a != b for a, b in zip(tenants, tenants[1:]))


def test_an_interactive_job_the_ordinary_dispatch_queued_is_counted_by_the_next_urgent_look(r, settings):
    """The ordinary top-up can move an interactive job into the queue just after a busy session
    gathered its next call: it is out of its lane, so the urgent pick no longer sees it. The next
    urgent look counts it (once), so the session takes it from the queue into its next call."""
    d = fairshare.Dispatcher(None, r)
    queue(r, settings, "A", 3, priority="bulk", at=1000.0)
    single = queue(r, settings, "B", 1, priority="interactive", at=1001.0)
    got = [d.pop("tiny", want=10, limit=1)[0][0] for _ in range(2)]  # A's, then B's (B's turn)
    assert single[0] in got
    assert r.smembers(fairshare.urgent_ready_key("tiny")) == set(single)
    assert 0 < r.ttl(fairshare.urgent_ready_key("tiny")) <= fairshare.URGENT_READY_TTL_S
    assert d._pop("tiny", want=0, limit=4, urgent=True) == (1, [])  # counted; nothing left to move
    assert d._pop("tiny", want=0, limit=4, urgent=True) == (0, [])  # and only once
    # Bulk work the ordinary dispatch moves is not counted; jobs moved by the urgent pick itself
    # are returned as moved, not counted again.
    d.pop("tiny", want=10, limit=1)
    hot = queue(r, settings, "C", 1, priority="interactive", at=1002.0)
    ready, moved = d._pop("tiny", want=0, limit=4, urgent=True)
    assert (ready, [x[0] for x in moved]) == (0, hot)
    assert d._pop("tiny", want=0, limit=4, urgent=True) == (0, [])


def test_interactive_jobs_go_into_the_first_call():
    from worker.runner import Live, group_by_shape

    def live(i, priority):
        return Live(msg=JobMessage(job_id=f"g{i}", request=RenderRequest(prompt="p", width=64, height=64, steps=2,
                                                                        guidance_scale=5.0, priority=priority)),
                    flags=None, claimed_at=0.0)

    jobs = [live(0, "bulk"), live(1, "bulk"), live(2, "bulk"), live(3, None), live(4, "interactive")]
    groups = [[x.msg.job_id for x in g] for g in group_by_shape(jobs, max_rows=4)]
    assert groups == [["g4", "g0", "g1", "g2"], ["g3"]]  # arrival order otherwise
