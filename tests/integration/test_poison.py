"""No message on any of our queues, in any shape, stops a worker: each one
becomes a dead letter holding the bytes that arrived, and the worker goes on
granting. Real redis-server, real `celery -A worker worker`, messages pushed
straight into the broker's lists as another program could."""

from __future__ import annotations

import json

import pytest

from devstack.localstack import wait_until
from producers.publisher import Publisher
from schemas.records import Status
from tests.conftest import make_stack, settings_for
from tests.helpers import command, kombu_envelope, wait_final
from worker.keys import Keys
from worker.results import Results
from worker.settings import connect

pytestmark = pytest.mark.integration

DEEP = "[" * 10_000 + "]" * 10_000


def poison(queue: str, task: str) -> list[bytes]:
    """Entries that once stopped a worker, or vanished without a trace."""
    return [
        kombu_envelope('{"not": "a list"}', task=task, queue=queue),
        b"this is not json",
        b"[1,2,3]",
        DEEP.encode(),
        kombu_envelope(DEEP, task=task, queue=queue),
        kombu_envelope(
            "gASVCAAAAAAAAACMBHB3bmWULg==", task=task, queue=queue, content_type="application/x-python-serialize"
        ),
        kombu_envelope("[[], {}, {}]", task="grants.no_such_task", queue=queue),
        kombu_envelope("[[], {}, {}]", task=task, queue=queue, headers=["not", "a", "dict"]),
        kombu_envelope('[[["not-a-batch-id"]], {}, {}]', task=task, queue=queue),
    ]


def test_poison_messages_become_dead_letters_and_the_worker_goes_on(tmp_path, project_id):
    stack = make_stack(tmp_path)
    try:
        worker = stack.workers[0]
        client = connect(stack.redis.url)
        pushed = poison("grants.ingest", "grants.ingest") + poison("grants.send", "grants.send_batches")
        for entry in pushed[: len(pushed) // 2]:
            client.lpush("grants.ingest", entry)
        for entry in pushed[len(pushed) // 2 :]:
            client.lpush("grants.send", entry)
        results = Results(client, Keys())
        wait_until(
            lambda: len(results.in_status(Status.dead, limit=100)) >= len(pushed),
            30,
            "a dead letter per poison message",
            interval=0.1,
        )
        Publisher(settings_for(stack)).publish(command(project_id, "after-poison"))
        assert wait_final(results, project_id, ["after-poison"])["after-poison"]["status"] == "granted"

        assert worker.alive(), worker.log_text()[-3000:]
        log = worker.log_text()
        assert "Unrecoverable error" not in log
        assert log.count(" ready.") == 1, "the worker restarted"
        dead = results.in_status(Status.dead, limit=100)
        assert len(dead) == len(pushed), [d["reason"] for d in dead]
        assert int(client.hget(Keys().totals, "dead") or 0) == len(pushed)  # grants_dead_letters_total
        raws = {d["raw"] for d in dead}
        for entry in pushed:
            # What arrived: the whole list entry, or, for a kombu message
            # Celery received, its body exactly as sent.
            # (an element of an ingest chunk is judged, and kept, alone).
            arrived = {entry.decode()}
            try:
                body = json.loads(entry)["body"]
                arrived.add(body)
                arrived.update(json.dumps(e) for e in json.loads(body)[0][0])
            except (ValueError, KeyError, TypeError, IndexError, RecursionError):
                pass
            assert arrived & raws, f"no dead letter holds {entry[:80]!r}"
        assert client.llen("grants.ingest") == 0 and client.llen("grants.send") == 0
    finally:
        stack.stop()


def test_each_element_of_a_hand_made_chunk_is_judged_alone(tmp_path, project_id):
    """A 1,100-deep element, a 5,000-digit number and a 70 KiB bad element
    sink nobody else in their chunk: 999 valid commands granted, each bad
    element a dead letter holding exactly its own text."""
    stack = make_stack(tmp_path)
    try:
        client = connect(stack.redis.url)
        ids = [f"hm-{i}" for i in range(999)]
        valid = [json.dumps(command(project_id, i).to_message(0)) for i in ids]
        bad = [
            "[" * 1100 + "]" * 1100,
            "1" * 5000,
            json.dumps({"v": 1, "kind": "grant", "project_id": project_id, "junk": "x" * 70_000}),
        ]
        elements = [*valid[:300], bad[0], *valid[300:600], bad[1], *valid[600:], bad[2]]
        chunk = "[" + ",".join(elements) + "]"
        client.lpush(
            "grants.ingest", kombu_envelope(json.dumps([[chunk], {}, {}]), task="grants.ingest", queue="grants.ingest")
        )
        results = Results(client, Keys())
        records = wait_final(results, project_id, ids, timeout=60)
        assert {r["status"] for r in records.values()} == {"granted"}
        assert stack.audit_counts(project_id) == {i: 1 for i in ids}
        dead = {d["raw"]: d for d in results.in_status(Status.dead, limit=100)}
        assert set(dead) == set(bad), [d["reason"] for d in dead.values()]
        assert not any(d["raw_truncated"] for d in dead.values())
    finally:
        stack.stop()
