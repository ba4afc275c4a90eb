"""The sender's decision table, with the backend answering through httpx's
injected transport (the real client, an in-process server function)."""

from __future__ import annotations

import random

import httpx
import pytest

from tests.helpers import command, xsolla_granted
from worker.backends.http import retry_after_s
from worker.backends.registry import Backends
from worker.backends.xsolla import XsollaInventory
from worker.ledger import Ledger
from worker.results import Results
from worker.sender import Sender, backoff_s
from worker.settings import Settings
from worker.work import Arrival, Lane, OnUnknown, Outcome


@pytest.fixture
def harness(redis_client):
    client, keys = redis_client
    calls: list[httpx.Request] = []
    answers: list = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        answer = answers.pop(0) if answers else xsolla_granted
        if isinstance(answer, Exception):
            raise answer
        return answer(request) if callable(answer) else answer

    settings = Settings(
        xsolla_base_url="http://xsolla.test", xsolla_merchant_id="m", xsolla_api_key="k", retry_max_attempts=3
    )
    ledger = Ledger(client, keys, ttl_ms=60_000, batch_limits={"grant": 50}, default_batch_limit=50)
    dispatched: list[str] = []

    def build(idempotent=False):
        configured = settings.model_copy(update={"xsolla_idempotent": idempotent})
        backends = Backends(configured, httpx.MockTransport(handler))
        return Sender(ledger, backends, configured, dispatched.extend, rng=random.Random(1))

    def batch(ids):
        ledger.ingest([Arrival(command(3, i), 1, f"t:{i}") for i in ids])
        return ledger.take(max_batches=1, max_inflight=10, flush_ms=0, lease_ms=5000)[0]

    def due(batch_id):
        """Let the batch's backoff pass (as the clock would)."""
        client.hset(keys.batch(batch_id), "nbf", 0)

    return type(
        "H",
        (),
        dict(
            calls=calls,
            answers=answers,
            build=build,
            batch=batch,
            dispatched=dispatched,
            results=Results(client, keys),
            due=staticmethod(due),
        ),
    )


def test_success_grants_each_operation_with_its_answer(harness):
    bid = harness.batch(["a", "b"])
    assert harness.build().send(bid)["granted"] == 2
    req = harness.calls[0]
    assert req.url.path == "/v2/project/3/inventory/purchase"
    assert req.headers["authorization"].startswith("Basic ")
    assert harness.results.get(3, "b")["response"]["items"][0]["balance"] == 1


def test_retryable_answers_back_off_then_fail_after_max_attempts(harness):
    bid = harness.batch(["a"])
    sender = harness.build()
    harness.answers.extend(
        [httpx.Response(503), httpx.Response(429, headers={"Retry-After": "7"}), httpx.ConnectError("refused")]
    )
    assert sender.send(bid)["state"] == "retry"
    assert sender.send(bid) == {"batch_id": bid, "skipped": True}  # still backing off
    harness.due(bid)
    assert sender.send(bid)["retry_in_s"] >= 7  # Retry-After honoured
    harness.due(bid)
    assert sender.send(bid)["state"] == "failed"
    rec = harness.results.get(3, "a")
    assert rec["status"] == "failed" and "could not connect" in rec["error"]


def test_whole_batch_4xx_splits_then_rejects_the_single_bad_one(harness):
    bid = harness.batch(["a", "b"])
    harness.answers.append(httpx.Response(404, json={"statusCode": 404, "errorMessage": "Item with sku not found"}))
    out = harness.build().send(bid)
    assert len(out["split_into"]) == 2 and harness.dispatched == out["split_into"]
    harness.answers.append(httpx.Response(422, json={"statusCode": 422}))
    harness.build().send(harness.dispatched[0])
    harness.build().send(harness.dispatched[1])
    assert harness.results.get(3, "a")["status"] == "rejected"
    assert harness.results.get(3, "b")["status"] == "granted"


@pytest.mark.parametrize("status", [500, 502, 504])
def test_5xx_other_than_503_may_have_applied_so_it_is_in_doubt(harness, status):
    bid = harness.batch(["a"])
    harness.answers.append(httpx.Response(status))
    harness.build().send(bid)
    assert harness.results.get(3, "a")["status"] == "in_doubt"
    assert len(harness.calls) == 1


def test_auth_failure_fails_without_retrying(harness):
    bid = harness.batch(["a"])
    harness.answers.append(httpx.Response(403, json={"errorMessage": "forbidden"}))
    harness.build().send(bid)
    assert harness.results.get(3, "a")["status"] == "failed"
    assert len(harness.calls) == 1


def test_unknown_outcome_is_in_doubt_unless_idempotent(harness):
    bid = harness.batch(["a"])
    harness.answers.append(httpx.ReadTimeout("slow"))
    harness.build().send(bid)
    assert harness.results.get(3, "a")["status"] == "in_doubt"
    bid = harness.batch(["b"])
    harness.answers.append(httpx.RemoteProtocolError("Server disconnected without sending a response."))
    assert harness.build(idempotent=True).send(bid)["state"] == "retry"
    harness.due(bid)
    assert harness.build(idempotent=True).send(bid)["granted"] == 1


def test_answer_missing_an_operation_leaves_it_in_doubt(harness):
    bid = harness.batch(["a", "b"])
    harness.answers.append(
        httpx.Response(
            200,
            json={
                "count": 1,
                "operations": [{"user": {"id": "user-1"}, "purchase": {"external_purchase_id": "a"}, "items": []}],
            },
        )
    )
    harness.build().send(bid)
    assert harness.results.get(3, "a")["status"] == "granted"
    assert harness.results.get(3, "b")["status"] == "in_doubt"


def test_backoff_grows_is_jittered_and_capped():
    rng = random.Random(0)
    delays = [backoff_s(a, base=0.5, cap=30, retry_after=None, rng=rng) for a in range(1, 12)]
    assert all(0.25 <= d <= 0.5 for d in delays[:1])
    assert all(15 <= d <= 30 for d in delays[7:])
    assert backoff_s(1, base=0.5, cap=30, retry_after=12, rng=rng) == 12
    assert retry_after_s("3") == 3 and retry_after_s("garbage") is None


def test_more_than_50_operations_are_never_sent():
    from worker import errors

    calls: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return xsolla_granted(request)

    backend = XsollaInventory(
        httpx.Client(transport=httpx.MockTransport(answer), base_url="http://x"),
        idempotent=False,
    )
    with pytest.raises(errors.InvalidRequest, match="not sent"):
        backend.send(Lane("grant", 1), [command(1, str(i)) for i in range(51)])
    assert calls == []


def test_an_unmapped_error_after_sending_is_an_unknown_outcome_not_a_stuck_batch(harness):
    bid = harness.batch(["a"])
    harness.answers.append(httpx.DecodingError("corrupt gzip"))
    harness.build().send(bid)
    assert harness.results.get(3, "a")["status"] == "in_doubt"
    bid = harness.batch(["b"])
    harness.answers.append(RuntimeError("a bug"))
    harness.build().send(bid)
    assert harness.results.get(3, "b")["status"] == "in_doubt"


def test_a_slow_call_keeps_its_lease_and_is_not_given_up_for_lost(redis_client):
    import time as _time

    from worker.leases import LeaseKeeper

    client, keys = redis_client
    ledger = Ledger(client, keys, ttl_ms=60_000, batch_limits={"grant": 50}, default_batch_limit=50)
    ledger.ingest([Arrival(command(3, "slow"), 1, "t:slow")])
    (bid,) = ledger.take(max_batches=1, max_inflight=10, flush_ms=0, lease_ms=5000)
    work = ledger.begin(bid, "tok", lease_ms=300, on_unknown=OnUnknown.doubt)
    assert work is not None
    keeper = LeaseKeeper(ledger, lease_ms=300, max_hold_s=5)
    with keeper.holding(work):
        _time.sleep(1.0)  # more than three leases long
        assert ledger.recover(dispatch_lease_ms=1000, max_attempts=5) == (0, [])
    assert ledger.complete(work, [Outcome("slow", "granted")]) == (True, 1)
    # Past the cap, renewal stops and the sweeper takes over.
    ledger.ingest([Arrival(command(3, "stuck"), 1, "t2:stuck")])
    (bid2,) = ledger.take(max_batches=1, max_inflight=10, flush_ms=0, lease_ms=5000)
    work2 = ledger.begin(bid2, "tok2", lease_ms=300, on_unknown=OnUnknown.doubt)
    assert work2 is not None
    with LeaseKeeper(ledger, lease_ms=300, max_hold_s=0.2).holding(work2):
        _time.sleep(1.0)
        assert ledger.recover(dispatch_lease_ms=1000, max_attempts=5)[0] == 1


def test_a_request_that_cannot_be_built_is_failed_not_in_doubt(harness, monkeypatch):
    """Nothing left us: a failure while building the body (a defect, or a
    stored command a backend cannot turn into a request) is certainly not
    applied, so failed (replayable), never in_doubt."""
    from worker.backends import xsolla

    bid = harness.batch(["a"])

    def broken(command):
        raise TypeError("'NoneType' object is not subscriptable")

    monkeypatch.setattr(xsolla, "operation", broken)
    harness.build().send(bid)
    rec = harness.results.get(3, "a")
    assert rec["status"] == "failed" and "nothing sent" in rec["error"]
    assert harness.calls == []


def test_trim_drops_old_index_entries_of_every_kind(redis_client):
    client, keys = redis_client
    from worker.keys import RECORD_NAMESPACES

    for kind in RECORD_NAMESPACES:
        client.zadd(keys.index("failed", kind), {"1:old": 1, "1:new": 2**50})
    Results(client, keys).trim(retention_ms=1000)
    for kind in RECORD_NAMESPACES:
        assert client.zrange(keys.index("failed", kind), 0, -1) == ["1:new"], kind


def test_what_a_read_back_settles_is_counted_in_the_send_summary(redis_client):
    """PlayFab: the call's answer is lost; the next attempt reads the
    inventory back, finds the grant applied and settles it: the summary (the
    send task's result, what Flower shows) counts it as granted."""
    import json

    client, keys = redis_client
    inventory: list[dict] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        if request.url.path.endswith("/GrantItemsToUsers"):
            for g in body["ItemGrants"]:
                inventory.append(
                    {"ItemId": g["ItemId"], "ItemInstanceId": f"i{len(inventory)}", "Annotation": g["Annotation"]}
                )
            raise httpx.ReadTimeout("answer lost", request=request)
        assert request.url.path.endswith("/GetUserInventory")
        return httpx.Response(
            200,
            json={
                "code": 200,
                "status": "OK",
                "data": {"PlayFabId": body["PlayFabId"], "Inventory": inventory, "VirtualCurrency": {}},
            },
        )

    settings = Settings(projects={3: {"backend": "playfab", "base_url": "http://pf.test"}}, playfab_secret_key="s")
    ledger = Ledger(client, keys, ttl_ms=60_000, batch_limits={"grant": 50}, default_batch_limit=50)
    sender = Sender(
        ledger, Backends(settings, httpx.MockTransport(handler)), settings, lambda ids: None, rng=random.Random(1)
    )
    ledger.ingest([Arrival(command(3, "pf-1", user="PF-ANA", sku="gem"), 1, "t:pf-1")])
    bid = ledger.take(max_batches=1, max_inflight=10, flush_ms=0, lease_ms=5000)[0]
    assert sender.send(bid).get("state") == "retry"  # lost: read it back next time
    client.hset(keys.batch(bid), "nbf", 0)
    summary = sender.send(bid)
    assert summary.get("reconciled") is True and summary.get("granted") == 1, summary
    assert Results(client, keys).get(3, "pf-1")["status"] == "granted"


def test_a_lost_answer_then_503s_until_the_end_is_in_doubt_not_failed(harness):
    """Idempotent backend: attempt 1's answer is lost (it may have applied),
    attempts 2 and 3 answer 503 (they did not). 'failed' would say nothing
    applied, and a refund would be dropped as a noop: it is in_doubt."""
    bid = harness.batch(["lost-then-503"])
    harness.answers.extend([httpx.ReadTimeout("slow"), httpx.Response(503), httpx.Response(503)])
    sender = harness.build(idempotent=True)
    for _ in range(3):
        sender.send(bid)
        harness.due(bid)
    record = harness.results.get(3, "lost-then-503")
    assert record["status"] == "in_doubt", record
    assert "earlier attempt" in record["error"]
