"""jobs/redisconn.py without I/O: which URLs are accepted, what a bad one says, what kombu,
Celery and redis-py are given for Sentinel, and which errors count as "Redis is away"."""
from __future__ import annotations

import copy
import pickle

import pytest

from jobs.errors import BrokerUnavailable, ConfigurationError
from jobs.redisconn import RedisURL, client, parse, target_for
from jobs.settings import Settings

PW = "hunter2-data"
SPW = "hunter2-sentinel"


def test_plain_urls_are_one_server_with_redis_defaults():
    t = parse("redis://:pw@cache.internal/3")
    assert (t.scheme, t.hosts, t.db, t.password, t.sentinel) == ("redis", (("cache.internal", 6379),), 3, "pw", False)
    assert parse("rediss://h:6380").hosts == (("h", 6380),)
    assert parse("redis://h:6380/0").kombu_url() == "redis://h:6380/0"
    assert parse("redis://h").transport_options() == {}


def test_a_sentinel_url_lists_every_sentinel_with_the_default_port_and_one_database():
    t = parse(f"sentinel://:{PW}@s1:26380;sentinel://s2;sentinel://[::1]:26381/4", master_name="mymaster")
    assert t.sentinel and t.master_name == "mymaster"
    assert t.hosts == (("s1", 26380), ("s2", 26379), ("::1", 26381))
    assert (t.db, t.password) == (4, PW)
    # kombu reads the database and password from the first part, Celery's backend from its first
    # host: every part carries both.
    assert t.kombu_url() == (f"sentinel://:{PW}@s1:26380/4;sentinel://:{PW}@s2:26379/4;"
                             f"sentinel://:{PW}@[::1]:26381/4")


def test_the_sentinels_password_goes_to_the_sentinels_only():
    t = parse(f"sentinel://:{PW}@s1;sentinel://s2/0", master_name="m", sentinel_password=SPW)
    opts = t.transport_options()
    assert opts["master_name"] == "m"
    assert opts["sentinel_kwargs"]["password"] == SPW and opts["sentinel_kwargs"]["socket_timeout"] > 0
    assert SPW not in t.kombu_url() and SPW not in repr(t) and PW not in repr(t)


@pytest.mark.parametrize("url, says", [
    ("sentinel://s1:26379;sentinel://s2:26379/0", "BATCHRENDER_REDIS_MASTER_NAME"),
    ("redis-cluster://h:7000", "Cluster is not supported"),
    ("unix:///run/redis.sock", "unknown scheme 'unix://'"),
    ("memcached://h", "sentinel://host1:26379"),
    ("localhost:6379", "not a URL"),
    ("redis://h:port/0", "bad address"),
    ("redis://:pw@/0", "no host"),
    ("redis://h/zero", "database must be a number"),
    ("redis://a;redis://b", "only possible with sentinel://"),
    ("sentinel://a;redis://b/0", "every part of a Sentinel URL"),
    ("sentinel://a/1;sentinel://b/2", "different databases"),
    ("sentinel://:x@a;sentinel://:y@b/0", "different passwords"),
    ("sentinel://a:26379;sentinel://a:26379/0", "listed twice"),
])
def test_a_bad_url_is_refused_naming_the_fix(url, says):
    with pytest.raises(ConfigurationError) as e:
        parse(url, master_name="m" if url.startswith("sentinel") and "MASTER" not in says else None)
    assert says in e.value.message, e.value.message
    assert e.value.message.startswith("BATCHRENDER_REDIS_URL")


def test_a_master_name_without_a_sentinel_url_is_refused():
    with pytest.raises(ConfigurationError, match="not a sentinel:// URL"):
        parse("redis://h:6379/0", master_name="m")
    with pytest.raises(ConfigurationError, match="not set|is not:"):
        Settings.from_env({"BATCHRENDER_REDIS_MASTER_NAME": "m"})


def test_settings_refuse_a_sentinel_url_without_a_master_name_at_start_without_the_password():
    with pytest.raises(ConfigurationError) as e:
        Settings.from_env({"BATCHRENDER_REDIS_URL": f"sentinel://:{PW}@s1;sentinel://s2/0"})
    assert "BATCHRENDER_REDIS_MASTER_NAME" in e.value.message and PW not in e.value.message


def test_settings_redis_url_carries_the_master_name_wherever_it_goes():
    s = Settings.from_env({"BATCHRENDER_REDIS_URL": f"sentinel://:{PW}@s1;sentinel://s2/2",
                           "BATCHRENDER_REDIS_MASTER_NAME": "m", "BATCHRENDER_REDIS_SENTINEL_PASSWORD": SPW})
    assert isinstance(s.redis_url, RedisURL) and s.redis_url == f"sentinel://:{PW}@s1;sentinel://s2/2"
    for url in (s.redis_url, copy.deepcopy(s.redis_url), pickle.loads(pickle.dumps(s.redis_url))):
        t = parse(url)  # no settings at hand: the URL says it
        assert (t.master_name, t.sentinel_password, t.db) == ("m", SPW, 2)
    assert PW not in repr(s) and SPW not in repr(s)
    # A plain string (a URL passed on) gets them from the settings.
    assert target_for(str(s.redis_url), s).master_name == "m"


def test_empty_master_name_means_unset():
    s = Settings.from_env({"BATCHRENDER_REDIS_URL": "redis://h:6379/0", "BATCHRENDER_REDIS_MASTER_NAME": ""})
    assert s.redis_master_name is None


def test_a_sentinel_client_asks_the_sentinels_for_the_named_master_and_follows_it():
    """Built without connecting: the pool is Sentinel's, for the master named, with the data
    nodes' password, the sentinels' own, and "not the master" treated as a dropped connection."""
    from redis.sentinel import SentinelConnectionPool

    from jobs.redisconn import _FollowsMaster

    r = client(RedisURL(f"sentinel://:{PW}@s1:1;sentinel://s2:2/5", master_name="m", sentinel_password=SPW))
    pool = r.connection_pool
    assert isinstance(pool, SentinelConnectionPool) and pool.service_name == "m" and pool.is_master
    assert pool.connection_kwargs["password"] == PW and pool.connection_kwargs["db"] == 5
    assert issubclass(pool.connection_class, _FollowsMaster)
    sentinels = pool.sentinel_manager.sentinels
    assert [(s.connection_pool.connection_kwargs["host"], s.connection_pool.connection_kwargs["port"])
            for s in sentinels] == [("s1", 1), ("s2", 2)]
    assert all(s.connection_pool.connection_kwargs["password"] == SPW for s in sentinels)
    assert PW not in repr(r) and SPW not in repr(r)


def test_a_plain_client_also_treats_not_the_master_as_a_dropped_connection():
    from jobs.redisconn import MasterConnection, MasterSSLConnection

    assert client("redis://h:1/0").connection_pool.connection_class is MasterConnection
    assert client("rediss://h:1/0").connection_pool.connection_class is MasterSSLConnection


@pytest.mark.parametrize("name", ["ReadOnlyError", "MasterDownError"])
def test_not_the_master_is_redis_away_for_the_retry_policy(name):
    """A worker exited on ReadOnlyError: it is Redis being away (a failover), retried like a
    dropped connection, never a job failure or a crash."""
    import redis

    from jobs.retry import transient
    from jobs.redisconn import NotMasterError, away_message

    exc = getattr(redis.exceptions, name)("You can't write against a read only replica.")
    assert isinstance(transient(exc), BrokerUnavailable)
    assert isinstance(transient(NotMasterError("h:1 is not the master")), BrokerUnavailable)
    assert "BATCHRENDER_REDIS_MASTER_NAME" in away_message(exc)


def test_the_celery_app_gives_kombu_and_the_result_backend_the_master_name():
    from jobs.celery_app import make_app

    s = Settings(redis_url=f"sentinel://:{PW}@s1;sentinel://s2:26380/3", redis_master_name="m",
                 redis_sentinel_password=SPW)
    app = make_app(s)
    assert app.conf.broker_url == f"sentinel://:{PW}@s1:26379/3;sentinel://:{PW}@s2:26380/3"
    assert app.conf.broker_transport_options["master_name"] == "m"
    assert app.conf.result_backend_transport_options["master_name"] == "m"
    assert app.conf.broker_transport_options["sentinel_kwargs"]["password"] == SPW
    assert type(app.backend).__name__ == "SentinelBackend"
    assert app.conf.broker_channel_error_retry is True  # READONLY from the broker: reconnect, not exit
    with app.connection_for_write() as conn:  # no I/O until used
        assert conn.transport_cls == "sentinel" and len(conn.alt) == 2
        assert conn.transport_options["master_name"] == "m"


def test_the_unacked_restore_lock_expires_well_before_the_visibility_timeout():
    from jobs.celery_app import make_app

    for vt in (3600, 700, 100):
        s = Settings(visibility_timeout_s=vt, hard_time_limit_s=min(660, vt - 5), soft_time_limit_s=min(600, vt - 10))
        expire = make_app(s, "redis://h:1/0").conf.broker_transport_options["unacked_mutex_expire"]
        assert 1 <= expire <= 30 and expire <= vt // 10, (vt, expire)
