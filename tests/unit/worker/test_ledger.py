"""The ledger's Lua scripts against a real redis-server: claims, batches,
leases and fencing."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest

from schemas.records import Status
from tests.helpers import command
from worker.ledger import Ledger
from worker.results import Results
from worker.work import Arrival, OnUnknown, Outcome

TAKE = dict(max_inflight=100, flush_ms=60_000, lease_ms=5_000)


def ingest(ledger, ids, source="t", project=1, **kw):
    return [
        r.result
        for r in ledger.ingest([Arrival(command(project, i, **kw), 1, f"{source}:{n}") for n, i in enumerate(ids)])
    ]


def test_claim_dedupes_and_refuses_conflicts(ledger, results):
    assert ingest(ledger, ["a", "b"]) == ["new", "new"]
    assert ingest(ledger, ["a"], source="other") == ["dup"]
    assert ingest(ledger, ["a"], source="x", quantity=9) == ["conflict"]
    rec = results.get(1, "a")
    assert rec["status"] == "pending" and rec["duplicates"] == 1
    assert rec["command"]["operation"]["items"][0]["quantity"] == 1
    assert rec["conflicts"]["count"] == 1
    assert results.stats()["counts"]["conflict"] == 1


def test_concurrent_claims_of_one_purchase_admit_exactly_one(ledger):
    outcomes, barrier = [], threading.Barrier(8)

    def claim(n):
        barrier.wait()
        outcomes.extend(ingest(ledger, ["same"], source=f"s{n}"))

    threads = [threading.Thread(target=claim, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["dup"] * 7 + ["new"]


def test_take_cuts_batches_of_at_most_50_and_waits_for_the_interval(ledger, redis_client):
    ingest(ledger, [f"p{i}" for i in range(120)])
    batches = ledger.take(max_batches=10, **TAKE)
    assert len(batches) == 2  # two full batches; 20 wait for the interval
    client, keys = redis_client
    sizes = [len(json.loads(client.hget(keys.batch(b), "members"))) for b in batches]
    assert sizes == [50, 50]
    assert ledger.take(max_batches=10, **TAKE) == []
    (last,) = ledger.take(max_batches=10, **{**TAKE, "flush_ms": 0})
    work = ledger.begin(last, "tok", lease_ms=5_000, on_unknown=OnUnknown.doubt)
    assert len(work.ids) == 20 and work.ids[0] == "p100"


def test_take_respects_the_inflight_bound(ledger):
    ingest(ledger, [f"p{i}" for i in range(200)])
    assert len(ledger.take(max_batches=10, **{**TAKE, "max_inflight": 3})) == 3


def test_complete_writes_outcomes_and_the_stream(ledger, results, redis_client):
    ingest(ledger, ["a", "b"])
    (bid,) = ledger.take(max_batches=1, **{**TAKE, "flush_ms": 0})
    work = ledger.begin(bid, "tok", lease_ms=5_000, on_unknown=OnUnknown.doubt)
    assert ledger.begin(bid, "other", lease_ms=5_000, on_unknown=OnUnknown.doubt) is None  # held
    assert (
        ledger.begin(bid, "tok", lease_ms=5_000, on_unknown=OnUnknown.doubt).attempt == 1
    )  # same holder: no new attempt
    owned, written = ledger.complete(work, [Outcome("a", "granted", {"ok": 1}), Outcome("b", "rejected", error="bad")])
    assert (owned, written) == (True, 2)
    assert results.get(1, "a")["status"] == "granted"
    assert results.get(1, "b")["error"] == "bad"
    client, keys = redis_client
    assert [e[1]["status"] for e in client.xrange(keys.outcomes)] == ["granted", "rejected"]
    assert client.zcard(keys.leases) == 0
    # Completing twice (a retried round trip) changes nothing.
    assert ledger.complete(work, [Outcome("a", "rejected")]) == (False, 0)
    assert results.get(1, "a")["status"] == "granted"


def test_expired_sending_lease_becomes_in_doubt_and_a_late_answer_resolves_it(ledger, results):
    ingest(ledger, ["a"])
    (bid,) = ledger.take(max_batches=1, **{**TAKE, "flush_ms": 0})
    work = ledger.begin(bid, "tok", lease_ms=1, on_unknown=OnUnknown.doubt)
    time.sleep(0.01)
    doubted, redispatch = ledger.recover(dispatch_lease_ms=1000, max_attempts=5)
    assert (doubted, redispatch) == (1, [])
    assert results.get(1, "a")["status"] == "in_doubt"
    # The stalled worker's answer arrives after all: fenced, but it resolves the doubt.
    assert ledger.complete(work, [Outcome("a", "granted")]) == (False, 1)
    assert results.get(1, "a")["status"] == "granted"


def test_expired_leased_batch_is_redispatched_and_idempotent_sending_resent(ledger):
    ingest(ledger, ["a", "b"])
    (bid,) = ledger.take(max_batches=1, **{**TAKE, "flush_ms": 0, "lease_ms": 1})
    time.sleep(0.01)
    assert ledger.recover(dispatch_lease_ms=1000, max_attempts=5) == (0, [bid])
    ledger.begin(bid, "tok", lease_ms=1, on_unknown=OnUnknown.resend)
    time.sleep(0.01)
    assert ledger.recover(dispatch_lease_ms=1000, max_attempts=5) == (0, [bid])
    assert ledger.begin(bid, "tok2", lease_ms=5000, on_unknown=OnUnknown.resend).attempt == 2


def test_release_retries_then_fails_after_max_attempts(ledger, results):
    ingest(ledger, ["a"])
    (bid,) = ledger.take(max_batches=1, **{**TAKE, "flush_ms": 0})
    for attempt in (1, 2):
        work = ledger.begin(bid, f"t{attempt}", lease_ms=5000, on_unknown=OnUnknown.doubt)
        assert work.attempt == attempt
        assert ledger.release(work, delay_ms=0, error="503", max_attempts=2) == ("retry" if attempt == 1 else "failed")
    rec = results.get(1, "a")
    assert rec["status"] == "failed" and rec["error"] == "503" and rec["attempts"] == 2


def test_split_halves_a_refused_batch(ledger, redis_client):
    ingest(ledger, [f"p{i}" for i in range(5)])
    (bid,) = ledger.take(max_batches=1, **{**TAKE, "flush_ms": 0})
    work = ledger.begin(bid, "tok", lease_ms=5000, on_unknown=OnUnknown.doubt)
    state, (left, right) = ledger.split(work, lease_ms=5000)
    assert state == "ok"
    halves = [ledger.begin(b, "t", lease_ms=5000, on_unknown=OnUnknown.doubt).ids for b in (left, right)]
    assert halves == [["p0", "p1", "p2"], ["p3", "p4"]]
    single = ledger.begin(left, "t", lease_ms=5000, on_unknown=OnUnknown.doubt)
    ingest(ledger, ["solo"])
    (sb,) = ledger.take(max_batches=1, **{**TAKE, "flush_ms": 0})
    assert ledger.split(ledger.begin(sb, "t", lease_ms=5000, on_unknown=OnUnknown.doubt), lease_ms=5000) == (
        "single",
        [],
    )
    assert single.attempt == 1


def test_list_and_stats_by_status(ledger, results):
    ingest(ledger, ["a", "b", "c"], project=5)
    assert [r["external_purchase_id"] for r in results.in_status(Status.pending, project_id=5)] == ["a", "b", "c"]
    stats = results.stats()
    assert stats["counts"]["pending"] == 3 and stats["waiting"] == 3
    assert stats["oldest_waiting_age_s"] >= 0


def _fail(ledger, ids, project=1):
    ingest(ledger, ids, project=project)
    (bid,) = ledger.take(max_batches=1, **{**TAKE, "flush_ms": 0})
    work = ledger.begin(bid, "tok", lease_ms=5000, on_unknown=OnUnknown.doubt)
    ledger.complete(
        work,
        [Outcome(i, "failed", error="503") for i in ids[:-1]] + [Outcome(ids[-1], "in_doubt", error="ReadTimeout")],
    )


def test_replay_rebuffers_failed_with_history_and_guards_the_rest(ledger, results):
    _fail(ledger, ["f1", "f2", "d1"])
    ingest(ledger, ["g1"])
    (bid,) = ledger.take(max_batches=1, **{**TAKE, "flush_ms": 0})
    ledger.complete(ledger.begin(bid, "t", lease_ms=5000, on_unknown=OnUnknown.doubt), [Outcome("g1", "granted")])
    targets = [(1, i) for i in ("f1", "d1", "g1", "nope")]
    assert ledger.replay(targets, actor="ops@host", allow_in_doubt=False) == [
        "replayed",
        "needs_force",
        "granted",
        "missing",
    ]
    rec = results.get(1, "f1")
    assert rec["status"] == "pending"
    assert rec["history"][0]["by"] == "ops@host" and rec["history"][0]["from_status"] == "failed"
    assert rec["history"][0]["last_error"] == "503" and rec["history"][0]["attempts_before"] == 1
    # Twice in a row (two operators at once): the second finds it pending.
    assert ledger.replay(targets[:1], actor="other", allow_in_doubt=False) == ["busy"]
    assert ledger.replay([(1, "d1")], actor="ops", allow_in_doubt=True) == ["replayed"]
    # Both are back in the buffer: the next take sends them like new commands.
    (again,) = ledger.take(max_batches=1, **{**TAKE, "flush_ms": 0})
    work = ledger.begin(again, "t2", lease_ms=5000, on_unknown=OnUnknown.doubt)
    assert sorted(work.ids) == ["d1", "f1"]
    ledger.complete(work, [Outcome("d1", "granted"), Outcome("f1", "granted")])
    assert results.get(1, "f1")["status"] == "granted" and results.get(1, "f1")["attempts"] == 2


def test_dead_letters_keep_the_raw_payload_bounded(ledger, results):
    from worker.keys import DEAD_LETTER_MAX_BYTES

    letter = ledger.dead_letter("x" * (DEAD_LETTER_MAX_BYTES + 10), "not JSON", source="task:0")
    (dead,) = results.in_status(Status.dead)
    assert dead["id"] == letter and dead["reason"] == "not JSON"
    assert dead["raw_truncated"] and len(dead["raw"]) == DEAD_LETTER_MAX_BYTES
    assert dead["raw_size"] == DEAD_LETTER_MAX_BYTES + 10


def revoke(ledger, ids, source="r", project=1):
    from schemas.commands import RevokeCommand

    return [
        r.result
        for r in ledger.ingest(
            [
                Arrival(RevokeCommand(project_id=project, external_purchase_id=i, comment="Refund"), 1, f"{source}:{n}")
                for n, i in enumerate(ids)
            ]
        )
    ]


def _send(ledger, results_by_id, kind_check=None):
    (bid,) = ledger.take(max_batches=1, **{**TAKE, "flush_ms": 0})
    work = ledger.begin(bid, f"t-{bid}", lease_ms=5000, on_unknown=OnUnknown.doubt)
    if kind_check:
        assert work.kind == kind_check
    # A granted grant keeps refund data, as its backend hands it over.
    ledger.complete(
        work,
        [
            Outcome(p, results_by_id[p], {"ok": p}, refund={"user": p} if results_by_id[p] == "granted" else None)
            for p in work.ids
        ],
    )
    return work


def test_revoke_of_a_waiting_grant_cancels_it_and_it_is_never_sent(ledger, results):
    ingest(ledger, ["a", "b"])
    assert revoke(ledger, ["a"]) == ["cancelled"]
    work = _send(ledger, {"b": "granted"})
    assert work.ids == ["b"]  # 'a' left its buffer without being sent
    rec = results.get(1, "a")
    assert rec["status"] == "cancelled" and rec["revoke"]["status"] == "noop"
    assert ingest(ledger, ["a"], source="late") == ["revoked"]  # a repeat stays cancelled


def test_revoke_before_the_grant_arrives_leaves_a_tombstone(ledger, results):
    assert revoke(ledger, ["x"]) == ["noop"]
    assert ingest(ledger, ["x"]) == ["revoked"]
    assert ledger.take(max_batches=1, **{**TAKE, "flush_ms": 0}) == []
    assert results.get(1, "x")["status"] == "cancelled"


def test_revoke_of_a_grant_being_sent_waits_for_its_outcome(ledger, results, redis_client):
    ingest(ledger, ["s", "t"])
    (bid,) = ledger.take(max_batches=1, **{**TAKE, "flush_ms": 0})
    work = ledger.begin(bid, "tok", lease_ms=5000, on_unknown=OnUnknown.doubt)
    assert revoke(ledger, ["s", "t"]) == ["waiting", "waiting"]
    assert results.stats()["revokes"]["waiting"] == 2
    ledger.complete(
        work,
        [
            Outcome("s", "granted", {"instance": "i-s"}, refund={"instances": ["i-s"]}),
            Outcome("t", "rejected", error="bad"),
        ],
    )
    assert results.get(1, "t")["revoke"]["status"] == "noop"
    rv = _send(ledger, {"s": "revoked"}, kind_check="revoke")
    # The revoke carries its request and what its grant left to revoke with.
    (body,) = rv.commands
    assert body.request.kind == "revoke" and body.request.external_purchase_id == "s"
    assert body.refund == {"instances": ["i-s"]} and body.request.comment == "Refund"
    rec = results.get(1, "s")
    assert rec["status"] == "granted" and rec["revoke"]["status"] == "revoked"
    assert results.stats()["revokes"]["revoked"] == 1 and results.stats()["revokes"]["waiting"] == 0


def test_revoke_of_granted_is_sent_once_and_of_failed_or_doubtful_is_not(ledger, results):
    ingest(ledger, ["g", "f", "d"])
    _send(ledger, {"g": "granted", "f": "failed", "d": "in_doubt"})
    assert revoke(ledger, ["g", "f", "d"]) == ["new", "noop", "in_doubt"]
    assert revoke(ledger, ["g"], source="again") == ["dup"]
    rv = _send(ledger, {"g": "revoked"}, kind_check="revoke")
    assert rv.ids == ["g"]
    # A refunded purchase is never replayed.
    assert ledger.replay([(1, "f")], actor="ops", allow_in_doubt=False) == ["refunded"]


def test_a_duplicate_dispatch_does_not_cut_a_backoff_short(ledger):
    ingest(ledger, ["a"])
    (bid,) = ledger.take(max_batches=1, **{**TAKE, "flush_ms": 0})
    work = ledger.begin(bid, "t1", lease_ms=5000, on_unknown=OnUnknown.doubt)
    assert ledger.release(work, delay_ms=60_000, error="429", max_attempts=10) == "retry"
    assert ledger.begin(bid, "t2", lease_ms=5000, on_unknown=OnUnknown.doubt) is None  # too early
    assert ledger.recover(dispatch_lease_ms=1000, max_attempts=10) == (0, [])  # not due either


def test_answers_arriving_after_the_fence_never_make_good_commands_rejected(ledger, results):
    ingest(ledger, ["p0", "p1", "p2"])
    (bid,) = ledger.take(max_batches=1, **{**TAKE, "flush_ms": 0})
    work = ledger.begin(bid, "tok", lease_ms=1, on_unknown=OnUnknown.doubt)
    time.sleep(0.01)
    assert ledger.recover(dispatch_lease_ms=1000, max_attempts=5)[0] == 3  # given up for lost: in_doubt
    assert ledger.split(work, lease_ms=5000) == ("fenced", [])
    assert ledger.release(work, delay_ms=0, error="503", max_attempts=5) == "fenced"
    # What the sender then writes: failed (nothing applied), through the fenced path.
    ledger.complete(work, [Outcome(p, "failed", error="422 for the whole call") for p in ("p0", "p1", "p2")])
    assert {results.get(1, p)["status"] for p in ("p0", "p1", "p2")} == {"failed"}
    assert ledger.replay([(1, "p0")], actor="ops", allow_in_doubt=False) == ["replayed"]


def test_idempotent_resends_stop_at_max_attempts_as_in_doubt(ledger, results):
    ingest(ledger, ["a"])
    (bid,) = ledger.take(max_batches=1, **{**TAKE, "flush_ms": 0})
    for attempt in (1, 2):
        ledger.begin(bid, f"t{attempt}", lease_ms=1, on_unknown=OnUnknown.resend)
        time.sleep(0.01)
        doubted, ids = ledger.recover(dispatch_lease_ms=1, max_attempts=2)
        assert (doubted, ids) == ((0, [bid]) if attempt == 1 else (1, []))
        time.sleep(0.01)
    assert results.get(1, "a")["status"] == "in_doubt"


def test_one_backed_off_project_cannot_take_every_slot(ledger):
    ingest(ledger, [f"a{i}" for i in range(500)], project=1)  # 10 batches ready
    ingest(ledger, [f"b{i}" for i in range(50)], project=2)  # 1 batch, younger
    taken = ledger.take(max_batches=20, **{**TAKE, "max_inflight": 8}, max_inflight_per_lane=4)
    lanes = [ledger.begin(b, f"t{b}", lease_ms=5000, on_unknown=OnUnknown.doubt).project_id for b in taken]
    assert lanes.count(1) == 4 and lanes.count(2) == 1


def test_a_grant_cancelled_after_its_batch_was_taken_is_never_sent(ledger, results):
    ingest(ledger, ["c1", "c2"])
    (bid,) = ledger.take(max_batches=1, **{**TAKE, "flush_ms": 0})  # taken, not yet begun
    assert revoke(ledger, ["c1"]) == ["cancelled"]
    work = ledger.begin(bid, "tok", lease_ms=5000, on_unknown=OnUnknown.doubt)
    assert work.ids == ["c2"] and len(work.commands) == 1
    ingest(ledger, ["c3"])
    (bid2,) = ledger.take(max_batches=1, **{**TAKE, "flush_ms": 0})
    assert revoke(ledger, ["c3"]) == ["cancelled"]
    assert ledger.begin(bid2, "tok", lease_ms=5000, on_unknown=OnUnknown.doubt) is None  # nothing left to send
    assert results.get(1, "c1")["status"] == "cancelled"


def test_replay_selection_filters(ledger, results):
    from worker import replay as rp

    ids = ["f-a", "f-b", "f-c", "f-d"]
    ledger.ingest(
        [
            Arrival(c, 1, f"s:{n}")
            for n, c in enumerate(
                [
                    command(1, "f-a", sku="gem", user="ana"),
                    command(1, "f-b", sku="sword", user="ana"),
                    command(1, "f-c", sku="gem", user="bo"),
                    command(2, "f-d", sku="gem", user="ana"),
                ]
            )
        ]
    )
    for project in (1, 2):
        (bid,) = ledger.take(max_batches=1, **{**TAKE, "flush_ms": 0})
        work = ledger.begin(bid, f"t{project}", lease_ms=5000, on_unknown=OnUnknown.doubt)
        ledger.complete(work, [Outcome(p, "failed", error="503") for p in work.ids])
    failed = rp.Filters(Status.failed)

    def chosen(**kw):
        return [r["external_purchase_id"] for r in rp.select(results, rp.Filters(Status.failed, **kw))]

    assert sorted(chosen()) == ids
    assert sorted(chosen(sku="gem")) == ["f-a", "f-c", "f-d"]
    assert sorted(chosen(user="ana", project_id=1)) == ["f-a", "f-b"]
    assert len(chosen(limit=2)) == 2
    assert chosen(since_ms=2**62) == [] and sorted(chosen(until_ms=2**62)) == ids
    assert failed.status is Status.failed
    with pytest.raises(ValueError):
        rp.Filters(Status.granted)  # never replayable


def test_an_older_versions_store_is_moved_onto_todays_layout(ledger, results, redis_client):
    """Records the previous version wrote (a hash per command, its claim
    inside): after the migration a repeat is still a duplicate, a conflict
    still a conflict, a granted purchase can still be refunded, and what was
    waiting is still sent."""
    from worker.migrate import migrate

    client, keys = redis_client
    t = str(int(time.time() * 1000) - 1000)  # a second ago: well inside every retention
    old = {
        "g1": {
            "st": "granted",
            "pid": "1",
            "epid": "g1",
            "h": command(1, "g1").payload_hash(),
            "cmd": command(1, "g1").canonical.decode(),
            "rcv": t,
            "enq": t,
            "src": "m:0",
            "bat": "b1|grant:1",
            "snt": t,
            "att": "1",
            "cpl": t,
            "res": '{"items":[{"sku":"gem.pack","quantity":1,"balance":1}]}',
        },
        "p1": {
            "st": "pending",
            "pid": "1",
            "epid": "p1",
            "h": command(1, "p1").payload_hash(),
            "cmd": command(1, "p1").canonical.decode(),
            "rcv": t,
            "enq": "0",
            "src": "m:1",
        },
    }
    for epid, fields in old.items():
        client.hset(keys.record(1, epid), mapping=fields)
    client.pexpire(keys.record(1, "g1"), 3_600_000)
    client.rpush(keys.buffer("grant:1"), "p1")
    client.zadd(keys.lanes, {"grant:1": 1})
    client.zadd(keys.index("granted"), {"1:g1": int(t)})

    refunds: list[dict] = []

    def refund_data(kind: str, cmd: dict, res: Any) -> dict:
        refunds.append(cmd)
        return {"user": cmd["operation"]["user"], "items": cmd["operation"]["items"]}

    assert migrate(client, keys, refund_data) == 2
    assert migrate(client, keys, lambda *a: None) == 0  # once
    assert 0 < client.pttl(keys.record(1, "g1")) <= 3_600_000
    rec = results.get(1, "g1")
    assert rec["status"] == "granted" and rec["response"]["items"][0]["balance"] == 1
    assert results.stats()["counts"]["granted"] == 1
    assert ingest(ledger, ["g1"]) == ["dup"]
    assert ingest(ledger, ["g1"], quantity=7) == ["conflict"]
    assert revoke(ledger, ["g1"]) == ["new"]
    assert ingest(ledger, ["p1"]) == ["dup"]
    (bid,) = ledger.take(max_batches=1, **{**TAKE, "flush_ms": 0})
    work = ledger.begin(bid, "tok", lease_ms=5000, on_unknown=OnUnknown.doubt)
    assert work.kind == "grant" and work.ids == ["p1"]


def finish_all(ledger, status="granted", refund=None):
    """Take, begin and complete every waiting batch with one status."""
    batch_ids = ledger.take(max_batches=100, max_inflight=100, flush_ms=0, lease_ms=5_000)
    assert batch_ids
    for batch_id in batch_ids:
        work = ledger.begin(batch_id, "tok", lease_ms=5_000, on_unknown=OnUnknown.doubt)
        ledger.complete(work, [Outcome(i, status, refund=refund) for i in work.ids])


def test_a_finished_grant_keeps_what_its_key_and_refund_data_do_not_say_once(redis_client, ledger, results):
    client, keys = redis_client
    ingest(ledger, ["slim-1"], user="player-9", sku="gem.pack.100")
    finish_all(ledger, refund={"user": {"id": "player-9"}, "items": [{"sku": "gem.pack.100", "quantity": 1}]})
    stored = client.get(keys.record(1, "slim-1"))
    header, body = stored.split("\n")[:2]
    assert "player-9" not in body and "slim-1" not in body and "project_id" not in body
    assert "|" not in json.loads(header)["bat"]  # the lane is the record's own
    view = results.get(1, "slim-1")
    assert view["command"]["operation"]["user"] == {"id": "player-9"}
    assert view["command"]["operation"]["items"] == [{"sku": "gem.pack.100", "quantity": 1}]
    assert view["command"]["operation"]["purchase"]["external_purchase_id"] == "slim-1"
    assert view["batch_id"].endswith("|grant:1")
    assert view["received_at"] <= view["sent_at"] <= view["completed_at"]


def test_prune_deletes_claims_past_retention_and_refund_data_past_the_window(redis_client):
    client, keys = redis_client
    day = 86_400_000
    ledger = Ledger(
        client, keys, ttl_ms=day, refund_ttl_ms=2 * day, claim_ttl_ms=3 * day, batch_limits={}, default_batch_limit=50
    )
    ingest(ledger, ["old", "refunded-long-ago", "fresh"])
    finish_all(ledger, refund={"user": {"id": "u"}})
    now = int(client.time()[0]) * 1000

    def age(record_id, first_days, final_days):
        key, field = keys.claim("grant", 1, record_id)
        h, st, _at, _done, refund = client.hget(key, field).split("|", 4)
        first = now - int(first_days * day)
        client.hset(key, field, f"{h}|{st}|{first}|+{int((first_days - final_days) * day)}|{refund}")

    age("old", 4, 4)  # past the 3-day dedupe retention
    age("refunded-long-ago", 2.5, 2.5)  # past the 2-day refund window
    deleted = stripped = 0
    for _ in range(1024 * 2):  # every bucket, whatever its cursor
        d, s = ledger.prune(1000)
        deleted, stripped = deleted + d, stripped + s
    assert (deleted, stripped) == (1, 1)
    assert client.hget(*keys.claim("grant", 1, "old")) is None
    assert client.hget(*keys.claim("grant", 1, "refunded-long-ago")).endswith("|")
    assert client.hget(*keys.claim("grant", 1, "fresh")).endswith('{"user":{"id":"u"}}')
    assert ingest(ledger, ["fresh", "refunded-long-ago"]) == ["dup", "dup"]


def test_replayed_commands_wait_from_their_replay_not_from_their_purchase(redis_client):
    """The backlog's age (stats, grants_oldest_waiting_seconds, the flush
    interval) is about the wait: commands replayed days after their purchase
    are not 'days old' in their buffer."""
    client, keys = redis_client
    ledger = Ledger(client, keys, ttl_ms=60_000, batch_limits={"grant": 2}, default_batch_limit=2)
    results = Results(client, keys)
    ids = [f"rq{i}" for i in range(5)]
    ledger.ingest([Arrival(command(1, i), 1, f"s:{i}") for i in ids])
    for bid in ledger.take(max_batches=10, max_inflight=100, flush_ms=0, lease_ms=5000):
        work = ledger.begin(bid, "t" + bid, lease_ms=5000, on_unknown=OnUnknown.doubt)
        assert work is not None
        ledger.complete(work, [Outcome(i, "failed", error="x") for i in work.ids])
    # Received long ago (as if days before the replay).
    for i in ids:
        raw = client.get(keys.record(1, i))
        header, rest = raw.split("\n", 1)
        client.set(keys.record(1, i), json.dumps({**json.loads(header), "rcv": 1_000}) + "\n" + rest)
    assert ledger.replay([(1, i) for i in ids], actor="op", allow_in_doubt=False) == ["replayed"] * 5
    ledger.take(max_batches=1, max_inflight=100, flush_ms=0, lease_ms=5_000)  # one batch taken
    stats = results.stats()
    assert stats["batches_in_flight"] == 1 and stats["waiting"] == 5  # (taken, not begun: waiting still)
    assert stats["oldest_waiting_age_s"] < 5
