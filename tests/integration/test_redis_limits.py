"""A wrongly configured Redis, and a full one: refused at start-up, and ridden
out without a double or a loss (real redis-server, workers and sandbox)."""

from __future__ import annotations

import json
import time

import pytest

from devstack.localstack import Stack, wait_until
from producers.publisher import Publisher, PublishFailed
from tests.conftest import FAST
from tests.helpers import command, grants, operation, wait_final
from worker.keys import Keys
from worker.results import Results
from worker.settings import Settings, UnsafeRedis, connect

pytestmark = pytest.mark.integration


def test_a_redis_that_evicts_keys_is_refused_by_workers_and_producers(tmp_path, project_id):
    with Stack(tmp_path, settings_env=FAST) as stack:
        stack.start_redis(extra=("--maxmemory-policy", "allkeys-lru"))
        worker = stack.start_worker(wait=False)
        wait_until(lambda: not worker.alive(), 60, "the worker to refuse to start")
        assert worker.proc is not None and worker.proc.returncode == 2
        log = worker.log_text()
        assert "allkeys-lru" in log and "noeviction" in log and "GRANTS_REDIS_ALLOW_EVICTION" in log
        assert " ready." not in log

        settings = Settings(redis_url=stack.redis_url)
        with pytest.raises(UnsafeRedis, match="allkeys-lru"):
            Publisher(settings).publish(command(project_id, "evict-1"))
        out = grants(
            stack,
            "publish",
            "--project-id",
            str(project_id),
            "-",
            stdin=json.dumps(operation("evict-2")) + "\n",
            expect=2,
        )
        assert out.returncode == 2
        assert "maxmemory-policy" in out.stderr and "nothing published" in out.stderr
        client = connect(stack.redis_url)
        assert client.xlen(Keys().commands) == 0

        # The operator's explicit override (at the risk it names).
        Publisher(Settings(redis_url=stack.redis_url, redis_allow_eviction=True)).publish(
            command(project_id, "evict-3")
        )
        assert client.xlen(Keys().commands) == 1


def test_a_full_redis_fails_publishes_loudly_and_loses_or_doubles_nothing(tmp_path, project_id):
    with Stack(tmp_path, settings_env=FAST) as stack:
        stack.start_redis()
        stack.start_sandbox()
        stack.sandbox_put("/sandbox/faults", {"latency_ms": 400})  # calls on the wire when it fills
        worker = stack.start_worker(concurrency=2)
        client = connect(stack.redis_url)
        publisher = Publisher(Settings(redis_url=stack.redis_url))
        results = Results(client, Keys())
        first = [f"full-{i}" for i in range(200)]
        publisher.publish_many(command(project_id, i) for i in first)
        wait_until(lambda: results.stats()["counts"]["granted"] >= 20, 30, "grants under way")

        # Full: every write Redis would have to grow for is refused.
        client.config_set("maxmemory", max(1, int(client.info("memory")["used_memory"]) // 2))
        with pytest.raises(PublishFailed, match="Redis is out of memory"):
            publisher.publish(command(project_id, "full-late"))
        out = grants(
            stack,
            "publish",
            "--project-id",
            str(project_id),
            "-",
            stdin=json.dumps(operation("full-cli")) + "\n",
            expect=2,
        )
        assert out.returncode == 2 and "Redis is out of memory" in out.stderr
        stats = grants(stack, "results", "stats")
        assert stats.returncode == 0 and "redis memory:" in stats.stdout and "policy noeviction" in stats.stdout
        time.sleep(4)  # answers arriving meanwhile are held, not dropped
        assert worker.alive()

        client.config_set("maxmemory", 0)
        publisher.publish(command(project_id, "full-late"))  # the producer's retry
        everyone = [*first, "full-late"]
        records = wait_final(results, project_id, everyone, timeout=90)
        assert {r["status"] for r in records.values()} == {"granted"}
        applied = stack.audit_counts(project_id)
        assert all(applied.get(i) == 1 for i in everyone), {i: applied.get(i) for i in everyone if applied.get(i) != 1}
        assert "full-cli" not in applied  # its publish failed, and said so

        # Said once per interval per process, not once per batch or command.
        log = worker.log_text()
        assert 0 < log.count("Redis is out of memory") <= 12, log.count("Redis is out of memory")
