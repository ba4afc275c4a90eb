"""The send task as Flower sees it: its result counts every outcome per kind,
names 429 retries, and a batch ending failed or in doubt makes the task
raise SendTaskFailed, after its outcomes are written. Real Redis (the
session's redis-server), the backend through httpx's MockTransport."""

from __future__ import annotations

import httpx
import pytest

from tests.helpers import command, xsolla_granted
from worker import tasks
from worker.errors import SendTaskFailed
from worker.runtime import Runtime
from worker.settings import Settings
from worker.work import Arrival


@pytest.fixture
def harness(redis_server, redis_client):
    client, keys = redis_client
    answers: list = []

    def handler(request: httpx.Request) -> httpx.Response:
        answer = answers.pop(0) if answers else xsolla_granted
        return answer(request) if callable(answer) else answer

    settings = Settings(
        redis_url=redis_server.url,
        key_prefix=keys.prefix,
        xsolla_base_url="http://xsolla.test",
        xsolla_merchant_id="m",
        xsolla_api_key="k",
        retry_max_attempts=3,
    )
    rt = Runtime(settings, lambda ids: None, httpx.MockTransport(handler))
    events: list[tuple[str, dict]] = []

    class Task:
        app = type("App", (), {"grants_runtime": staticmethod(lambda: rt)})()
        request = type("Request", (), {"id": "task-1"})()

        @staticmethod
        def send_event(type_: str, **fields) -> None:
            events.append((type_, fields))

    def batch(project_id: int, ids: list[str]) -> str:
        rt.ledger.ingest([Arrival(command(project_id, i), 1, f"t:{i}") for i in ids])
        (taken,) = rt.ledger.take(max_batches=1, max_inflight=10, flush_ms=0, lease_ms=5000)
        return taken

    yield type("H", (), dict(rt=rt, task=Task, answers=answers, events=events, batch=staticmethod(batch)))
    rt.close()


def test_a_task_that_granted_everything_returns_counts_per_kind(harness):
    bid = harness.batch(3, ["t-1", "t-2"])
    result = tasks.send_batches(harness.task, [bid])
    assert result["batches"] == [bid]
    assert result["outcomes"] == {"grant": {"granted": 2}}
    assert not harness.events


def test_a_batch_in_doubt_fails_the_task_after_its_outcomes_are_written(harness):
    bid = harness.batch(3, ["d-1", "d-2"])
    harness.answers.append(httpx.Response(500, json={"statusCode": 500}))  # may have applied
    with pytest.raises(SendTaskFailed) as failed:
        tasks.send_batches(harness.task, [bid])
    text = str(failed.value)
    assert text.startswith("2 in_doubt: ")
    assert '"failed_or_in_doubt_in":["' + bid + '"]' in text and "d-1 d-2" in text
    # Written before the task failed.
    assert {harness.rt.results.get(3, i)["status"] for i in ("d-1", "d-2")} == {"in_doubt"}
    # The summary is also the task's result in its events (what Flower searches).
    assert harness.events == [("task-outcomes", {"result": text})]


def test_a_429_is_reported_as_a_retry_in_the_result_not_a_celery_retry(harness):
    bid = harness.batch(3, ["r-1"])
    harness.answers.append(httpx.Response(429, headers={"Retry-After": "5"}, json={"statusCode": 429}))
    result = tasks.send_batches(harness.task, [bid])
    assert result["outcomes"] == {"grant": {"retried": 1}}
    (retry,) = result["retries"]
    assert retry["batch"] == bid and retry["in_s"] >= 5 and "429" in retry["error"]


def test_the_args_flower_shows_name_the_purchases_bounded():
    ids = [f"p-{i}" for i in range(tasks.SHOWN_IDS + 7)]
    text = tasks.describe(["b1|grant:3", "b2|grant:3"], {"b1|grant:3": ids[:10], "b2|grant:3": ids[10:]})
    assert text.startswith("['b1|grant:3', 'b2|grant:3'] purchases: p-0 p-1 ")
    assert f"p-{tasks.SHOWN_IDS - 1} ... and 7 more" in text and f"p-{tasks.SHOWN_IDS} " not in text


def test_the_send_task_is_acked_on_failure_and_never_retried_by_celery():
    from worker.celery_app import create_app
    from worker.settings import Settings

    task = create_app(Settings()).tasks[tasks.SEND_BATCHES]  # as registered, not as intended
    assert task.acks_late and task.acks_on_failure_or_timeout
    assert task.max_retries == 0 and not getattr(task, "autoretry_for", ())
    assert SendTaskFailed in task.throws
