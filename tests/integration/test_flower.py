"""What Flower shows of the send tasks, read from Flower's own HTTP API on a
real stack (redis-server, the sandbox, a `celery worker`, `celery flower`):
a task whose batch ended in doubt is FAILURE (and acked, never retried or
redelivered), a 429 retry is in the task's result, and a purchase id finds
its task through Flower's search."""

from __future__ import annotations

import itertools
import time

import httpx
import pytest

from devstack.localstack import Stack, wait_until
from producers.publisher import Publisher
from tests.conftest import make_stack
from tests.helpers import command, wait_final
from worker.keys import Keys
from worker.results import Results
from worker.settings import Settings, connect

pytestmark = pytest.mark.integration


@pytest.fixture
def flowered(tmp_path):
    stack = make_stack(tmp_path)
    try:
        stack.start_flower()
        yield stack
    finally:
        stack.stop()


def flower_tasks(stack: Stack, **params) -> dict[str, dict]:
    api = f"http://127.0.0.1:{stack.flower_port}/api/tasks"
    answer = httpx.get(api, params={"limit": 5000, **params}, auth=stack.flower_auth, timeout=10)
    answer.raise_for_status()
    return answer.json()


def sends_naming(stack: Stack, purchase_id: str, **params) -> list[dict]:
    """The send tasks whose args (as Flower shows them) name ``purchase_id``."""
    return [
        t
        for t in flower_tasks(stack, **params).values()
        if t["name"] == "grants.send_batches" and purchase_id in (t.get("args") or "")
    ]


def settled(stack: Stack, purchase_id: str, state: str) -> list[dict]:
    return [t for t in sends_naming(stack, purchase_id) if t["state"] == state]


def test_flower_shows_failures_retries_and_finds_purchases(flowered, project_id):
    stack = flowered
    results = Results(connect(stack.redis_url), Keys())
    publisher = Publisher(Settings(redis_url=stack.redis_url))

    # Flower subscribes to events a moment after it says it is connected:
    # a fresh grant each second until Flower shows its task settled.
    warmups = itertools.count()

    def a_grant_seen() -> list:
        pid = f"fw-{next(warmups)}"
        publisher.publish(command(project_id, pid))
        wait_final(results, project_id, [pid])
        time.sleep(1)
        return settled(stack, pid, "SUCCESS")

    (ok,) = wait_until(a_grant_seen, 30, "Flower to show a send task", interval=0)
    # A task that granted everything is SUCCESS, its counts per kind in its result.
    assert "'outcomes': {'grant': {'granted': 1}}" in ok["result"], ok["result"]

    # One purchase whose answer is lost after it applied: in_doubt.
    doubt_project = project_id + 70_000
    stack.sandbox_put("/sandbox/faults", {"script": [{"action": "drop", "path": f"/project/{doubt_project}/"}]})
    publisher.publish(command(doubt_project, "fl-doubt-1"))
    assert wait_final(results, doubt_project, ["fl-doubt-1"])["fl-doubt-1"]["status"] == "in_doubt"
    (failed,) = wait_until(lambda: settled(stack, "fl-doubt-1", "FAILURE"), 20, "Flower to show the task FAILURE")
    assert "SendTaskFailed" in failed["exception"] and "1 in_doubt" in failed["exception"], failed["exception"]
    assert failed["retries"] == 0
    # Flower's Failed view (state=FAILURE) lists it, and its search finds it by purchase id.
    assert failed["uuid"] in flower_tasks(stack, state="FAILURE")
    assert failed["uuid"] in flower_tasks(stack, search="fl-doubt-1")
    # Its summary is its result too, which Flower searches (a batch the task
    # took while draining is named there, not in its args).
    assert "fl-doubt-1" in failed["result"] and '"in_doubt":1' in failed["result"], failed["result"]
    assert failed["uuid"] in flower_tasks(stack, search="result:their_purchases")

    # A 429 first, then the grant: the retry is in the result of the task
    # that met it (the ledger backed the batch off; no Celery retry).
    limited_project = project_id + 71_000
    stack.sandbox_put(
        "/sandbox/faults", {"script": [{"status": 429, "retry_after": 1, "path": f"/project/{limited_project}/"}]}
    )
    publisher.publish(command(limited_project, "fl-429-1"))
    assert wait_final(results, limited_project, ["fl-429-1"])["fl-429-1"]["status"] == "granted"
    first = wait_until(
        lambda: [t for t in settled(stack, "fl-429-1", "SUCCESS") if "'retries'" in (t.get("result") or "")],
        20,
        "Flower to show the task that met the 429",
    )
    assert "429" in first[0]["result"] and "'retried': 1" in first[0]["result"], first[0]["result"]

    # The failed task's message was acked like any other: not run again, not
    # waiting on the queue or in the broker's unacked set.
    time.sleep(2)
    assert len(sends_naming(stack, "fl-doubt-1")) == 1
    broker = connect(stack.redis_url)
    assert broker.llen("grants.send") == 0 and broker.hlen("unacked") == 0
    assert "Traceback" not in stack.workers[0].log_text()
    assert results.get(doubt_project, "fl-doubt-1")["status"] == "in_doubt"
