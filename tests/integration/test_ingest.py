"""Ingestion from the command stream, against real servers: publish order
decides originals and conflicts, revokes follow their grants across
processes, a SIGKILLed ingesting worker or a Redis restart loses nothing and
claims nothing twice, other languages' raw entries are granted (or dead
letters), a lone purchase does not wait, a call budget holds, the asyncio
publisher, and the drain of an older version's Celery queue."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import pytest

from devstack.localstack import REPO_ROOT, redis_binary, wait_until
from producers.aio import AsyncPublisher
from producers.publisher import Publisher, PublishFailed
from schemas.records import Status
from tests.conftest import make_stack, settings_for
from tests.helpers import command, grants, operation, wait_final
from worker.keys import Keys
from worker.results import Results
from worker.settings import Settings, connect

pytestmark = pytest.mark.integration


def test_the_earliest_published_payload_is_the_original_always(tmp_path, project_id):
    """A conflicting repeat 2,000 lines after its original, in a feed read by
    two workers of two processes each, never wins: five rounds, 40 repeats."""
    stack = make_stack(tmp_path, workers=2)
    try:
        results = Results(connect(stack.redis.url), Keys())
        for round_ in range(5):
            lines, originals = [], []
            for i in range(2_100):
                lines.append(json.dumps(operation(f"r{round_}-{i}", user=f"u{i % 17}", quantity=1)))
            for j in range(8):  # each repeat 2,000+ lines after its original, another quantity
                original = f"r{round_}-{j}"
                lines.insert(2_000 + j * 10 + j, json.dumps(operation(original, user=f"u{j % 17}", quantity=7)))
                originals.append(original)
            out = grants(stack, "publish", "--project-id", str(project_id), "-", stdin="\n".join(lines) + "\n")
            assert out.returncode == 0, out.stderr
            wait_final(results, project_id, [f"r{round_}-{i}" for i in range(2_100)], timeout=60)

            # The repeats come 2,000 lines later: wait until each is seen.
            def seen(wanted=originals):
                recs = {e: results.get(project_id, e) for e in wanted}
                return recs if all("conflicts" in r for r in recs.values()) else None

            records = wait_until(seen, 30, "the repeats")
            for epid, record in records.items():
                assert record["status"] == "granted"
                assert record["command"]["operation"]["items"][0]["quantity"] == 1, epid
                assert record["conflicts"]["count"] == 1
        audit = stack.audit_counts(project_id)
        assert max(audit.values()) == 1 and len(audit) == 5 * 2_100
    finally:
        stack.stop()


def test_a_revoke_published_right_after_its_grant_by_another_process_applies_after_it(stack, results, project_id):
    ids = [f"ord-{i}" for i in range(40)]
    grant_publisher = Publisher(settings_for(stack))
    script = (
        "import sys, json\n"
        "from producers.publisher import Publisher\n"
        "from schemas.commands import RevokeCommand\n"
        "from worker.settings import Settings\n"
        "p = Publisher(Settings())\n"
        "for line in sys.stdin:\n"
        "    pid, epid = json.loads(line)\n"
        "    p.publish(RevokeCommand(project_id=pid, external_purchase_id=epid, comment='Refund'))\n"
        "    print('ok', flush=True)\n"
    )
    refunder = subprocess.Popen(
        [sys.executable, "-c", script],
        env=stack.env(),
        cwd=REPO_ROOT,
        text=True,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        for epid in ids:
            grant_publisher.publish(command(project_id, epid, quantity=2))  # returns once Redis has it
            refunder.stdin.write(json.dumps([project_id, epid]) + "\n")
            refunder.stdin.flush()
            assert refunder.stdout.readline().strip() == "ok"
    finally:
        refunder.stdin.close()
        refunder.wait(timeout=30)

    def records() -> dict:
        return {i: results.get(project_id, i) for i in ids}

    wait_until(
        lambda: all((r.get("revoke") or {}).get("status") in ("revoked", "noop") for r in records().values()),
        30,
        "every revoke's outcome",
        interval=0.1,
    )
    recs = records()
    for epid, rec in recs.items():
        # Never "the purchase was never granted": the revoke came after its grant.
        assert (rec["status"], rec["revoke"]["status"]) in {("granted", "revoked"), ("cancelled", "noop")}, rec
        assert "never granted" not in (rec["revoke"]["error"] or "")
    balances = stack.sandbox_get("/sandbox/balances", project_id=project_id)["balances"]
    assert all(b["quantity"] == 0 for b in balances)


def test_a_worker_killed_while_ingesting_loses_nothing_and_claims_nothing_twice(tmp_path, project_id):
    stack = make_stack(tmp_path, workers=2)
    try:
        client = connect(stack.redis.url)
        results = Results(client, Keys())
        ids = [f"kill-{i}" for i in range(20_000)]
        Publisher(settings_for(stack)).publish_many(
            command(project_id, i, user=f"u{n % 31}") for n, i in enumerate(ids)
        )
        time.sleep(0.3)  # ingestion under way
        for worker in list(stack.workers):
            worker.kill()  # both: whichever held the ingestion lock dies with the range it read
        assert client.xlen("grants:commands") > 0, "the kill must land mid-ingest"
        stack.start_worker(concurrency=2)
        records = wait_final(results, project_id, ids, timeout=180)
        assert int(client.get("grants:ingest:count")) == len(ids)  # every entry claimed once
        assert all(r["duplicates"] == 0 for r in records.values())  # nothing claimed twice
        audit = stack.audit_counts(project_id)
        assert max(audit.values()) == 1
        assert {i for i, r in records.items() if r["status"] == "granted"} <= set(audit)
        assert set(audit) <= set(ids)
    finally:
        stack.stop()


def test_redis_restarted_mid_ingest_loses_no_accepted_command(tmp_path, project_id):
    stack = make_stack(tmp_path)
    try:
        publisher = Publisher(settings_for(stack))
        ids = [f"rs-{i}" for i in range(6_000)]
        assert publisher.publish_many(command(project_id, i) for i in ids[:3_000]) == 3_000
        stack.restart_redis(down_s=1)
        assert publisher.publish_many(command(project_id, i) for i in ids[3_000:]) == 3_000
        results = Results(connect(stack.redis.url), Keys())
        records = wait_final(results, project_id, ids, timeout=120)
        assert {r["status"] for r in records.values()} <= {"granted", "in_doubt"}
        audit = stack.audit_counts(project_id)
        assert max(audit.values()) == 1
        assert {i for i, r in records.items() if r["status"] == "granted"} <= set(audit)
    finally:
        stack.stop()


def test_raw_redis_cli_entries_from_another_language(stack, results, project_id):
    """What a Go, Node or Java producer runs, verbatim: granted; a malformed
    entry is a dead letter holding what it sent, and its neighbours are granted."""
    cli = redis_binary("redis-cli")
    port = str(stack.redis.port)

    def xadd(*fields: str) -> str:
        out = subprocess.run(
            [cli, "-p", port, "XADD", "grants:commands", "*", *fields], capture_output=True, text=True, timeout=10
        )
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    good = {"v": 1, "kind": "grant", "project_id": project_id, "operation": operation("cli-1")}
    xadd("command", json.dumps(good))
    bad_id = xadd("command", '{"v": 1, "kind": "grant", "project_id": "oops"')
    xadd("command", json.dumps({**good, "operation": operation("cli-2")}))
    other_id = xadd("payload", "not our field")
    xadd("command", json.dumps({**good, "kind": "teleport"}))
    xadd("command", json.dumps({**good, "operation": operation("cli-3")}))
    records = wait_final(results, project_id, ["cli-1", "cli-2", "cli-3"])
    assert {r["status"] for r in records.values()} == {"granted"}
    dead = {d["id"]: d for d in results.in_status(Status.dead, limit=1000)}
    assert dead[bad_id]["raw"] == '{"v": 1, "kind": "grant", "project_id": "oops"'
    assert "not JSON" in dead[bad_id]["reason"]
    assert "payload" in dead[other_id]["raw"] and "one field" in dead[other_id]["reason"]
    assert any("teleport" in (d["raw"] or "") for d in dead.values())


def test_a_lone_purchase_at_an_idle_lane_is_sent_without_waiting_for_the_flush_interval(tmp_path, project_id):
    stack = make_stack(tmp_path, env={"GRANTS_FLUSH_INTERVAL_MS": "10000"})
    try:
        publisher = Publisher(settings_for(stack))
        results = Results(connect(stack.redis.url), Keys())
        for i in range(5):
            started = time.monotonic()
            publisher.publish(command(project_id, f"lone-{i}"))
            wait_final(results, project_id, [f"lone-{i}"], timeout=5)
            assert time.monotonic() - started < 2.0  # the flush interval is 10 s
            time.sleep(0.2)
    finally:
        stack.stop()


def test_a_lane_over_its_call_budget_makes_no_more_calls_than_it_allows(tmp_path, project_id):
    stack = make_stack(tmp_path, env={"GRANTS_MAX_CALLS_PER_S": "4", "GRANTS_CALL_BURST": "2"})
    try:
        publisher = Publisher(settings_for(stack))
        results = Results(connect(stack.redis.url), Keys())
        ids = [f"bud-{i}" for i in range(60)]
        stack.sandbox_put("/sandbox/reset", {})
        started = time.monotonic()
        for i in ids:  # 30/s, one at a time: unbudgeted, eagerly, ~one call each
            publisher.publish(command(project_id, i))
            time.sleep(1 / 30)
        time.sleep(max(0.0, started + 2.0 - time.monotonic()))  # two seconds after the first publish
        calls = stack.sandbox_get("/sandbox/stats")["calls"]
        elapsed = time.monotonic() - started
        assert calls <= 2 + 4 * elapsed + 1, (calls, elapsed)  # burst + rate x time (+1 for the edge)
        records = wait_final(results, project_id, ids, timeout=30)
        assert {r["status"] for r in records.values()} == {"granted"}  # they accumulated, none lost
        assert stack.sandbox_get("/sandbox/stats")["calls"] < len(ids) / 2
    finally:
        stack.stop()


def test_the_asyncio_publisher_publishes_and_fails_loudly(redis_server, tmp_path):
    async def scenario():
        settings = Settings(redis_url=redis_server.url, key_prefix="aio-test")
        publisher = AsyncPublisher(settings)
        entry = await publisher.publish(command(4242, "aio-1"))
        assert await publisher.publish_many([command(4242, f"aio-{i}") for i in range(2, 12)]) == 10
        stored = connect(redis_server.url).xrange("aio-test:commands")
        assert stored[0][0] == entry and len(stored) == 11
        await publisher.close()
        down = AsyncPublisher(Settings(redis_url="redis://127.0.0.1:1/0", redis_retry_s=1))
        started = time.monotonic()
        with pytest.raises(PublishFailed):
            await down.publish(command(4242, "aio-x"))
        assert time.monotonic() - started < 10
        await down.close()

    asyncio.run(scenario())
    connect(redis_server.url).delete("aio-test:commands")


def test_outcome_follows_a_purchase_to_its_final_status(stack, project_id):
    publisher = Publisher(settings_for(stack))
    publisher.publish(command(project_id, "oc-1"))
    outcome = publisher.outcome(project_id, "oc-1", timeout=10)
    assert (outcome.status, outcome.external_purchase_id) == ("granted", "oc-1")
    again = publisher.outcome(project_id, "oc-1", timeout=1)  # already final: read from its record
    assert again.status == "granted" and again.at_ms == outcome.at_ms > 0
    with pytest.raises(TimeoutError):
        publisher.outcome(project_id, "never-published", timeout=0.5)

    async def asynchronously():
        aio = AsyncPublisher(settings_for(stack))
        await aio.publish(command(project_id, "oc-2"))
        found = await aio.outcome(project_id, "oc-2", timeout=10)
        again = await aio.outcome(project_id, "oc-2", timeout=1)
        await aio.close()
        return found, again

    found, again = asyncio.run(asynchronously())
    assert found.status == again.status == "granted" and again.at_ms == found.at_ms > 0


def test_commands_left_on_the_old_celery_queue_are_drained_once_in_order(tmp_path, project_id):
    """An upgrade: an older version's producers published chunks to the
    Celery queue grants.ingest; the new workers ingest each message once,
    oldest first (its original wins over a later conflicting repeat)."""
    from kombu import Connection, Exchange, Producer, Queue

    stack = make_stack(tmp_path, workers=0)
    try:
        chunks = [[command(project_id, f"old-{c}-{i}").to_message(1) for i in range(100)] for c in range(5)]
        chunks[4][0] = command(project_id, "old-0-0", quantity=9).to_message(1)  # a conflicting repeat, later
        # As the old producer sent them: Celery task messages on a kombu queue.
        exchange = Exchange("grants.ingest", type="direct")
        with Connection(stack.redis.url) as conn:
            producer = Producer(conn)
            for n, chunk in enumerate(chunks):
                producer.publish(
                    [[json.dumps(chunk)], {}, {}],
                    exchange=exchange,
                    routing_key="grants.ingest",
                    serializer="json",
                    headers={"task": "grants.ingest", "id": f"old-{n}"},
                    declare=[Queue("grants.ingest", exchange, routing_key="grants.ingest")],
                )
        client = connect(stack.redis.url)
        assert client.llen("grants.ingest") == 5
        stack.start_worker(concurrency=2)
        stack.start_worker(concurrency=2)
        results = Results(client, Keys())
        ids = [f"old-{c}-{i}" for c in range(5) for i in range(100) if (c, i) != (4, 0)]
        records = wait_final(results, project_id, ids, timeout=60)
        assert {r["status"] for r in records.values()} == {"granted"}
        original = results.get(project_id, "old-0-0")  # read again: its repeat came in the last message
        assert original["command"]["operation"]["items"][0]["quantity"] == 1
        assert original["conflicts"]["count"] == 1
        assert client.llen("grants.ingest") == 0
        assert max(stack.audit_counts(project_id).values()) == 1
    finally:
        stack.stop()
