"""The resolve script (worker/lua/resolve.lua) and its orchestration against a
real redis-server: only from in_doubt, history, counts, indexes, claims."""

from __future__ import annotations

import threading

import pytest

from schemas.commands import RevokeCommand
from schemas.records import Status
from tests.helpers import command
from worker import resolve as rs
from worker.backends.registry import Backends
from worker.replay import Filters
from worker.settings import Settings
from worker.work import Arrival, OnUnknown, Outcome

TAKE = dict(max_inflight=100, flush_ms=0, lease_ms=5_000)


@pytest.fixture
def resolver(ledger, results):
    backends = Backends(Settings())  # project 1 is on Xsolla (the default backend)
    yield rs.Resolver(ledger, results, backends)
    backends.close()


def ingest(ledger, ids, project=1, source="t", **kw):
    return [
        r.result
        for r in ledger.ingest([Arrival(command(project, i, **kw), 1, f"{source}:{n}") for n, i in enumerate(ids)])
    ]


def send(ledger, statuses: dict[str, str], project=1):
    """Take one batch and complete it with the given outcomes."""
    (bid,) = ledger.take(max_batches=1, **TAKE)
    work = ledger.begin(bid, f"t-{bid}", lease_ms=5000, on_unknown=OnUnknown.doubt)
    ledger.complete(work, [Outcome(i, statuses[i], error="x" if statuses[i] != "granted" else "") for i in work.ids])
    return work


def test_granted_closes_it_with_history_counts_and_the_refund_data_a_revoke_needs(
    ledger, results, resolver, redis_client
):
    client, keys = redis_client
    ingest(ledger, ["d1"], user="u-1", sku="gem.pack.500", quantity=2)
    send(ledger, {"d1": "in_doubt"})
    summary = rs.resolve(resolver, [(1, "d1")], finding="granted", kind="grant", actor="ana", note="seen in PA")
    assert summary.verdicts["resolved"] == 1
    rec = results.get(1, "d1")
    assert rec["status"] == "granted" and rec["error"] is None
    (h,) = rec["history"]
    assert h["event"] == "resolve" and h["by"] == "ana" and h["note"] == "seen in PA"
    assert h["from_status"] == "in_doubt" and h["as"] == "granted" and h["at"]
    # The command reads back whole (its record keeps what the refund data does not).
    assert rec["command"]["operation"]["items"] == [{"sku": "gem.pack.500", "quantity": 2}]
    assert client.zscore(keys.index("in_doubt"), "1:d1") is None
    assert client.hget(keys.totals, "grant|1|granted") == "1"
    assert client.hget(keys.totals, "grant|1|in_doubt") == "1"  # outcomes ever written
    assert client.hget(keys.operator_actions, "resolve|grant|1|granted") == "1"
    last = client.xrevrange(keys.outcomes, count=1)[0][1]
    assert last["external_purchase_id"] == "d1" and last["status"] == "granted"
    # A refund now is sent, with what the purchase granted.
    ingest_revoke = ledger.ingest([Arrival(RevokeCommand(project_id=1, external_purchase_id="d1"), 1, "r:0")])
    assert [r.result for r in ingest_revoke] == ["new"]
    (bid,) = ledger.take(max_batches=1, **TAKE)
    (order,) = ledger.begin(bid, "rv", lease_ms=5000, on_unknown=OnUnknown.doubt).commands
    assert order.refund == {"user": {"id": "u-1"}, "items": [{"sku": "gem.pack.500", "quantity": 2}]}


def test_failed_makes_it_replayable_and_is_counted(ledger, results, resolver, redis_client):
    client, keys = redis_client
    ingest(ledger, ["d2"])
    send(ledger, {"d2": "in_doubt"})
    rs.resolve(resolver, [(1, "d2")], finding="failed", kind="grant", actor="bo")
    rec = results.get(1, "d2")
    assert rec["status"] == "failed" and "resolved failed by bo" in rec["error"]
    assert client.zscore(keys.index("failed"), "1:d2") is not None
    assert client.zscore(keys.index("in_doubt"), "1:d2") is None
    assert client.hget(keys.operator_actions, "resolve|grant|1|failed") == "1"
    assert ledger.replay([(1, "d2")], actor="bo", allow_in_doubt=False) == ["replayed"]
    assert [h["event"] for h in results.get(1, "d2")["history"]] == ["resolve", "replay"]


def test_only_in_doubt_is_resolved(ledger, results, resolver, redis_client):
    client, keys = redis_client
    ingest(ledger, ["g", "f", "r"])
    send(ledger, {"g": "granted", "f": "failed", "r": "rejected"})
    ingest(ledger, ["p"])  # pending
    targets = [(1, "g"), (1, "f"), (1, "r"), (1, "p"), (1, "nope")]
    summary = rs.resolve(resolver, targets, finding="granted", kind="grant", actor="ana")
    assert [p.resolve for p in summary.planned] == [False] * 5
    assert "it is granted, not in_doubt" in summary.planned[0].why
    assert "no such record" in summary.planned[4].why
    assert summary.verdicts["resolved"] == 0
    # The script refuses on its own too (the plan is not what guards).
    plans = [rs.Planned(pid, rid, True, "") for pid, rid in targets]
    assert resolver.write(plans, kind="grant", finding="failed", actor="x", note="") == [
        "granted",
        "failed",
        "rejected",
        "pending",
        "missing",
    ]
    assert results.get(1, "g")["history"] == [] and results.get(1, "f")["error"] == "x"
    assert client.hget(keys.operator_actions, "resolve|grant|1|failed") is None


def test_a_late_answer_after_a_resolution_changes_nothing(ledger, results, resolver):
    ingest(ledger, ["late"])
    (bid,) = ledger.take(max_batches=1, **{**TAKE, "lease_ms": 1})
    work = ledger.begin(bid, "tok", lease_ms=1, on_unknown=OnUnknown.doubt)
    import time

    time.sleep(0.01)
    assert ledger.recover(dispatch_lease_ms=1000, max_attempts=5)[0] == 1
    # While the stalled call's answer may still land, 'failed' is refused:
    # the answer would be ignored, and a replay would grant twice.
    summary = rs.resolve(resolver, [(1, "late")], finding="failed", kind="grant", actor="ana")
    assert summary.verdicts["resolved"] == 0 and "may still land" in summary.planned[0].why
    assert results.get(1, "late")["status"] == "in_doubt"
    # Past that time it is the operator's finding, and an answer after it changes nothing.
    resolver.late_answer_ms = 0
    rs.resolve(resolver, [(1, "late")], finding="failed", kind="grant", actor="ana")
    assert ledger.complete(work, [Outcome("late", "granted")]) == (False, 0)
    assert results.get(1, "late")["status"] == "failed"


def test_a_late_answer_still_settles_what_resolve_refused_to_call_failed(ledger, results, resolver):
    ingest(ledger, ["late2"])
    (bid,) = ledger.take(max_batches=1, **{**TAKE, "lease_ms": 1})
    work = ledger.begin(bid, "tok", lease_ms=1, on_unknown=OnUnknown.doubt)
    import time

    time.sleep(0.01)
    assert ledger.recover(dispatch_lease_ms=1000, max_attempts=5)[0] == 1
    rs.resolve(resolver, [(1, "late2")], finding="failed", kind="grant", actor="ana")
    ledger.complete(work, [Outcome("late2", "granted")])
    assert results.get(1, "late2")["status"] == "granted"


def test_a_resolution_planned_for_one_doubt_is_not_written_over_a_newer_one(ledger, results, resolver):
    ingest(ledger, ["again"])
    send(ledger, {"again": "in_doubt"})
    (plan,) = resolver.plan([(1, "again")], kind="grant", finding="failed")
    assert plan.resolve and plan.doubted_at
    # Meanwhile: a forced replay, sent, in doubt again.
    assert ledger.replay([(1, "again")], actor="bo", allow_in_doubt=True) == ["replayed"]
    import time

    time.sleep(0.005)
    send(ledger, {"again": "in_doubt"})
    assert resolver.write([plan], kind="grant", finding="failed", actor="ana", note="") == ["changed"]
    assert results.get(1, "again")["status"] == "in_doubt"


def test_resolve_racing_replays_and_resolves_changes_it_once(ledger, results, resolver):
    ingest(ledger, ["race"])
    send(ledger, {"race": "in_doubt"})
    plan = resolver.plan_one(1, "race", kind="grant", finding="granted")
    codes: list[str] = []
    barrier = threading.Barrier(6)

    def resolve_it(n: int) -> None:
        barrier.wait()
        codes.extend(resolver.write([plan], kind="grant", finding="granted", actor=f"r{n}", note=""))

    def replay_it(n: int) -> None:
        barrier.wait()
        codes.extend(ledger.replay([(1, "race")], actor=f"p{n}", allow_in_doubt=True))

    threads = [threading.Thread(target=resolve_it, args=(n,)) for n in range(4)]
    threads += [threading.Thread(target=replay_it, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(c in ("resolved", "replayed") for c in codes) == 1, codes
    events = [h["event"] for h in results.get(1, "race")["history"]]
    assert len(events) == 1


def test_bulk_selection_by_replays_filters(ledger, results, resolver):
    ingest(ledger, ["b1", "b2"], project=7, user="u-a")
    ingest(ledger, ["b3"], project=7, source="s2", user="u-b")
    (bid,) = ledger.take(max_batches=1, **TAKE)
    work = ledger.begin(bid, "t", lease_ms=5000, on_unknown=OnUnknown.doubt)
    ledger.complete(work, [Outcome(i, "in_doubt", error="lost") for i in work.ids])
    chosen = rs.select_in_doubt(results, Filters(Status.in_doubt, project_id=7, user="u-a"))
    assert chosen == [(7, "b1"), (7, "b2")]
    dry = rs.resolve(resolver, chosen, finding="failed", kind="grant", actor="ana", dry_run=True)
    assert [p.resolve for p in dry.planned] == [True, True] and not dry.done
    assert results.get(7, "b1")["status"] == "in_doubt"
    with pytest.raises(ValueError):
        rs.resolve(resolver, chosen, finding="maybe", kind="grant", actor="ana")


def test_a_refund_that_came_while_in_doubt_follows_the_resolution(ledger, results, resolver):
    ingest(ledger, ["rg", "rf"], user="u-9")
    send(ledger, {"rg": "in_doubt", "rf": "in_doubt"})
    refunds = ledger.ingest(
        [Arrival(RevokeCommand(project_id=1, external_purchase_id=i), 1, f"r:{i}") for i in ("rg", "rf")]
    )
    assert [r.result for r in refunds] == ["in_doubt", "in_doubt"]
    rs.resolve(resolver, [(1, "rg")], finding="granted", kind="grant", actor="ana")
    rs.resolve(resolver, [(1, "rf")], finding="failed", kind="grant", actor="ana")
    # Resolved granted: the refund is sent now, with what the purchase granted.
    assert results.get(1, "rg")["revoke"]["status"] == "pending"
    (bid,) = ledger.take(max_batches=1, **TAKE)
    work = ledger.begin(bid, "rv", lease_ms=5000, on_unknown=OnUnknown.doubt)
    assert work.kind == "revoke" and work.ids == ["rg"]
    assert work.commands[0].refund == {"user": {"id": "u-9"}, "items": [{"sku": "gem.pack", "quantity": 1}]}
    # Resolved failed: nothing to revoke.
    revoke = results.get(1, "rf")["revoke"]
    assert revoke["status"] == "noop" and "resolved failed by ana" in revoke["error"]
    assert ledger.replay([(1, "rf")], actor="ana", allow_in_doubt=False) == ["refunded"]


def test_resolutions_are_exported_as_grants_resolutions_total(ledger, results, resolver, redis_client):
    from worker.metrics import LedgerCollector

    client, keys = redis_client
    ingest(ledger, ["m1", "m2"], project=3)
    send(ledger, {"m1": "in_doubt", "m2": "in_doubt"}, project=3)

    def scrape() -> dict:
        return {f.name: f for f in LedgerCollector(client, keys, Settings(), lambda: True).collect()}

    def in_doubt(families: dict) -> float:
        return sum(s.value for s in families["grants_in_doubt"].samples if s.labels.get("project") == "3")

    assert in_doubt(scrape()) == 2
    rs.resolve(resolver, [(3, "m1")], finding="granted", kind="grant", actor="ana")
    rs.resolve(resolver, [(3, "m2")], finding="failed", kind="grant", actor="ana")
    families = scrape()
    samples = {(s.labels["project"], s.labels["as_status"]): s.value for s in families["grants_resolutions"].samples}
    assert samples[("3", "granted")] == 1 and samples[("3", "failed")] == 1
    assert in_doubt(families) == 0


def test_a_refund_in_doubt_with_its_grant_follows_a_late_answer(ledger, results):
    """Not only an operator's resolve settles an in_doubt grant: its call's
    late answer does too, and the refund that waited in doubt goes on."""
    ingest(ledger, ["late3"], user="u-3")
    (bid,) = ledger.take(max_batches=1, **{**TAKE, "lease_ms": 1})
    work = ledger.begin(bid, "tok", lease_ms=1, on_unknown=OnUnknown.doubt)
    import time

    time.sleep(0.01)
    assert ledger.recover(dispatch_lease_ms=1000, max_attempts=5)[0] == 1
    ledger.ingest([Arrival(RevokeCommand(project_id=1, external_purchase_id="late3"), 1, "r:late3")])
    assert results.get(1, "late3", kind="revoke")["status"] == "in_doubt"
    refund = {"user": {"id": "u-3"}, "items": [{"sku": "gem.pack.100", "quantity": 1}]}
    ledger.complete(work, [Outcome("late3", "granted", result={"ok": 1}, refund=refund)])
    assert results.get(1, "late3")["status"] == "granted"
    assert results.get(1, "late3", kind="revoke")["status"] == "pending"
    (rbid,) = ledger.take(max_batches=1, **TAKE)
    (order,) = ledger.begin(rbid, "rv", lease_ms=5000, on_unknown=OnUnknown.doubt).commands
    assert order.refund == refund


def test_a_late_answer_proving_only_its_own_attempt_did_nothing_leaves_the_refund_in_doubt(ledger, results):
    """Idempotent backend: attempt 1's answer lost, attempt 2 lost its lease
    (in_doubt, and the refund with it), then attempt 2's late 503 says only
    that attempt 2 did nothing: the refund must not become a noop."""
    ingest(ledger, ["fx"])
    (bid,) = ledger.take(max_batches=1, **TAKE)
    first = ledger.begin(bid, "t1", lease_ms=5000, on_unknown=OnUnknown.resend)
    assert (
        ledger.release(first, delay_ms=0, error="ReadTimeout", max_attempts=3, final="in_doubt", unknown=True)
        == "retry"
    )
    ledger.ingest([Arrival(RevokeCommand(project_id=1, external_purchase_id="fx", comment="Refund"), 1, "r:fx")])
    second = ledger.begin(bid, "t2", lease_ms=1, on_unknown=OnUnknown.resend)
    import time

    time.sleep(0.01)
    ledger.recover(dispatch_lease_ms=1000, max_attempts=2)
    assert results.get(1, "fx")["status"] == "in_doubt"
    assert ledger.release(second, delay_ms=0, error="503", max_attempts=3) == "fenced"
    ledger.complete(second, [Outcome("fx", "failed", error="503")])
    assert results.get(1, "fx", kind="revoke")["status"] == "in_doubt"


def test_granted_is_refused_too_while_a_lost_lease_may_still_answer(ledger, results, resolver):
    ingest(ledger, ["soon"])
    (bid,) = ledger.take(max_batches=1, **{**TAKE, "lease_ms": 1})
    ledger.begin(bid, "tok", lease_ms=1, on_unknown=OnUnknown.doubt)
    import time

    time.sleep(0.01)
    assert ledger.recover(dispatch_lease_ms=1000, max_attempts=5)[0] == 1
    summary = rs.resolve(resolver, [(1, "soon")], finding="granted", kind="grant", actor="ana")
    assert summary.verdicts["resolved"] == 0 and "may still land" in summary.planned[0].why
    assert results.get(1, "soon")["status"] == "in_doubt"
