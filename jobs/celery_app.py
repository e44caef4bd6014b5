"""The Celery app, configured from Settings. JSON only; late acks; one job in hand per process."""
from __future__ import annotations

from celery import Celery

from typing import TYPE_CHECKING, Any

from jobs.names import RENDER_TASK, WEBHOOK_QUEUE, render_queue
from jobs.settings import Settings

if TYPE_CHECKING:
    from collections.abc import Iterable

    from jobs.schemas import JobMessage


def patch_kombu_released_connection() -> None:
    """Work around a kombu 5.7 Redis-transport bug that made workers exit when Redis restarted.

    When the broker connection drops, Celery closes it; ``Channel.close()`` restores the
    channel's unacknowledged messages (ETA-held retries, batched jobs) through a fresh Redis
    pool built by ``_connparams()``, which reads ``connection.client`` after the connection was
    released (None): ``AttributeError: 'NoneType' object has no attribute 'hostname'``, which no
    error handler expects, so the worker exited for good. The patch keeps the channel's last good
    parameters and uses them then, retrying the connection for about 20 s (Redis is restarting),
    so the messages are back in their queue at once. If it has none, or Redis stays down, the
    error is a Redis ``ConnectionError``, which Celery's close path ignores: the messages stay in
    Redis's unacked set and come back after the visibility timeout. Tested by
    tests/integration/test_redis_restart.py.
    """
    from kombu.transport import redis as kombu_redis

    original = kombu_redis.Channel._connparams
    if getattr(original, "batchrender_patched", False):
        return

    def _connparams(self, asynchronous=False):
        cache = self.__dict__.setdefault("_batchrender_connparams", {})
        if self.connection.client is None:
            import redis
            from redis.backoff import ExponentialBackoff
            from redis.retry import Retry

            cached = cache.get(asynchronous) or cache.get(not asynchronous)
            if cached is None:
                raise redis.exceptions.ConnectionError("broker connection already released")
            # Redis is usually restarting right now: keep trying for ~20 s so the messages go
            # back to their queue at once instead of after the visibility timeout.
            return {**cached, "retry": Retry(ExponentialBackoff(cap=2.0, base=0.2), 14),
                    "retry_on_error": [redis.exceptions.ConnectionError, redis.exceptions.TimeoutError]}
        params = original(self, asynchronous=asynchronous)
        cache[asynchronous] = dict(params)
        return params

    _connparams.batchrender_patched = True  # type: ignore[attr-defined]
    kombu_redis.Channel._connparams = _connparams


def patch_kombu_sentinel_released_connection() -> None:
    """The same kombu 5.7 bug as ``patch_kombu_released_connection``, on the Sentinel transport.

    ``SentinelChannel._sentinel_managed_pool`` reads the sentinel list from ``connection.client``
    too, so restoring unacknowledged messages after a dropped connection (a failover) raised
    ``AttributeError: 'NoneType' object has no attribute 'alt'`` and the worker exited. The patch
    keeps the channel's last sentinel list and builds the pool from it then; the parameters come
    from the patched ``_connparams`` (retrying ~20 s: long enough for a failover to elect a new
    master, which the pool asks the sentinels for on each try). Tested by
    tests/integration/test_sentinel.py.
    """
    from kombu.transport import redis as kombu_redis

    channel = getattr(kombu_redis, "SentinelChannel", None)
    if channel is None or getattr(channel._sentinel_managed_pool, "batchrender_patched", False):
        return
    original = channel._sentinel_managed_pool

    def _sentinel_managed_pool(self, asynchronous=False):
        client = self.connection.client
        if client is not None:
            self.__dict__["_batchrender_alt"] = (list(client.alt), self.connection.default_port)
            return original(self, asynchronous)
        import redis
        from redis import sentinel

        saved = self.__dict__.get("_batchrender_alt")
        if saved is None:
            raise redis.exceptions.ConnectionError("broker connection already released")
        alt, default_port = saved
        params = {k: v for k, v in self._connparams(asynchronous).items() if k not in ("host", "port")}
        sentinels = [(u.hostname, u.port or default_port) for u in map(kombu_redis._parse_url, alt)
                     if u.scheme == "sentinel"]
        manager = sentinel.Sentinel(sentinels, min_other_sentinels=getattr(self, "min_other_sentinels", 0),
                                    sentinel_kwargs=getattr(self, "sentinel_kwargs", None), **params)
        if asynchronous:
            self._async_sentinel_manager = manager
        else:
            self._sentinel_manager = manager
        credentials = {k: params[k] for k in ("username", "password") if k in params}
        return manager.master_for(self.master_name, redis.Redis, **credentials).connection_pool

    _sentinel_managed_pool.batchrender_patched = True  # type: ignore[attr-defined]
    channel._sentinel_managed_pool = _sentinel_managed_pool


#: How long a worker keeps trying, from a thread, to give back the messages it held when its broker
#: connection dropped and Redis stayed away longer than the close's own ~20 s of retries.
GIVE_BACK_S = 1800.0


def give_back_held(qos: Any, tag: str, lost_at: float) -> bool:
    """Put the message of delivery ``tag`` back on its queue if it is still held by the channel of
    ``qos`` (a kombu Redis ``QoS``): delivered at or before ``lost_at`` (its unacked index score).
    kombu's ``restore_by_tag`` transaction, with that check inside it. True if it was moved."""
    from kombu.utils.encoding import bytes_to_str
    from kombu.utils.json import loads

    moved = []

    def transaction(pipe) -> None:  # run again when a WATCHed key changes before EXEC
        moved.clear()
        raw = pipe.hget(qos.unacked_key, tag)
        score = pipe.zscore(qos.unacked_index_key, tag)
        pipe.multi()
        if raw and (score is None or score <= lost_at):
            qos._remove_from_indices(tag, pipe)
            message, exchange, routing_key = loads(bytes_to_str(raw))
            qos.channel._do_restore_message(message, exchange, routing_key, pipe, False)
            moved.append(tag)

    with qos.channel.conn_or_acquire() as client:
        client.transaction(transaction, qos.unacked_key, qos.unacked_index_key)
    return bool(moved)


def patch_kombu_give_back_later() -> None:
    """Finish giving back a closed channel's held messages once Redis is back.

    When the broker connection drops, Celery forgets what the channel held (it clears the timer of
    retries waiting for their ETA) and kombu's ``Channel.close()`` puts those messages back on their
    queues (``QoS.restore_unacked``). While Redis is still away (a restart or failover longer than
    ``patch_kombu_released_connection``'s ~20 s of retries) that raises ``ConnectionError``, which
    Celery ignores: the messages stayed in Redis's unacked set, held by no one, for the visibility
    timeout (an hour by default). The patch lets the close fail as before and, from a thread, gives
    the remaining messages back as soon as Redis answers: what the close meant to do, done late.

    A message is given back only while it is still this channel's: delivered (its unacked index
    score, this host's clock) before the connection was lost. Once kombu's visibility timeout has
    put it back and another worker holds it, its delivery tag is the same but its score is newer,
    and it is left alone; so is one that is gone. Each give-back is kombu's ``restore_by_tag``
    transaction with that check inside it (WATCHing the unacked hash and index, so a delivery in
    between makes it look again). The thread stops after a quarter of the visibility timeout, at
    most ``GIVE_BACK_S``. Tested by tests/integration/test_redis_restart.py (tests/restore_fails.py
    fails the close's give-back).
    """
    import logging
    import threading
    import time

    from kombu.transport import redis as kombu_redis

    from jobs.redisconn import REDIS_AWAY as away  # a replica's READONLY mid-failover included

    original = kombu_redis.QoS.restore_unacked
    if getattr(original, "batchrender_patched", False):
        return
    log = logging.getLogger(__name__)

    def give_back(qos, tags: list, lost_at: float) -> None:
        deadline = lost_at + min(GIVE_BACK_S, qos.visibility_timeout / 4)
        wait, moved = 1.0, 0
        while tags and time.time() < deadline:
            time.sleep(wait)
            try:
                while tags:
                    moved += give_back_held(qos, tags[0], lost_at)
                    tags.pop(0)
            except away:
                wait = min(wait * 2, 30.0)
            except Exception:  # noqa: BLE001 - not Redis being away: the visibility timeout brings them back
                log.exception("giving back %d held message(s) failed; they return after the visibility timeout",
                              len(tags))
                return
        if tags:
            log.warning("Redis stayed away: %d held message(s) return after the visibility timeout", len(tags))
        else:
            log.warning("gave back %d message(s) held when the broker connection dropped, now that Redis is back",
                        moved)

    def restore_unacked(self, client=None):
        lost_at = time.time()
        try:
            return original(self, client)
        except away:
            tags = list(self._delivered)
            if tags:
                threading.Thread(target=give_back, args=(self, tags, lost_at), name="give-back", daemon=True).start()
            raise

    restore_unacked.batchrender_patched = True  # type: ignore[attr-defined]
    kombu_redis.QoS.restore_unacked = restore_unacked


#: How long an acknowledgement keeps retrying while Redis drops connections (see below).
ACK_RETRY_S = 10.0


def patch_kombu_lost_ack() -> None:
    """Work around a kombu Redis-transport stall: a worker whose ack failed stopped consuming.

    ``QoS.ack`` first removes the message from Redis's unacked index, then frees the worker's
    prefetch slot. If Redis drops the connection at that moment, the first step raises, Celery
    logs "Couldn't ack" and carries on, and the slot is never freed: with one job in hand per
    process ``can_consume()`` stays False, no BRPOP is ever sent again, and the worker sits idle
    for good, alive and "connected", while its queue grows (found by benchmarks/chaos.py with
    Redis dropping connections every 3 s; celery/celery#10302 reads like the same). The patch
    retries the removal on fresh connections for ``ACK_RETRY_S`` and frees the slot either way.
    If Redis stayed unreachable the message stays in the unacked set and is delivered again
    after the visibility timeout, which every task here tolerates (job claims, event ids).
    Tested by tests/integration/test_redis_restart.py.
    """
    import logging
    import time

    from kombu.transport import redis as kombu_redis
    from kombu.transport import virtual

    qos = kombu_redis.QoS
    if getattr(qos.ack, "batchrender_patched", False):
        return
    log = logging.getLogger("batchrender.kombu")
    original_reject = qos.reject

    def _retrying(self, delivery_tag, what, op) -> None:
        deadline, delay = time.monotonic() + ACK_RETRY_S, 0.1
        while True:
            try:
                op()
                return
            except self.channel.connection_errors as e:
                if time.monotonic() >= deadline:
                    log.warning("could not %s message %s (%s); it stays in Redis's unacked set and is "
                                "delivered again after the visibility timeout", what, delivery_tag, e)
                    return
                time.sleep(delay)
                delay = min(2.0, delay * 2)

    def ack(self, delivery_tag):
        try:
            _retrying(self, delivery_tag, "acknowledge", lambda: self._remove_from_indices(delivery_tag).execute())
        finally:
            virtual.QoS.ack(self, delivery_tag)  # free the prefetch slot, whatever Redis said

    def reject(self, delivery_tag, requeue=False):
        try:
            _retrying(self, delivery_tag, "reject", lambda: original_reject(self, delivery_tag, requeue=requeue))
        finally:
            if delivery_tag not in self._dirty:
                virtual.QoS.ack(self, delivery_tag)

    ack.batchrender_patched = True  # type: ignore[attr-defined]
    qos.ack, qos.reject = ack, reject


def unacked_mutex_expire(visibility_timeout_s: int) -> int:
    """Seconds kombu's unacked-restore lock lives when its holder dies without releasing it.

    kombu takes the lock (default expiry 300 s) around each scan for abandoned messages; a worker
    SIGKILLed inside that scan left it held, and no worker restored anything for five minutes
    (30 jobs sat ``running`` ~4 minutes in a chaos run). A scan restores at most a handful of
    messages, in milliseconds, so 30 s is still a thousand times what it needs; a lock that
    expires while a slow scan still runs is harmless, because each restore is a WATCHed
    transaction on the unacked hash: a message restored twice at once is pushed back once.
    Capped at a tenth of the visibility timeout for tests that shorten it."""
    return max(1, min(30, visibility_timeout_s // 10))


def make_app(settings: Settings, broker_url: str | None = None) -> Celery:
    """Build the Celery app. ``broker_url`` defaults to the configured or embedded Redis; a
    ``sentinel://`` one (master name from ``settings``) gives kombu and the result backend the
    sentinels and ``master_name``, so both follow a failover (jobs/redisconn.py)."""
    from jobs import redisconn

    patch_kombu_released_connection()
    patch_kombu_sentinel_released_connection()
    patch_kombu_lost_ack()
    patch_kombu_give_back_later()
    if broker_url is None:
        from jobs.embedded import redis_url_for

        broker_url = redis_url_for(settings, start=False)
    target = redisconn.target_for(broker_url, settings)
    url = target.kombu_url()
    app = Celery("batchrender", broker=url, backend=url, set_as_current=False)
    transport = {
        # Must exceed the longest render (hard limit), or a job still running is delivered again.
        "visibility_timeout": settings.visibility_timeout_s,
        # kombu sweeps for abandoned (unacked) messages every interval*throttle seconds (100 s by
        # default); scan on every tick so a killed worker's job is back soon after the timeout.
        "unacked_restore_interval": max(1, min(60, settings.visibility_timeout_s // 20)),
        "unacked_restore_throttle": 1,
        "unacked_mutex_expire": unacked_mutex_expire(settings.visibility_timeout_s),
        # Sentinel: master_name and how to reach the sentinels (kombu's SentinelChannel).
        **target.transport_options(),
    }
    app.conf.update(
        # Never pickle: a pickle payload is code execution for anyone who can write to Redis.
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        # A job is acknowledged only once its outputs are stored; a killed worker's job is redelivered.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options=transport,
        # Celery's SentinelBackend reads master_name (and sentinel_kwargs) from here.
        result_backend_transport_options=target.transport_options(),
        broker_connection_retry_on_startup=True,
        # A broker that answers READONLY (a server that became a replica: a failover seen through
        # a fixed address) is a channel error to kombu; without this the worker exited for good
        # ("Unrecoverable error: ReadOnlyError", celery#7946); with it the consumer reconnects.
        broker_channel_error_retry=True,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        task_soft_time_limit=settings.soft_time_limit_s,
        task_time_limit=settings.hard_time_limit_s,
        task_default_queue=WEBHOOK_QUEUE,
        task_create_missing_queues=True,
        result_expires=settings.record_ttl_s,
        worker_hijack_root_logger=False,
        # Task events for Flower; render sessions send them for each job they pull (worker/task_events.py).
        worker_send_task_events=settings.task_events,
        enable_utc=True,
    )
    return app


def eta_time(eta: Any) -> float | None:
    """A Celery ``eta`` header (ISO 8601; naive means UTC) as Unix time; None when absent or unreadable."""
    if not eta:
        return None
    from datetime import datetime, timezone

    try:
        when = datetime.fromisoformat(str(eta))
    except ValueError:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp()


def render_argsrepr(msg: "JobMessage") -> str:
    """What Celery events (and so Flower) show as a render task's arguments: the job, not its
    payload. Prompts, webhook URLs and message signatures stay out of every event copy."""
    return (f"({msg.job_id}, model={msg.request.model}, tenant={msg.tenant or '-'}, "
            f"images={msg.request.num_images})")


def publish_render(app: Celery, msg: "JobMessage", *, queue: str | None = None, **options: Any) -> None:
    """Send a (signed) render message: the one way a render task is published.

    The task id is the job id, so a job's Celery result, its events in Flower and its record share
    one id; ``argsrepr`` keeps the payload out of monitoring. A job is never the child of the task
    that publishes it (``add_to_parent=False``): a worker publishes jobs while it runs another
    job's call (the fair dispatch, retries), and Celery would otherwise add each one to that task's
    children and write all of them into every result the worker stores for the rest of its batch
    session (quadratic over a flood; measured: 5 % of a CPU worker's throughput at 2,000 jobs).
    """
    app.send_task(RENDER_TASK, args=[msg.model_dump(mode="json")], task_id=msg.job_id,
                  queue=queue or render_queue(msg.request.model), argsrepr=render_argsrepr(msg), kwargsrepr="{}",
                  add_to_parent=False, **options)


def publish_renders(app: Celery, msgs: "Iterable[JobMessage]", **options: Any) -> None:
    """``publish_render`` for several messages in one Redis round trip (kombu's publish batch: the
    messages' LPUSHes are pipelined and sent when the block ends). On an error none of them may
    be taken as published (some may have been: the caller's recovery must tolerate a job that is
    both queued and returned, as it does a lost reply)."""
    with app.producer_or_acquire() as producer, producer.batch():
        for msg in msgs:
            publish_render(app, msg, producer=producer, **options)
