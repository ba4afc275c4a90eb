"""How the Redis settings turn into clients, broker URLs and verdicts."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from redis.exceptions import OutOfMemoryError, ResponseError

from worker.ingest import not_transient
from worker.settings import Settings, UnsafeRedis, judge_eviction


def test_sentinels_parse_from_a_comma_list_and_bad_ones_are_named(monkeypatch):
    monkeypatch.setenv("GRANTS_REDIS_SENTINELS", "10.0.0.1:26379, 10.0.0.2:26379")
    assert Settings().sentinel_hosts() == [("10.0.0.1", 26379), ("10.0.0.2", 26379)]
    monkeypatch.setenv("GRANTS_REDIS_SENTINELS", "10.0.0.1")
    with pytest.raises(ValidationError, match="a sentinel is host:port"):
        Settings()


def test_the_broker_follows_the_sentinels_with_the_urls_credentials_and_database():
    s = Settings(redis_url="redis://app:pw@ignored:6379/3", redis_sentinels="s1:26379,s2:26380")
    assert s.effective_broker_url == "sentinel://app:pw@s1:26379/3;sentinel://app:pw@s2:26380/3"
    options = s.broker_transport_options()
    assert options["master_name"] == "grants"
    assert options["sentinel_kwargs"]["password"] == "pw"
    # An explicit broker URL wins, and needs no sentinel options.
    own = Settings(redis_url="redis://x/0", redis_sentinels="s1:26379", broker_url="redis://broker:6379/1")
    assert own.effective_broker_url == "redis://broker:6379/1" and own.broker_transport_options() == {}


def test_a_password_file_wins_over_the_urls_and_is_a_secret(tmp_path):
    secret = tmp_path / "redis-password"
    secret.write_text("from-file\n")
    s = Settings(redis_url="redis://:from-url@h:6379/0", redis_password_file=secret, redis_sentinels="s:1")
    assert s.redis_password() == "from-file"
    assert "from-file" in s.effective_broker_url
    assert "from-file" in s.secrets() and "from-url" in s.secrets()


def test_only_noeviction_passes_unless_overridden():
    assert judge_eviction("noeviction", allow=False) is None
    with pytest.raises(UnsafeRedis, match="GRANTS_REDIS_ALLOW_EVICTION"):
        judge_eviction("volatile-lru", allow=False)
    assert judge_eviction("allkeys-lru", allow=True) is None
    assert "could not read" in (judge_eviction(None, allow=False, why="NOPERM") or "")


def test_redis_out_of_memory_inside_a_script_is_waited_out_not_dead_lettered():
    full = OutOfMemoryError("command not allowed when used memory > 'maxmemory'. script: ab, on @user_script:1.")
    assert not not_transient(full)
    assert not_transient(ResponseError("user_script:3: attempt to index a nil value"))
