"""Crash and idempotency paths that need a stack of their own."""

from __future__ import annotations

import time

import pytest

from devstack.localstack import wait_until
from producers.publisher import Publisher
from schemas.records import Status
from tests.conftest import make_stack, settings_for
from tests.helpers import command, wait_final
from worker.keys import Keys
from worker.results import Results
from worker.settings import connect

pytestmark = pytest.mark.integration


def test_read_timeout_with_idempotent_backend_is_resent_and_granted_once(tmp_path, project_id):
    stack = make_stack(tmp_path, idempotent=True, env={"GRANTS_XSOLLA_IDEMPOTENT": "true"})
    try:
        stack.sandbox_put("/sandbox/faults", {"script": [{"action": "hang", "seconds": 3}]})
        Publisher(settings_for(stack)).publish(command(project_id, "i-1"))
        results = Results(connect(stack.redis.url), Keys())
        record = wait_final(results, project_id, ["i-1"], timeout=30)["i-1"]
        assert record["status"] == "granted"
        assert record["attempts"] == 2  # the lost answer, then the resend
        assert stack.audit_counts(project_id) == {"i-1": 1}
    finally:
        stack.stop()


@pytest.mark.parametrize("idempotent", [True, False], ids=["idempotent", "non-idempotent"])
def test_worker_sigkilled_mid_run_loses_nothing_and_doubles_nothing(tmp_path, project_id, idempotent):
    env = {"GRANTS_XSOLLA_IDEMPOTENT": "true" if idempotent else "false"}
    stack = make_stack(tmp_path, idempotent=idempotent, env=env)
    try:
        # Slow calls, so the kill lands while batches are on the wire.
        stack.sandbox_put("/sandbox/faults", {"latency_ms": 150})
        ids = [f"k-{i}" for i in range(2000)]
        Publisher(settings_for(stack)).publish_many(
            command(project_id, i, user=f"u{n % 13}") for n, i in enumerate(ids)
        )
        results = Results(connect(stack.redis.url), Keys())
        wait_until(lambda: results.stats()["counts"]["granted"] >= 200, 30, "200 grants before the kill")
        stack.workers[0].kill()  # main process and pool children, SIGKILL
        counts_at_kill = results.stats()["counts"]
        assert 0 < counts_at_kill["granted"] < len(ids), "the kill must land mid-run"
        stack.start_worker(concurrency=2)
        records = wait_final(results, project_id, ids, timeout=90)

        counts = stack.audit_counts(project_id)
        statuses = {i: r["status"] for i, r in records.items()}
        assert max(counts.values()) == 1, "a purchase was granted twice"
        if idempotent:
            # Every purchase granted exactly once per the sandbox's audit.
            assert counts == {i: 1 for i in ids}
            assert set(statuses.values()) == {"granted"}
        else:
            # Granted ones exactly once; the batches cut mid-call are in_doubt,
            # never resent, and nothing else is missing.
            granted = {i for i, s in statuses.items() if s == "granted"}
            doubted = {i for i, s in statuses.items() if s == Status.in_doubt.value}
            assert granted | doubted == set(ids)
            assert all(counts.get(i) == 1 for i in granted)
            assert len(doubted) <= 2 * 50 * 2  # at most the batches on the wire at the kill
            assert all(counts.get(i, 0) <= 1 for i in doubted)
    finally:
        stack.stop()


def test_sigterm_finishes_or_hands_back_within_bounds_and_loses_nothing(tmp_path, project_id):
    import signal

    stack = make_stack(tmp_path)
    try:
        stack.sandbox_put("/sandbox/faults", {"latency_ms": 100})
        ids = [f"st-{i}" for i in range(1500)]
        Publisher(settings_for(stack)).publish_many(
            command(project_id, i, user=f"u{n % 11}") for n, i in enumerate(ids)
        )
        results = Results(connect(stack.redis.url), Keys())
        wait_until(lambda: results.stats()["counts"]["granted"] >= 100, 30, "100 grants before the SIGTERM")
        worker = stack.workers[0]
        started = time.monotonic()
        worker.proc.send_signal(signal.SIGTERM)  # the main process only, as an orchestrator does
        worker.proc.wait(timeout=30)
        stopped_in = time.monotonic() - started
        # Bounded: the drain budget (2 s) plus one call, not the whole backlog.
        assert stopped_in < 15, stopped_in
        assert results.stats()["counts"]["granted"] < len(ids), "stopped before the work was done"
        stack.start_worker(concurrency=2)
        records = wait_final(results, project_id, ids, timeout=90)
        assert {r["status"] for r in records.values()} == {"granted"}, "a warm shutdown leaves nothing in doubt"
        assert stack.audit_counts(project_id) == {i: 1 for i in ids}
    finally:
        stack.stop()


def test_a_backlog_stays_in_redis_not_in_worker_memory(tmp_path, project_id):
    import psutil

    stack = make_stack(tmp_path, workers=0)
    try:
        ids = [f"bl-{i}" for i in range(20_000)]
        Publisher(settings_for(stack)).publish_many(
            command(project_id, i, user=f"u{n % 97}") for n, i in enumerate(ids)
        )
        worker = stack.start_worker(concurrency=2)
        results = Results(connect(stack.redis.url), Keys())
        peak = 0

        def drained_sampling_memory() -> bool:
            nonlocal peak
            procs = [psutil.Process(worker.pid), *psutil.Process(worker.pid).children()]
            peak = max([peak] + [p.memory_info().rss for p in procs])
            return results.stats()["counts"]["granted"] >= len(ids)

        wait_until(drained_sampling_memory, 120, "the backlog to drain", interval=0.2)
        assert results.stats()["counts"]["granted"] == len(ids)
        # Prefetch is one message per process and batches are taken under a
        # cap: no worker process holds the backlog (measured: ~82 MB).
        assert peak < 200 * 2**20, f"peak RSS {peak / 2**20:.0f} MB"
        assert stack.audit_counts(project_id) == {i: 1 for i in ids}
    finally:
        stack.stop()
