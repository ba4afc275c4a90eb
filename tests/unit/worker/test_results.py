"""The results store's read side against fakeredis: records, claims,
conflicts, indexes, the outcome stream, buffers, batches and totals written
in the documented formats (schemas/records.py, worker/keys.py, the claim and
totals formats of worker/lua/_lib.lua) by hand, as the Lua scripts would
leave them. What the scripts do is tested on a real redis-server
(tests/unit/worker/test_ledger.py); this is what Python makes of it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest

from schemas.records import Status
from tests.helpers import command
from worker.keys import Keys
from worker.results import Results

# 2026-11-21T10:00:00Z and a few moments after, in ms.
T0 = 1_795_255_200_000
ISO0 = "2026-11-21T10:00:00.000+00:00"


@pytest.fixture
def fake() -> Iterator[fakeredis.FakeRedis]:
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def keys() -> Keys:
    return Keys("t")


@pytest.fixture
def results(fake, keys) -> Results:
    return Results(fake, keys)


def put_record(
    client: Any,
    keys: Keys,
    project_id: int,
    record_id: str,
    header: dict[str, Any],
    body: Any,
    answer: Any = None,
    kind: str = "grant",
) -> None:
    """``<header JSON>\\n<command JSON>[\\n<answer JSON>]`` at the record's key."""
    text = json.dumps(header) + "\n" + (body if isinstance(body, str) else json.dumps(body))
    if answer is not None:
        text += "\n" + json.dumps(answer)
    client.set(keys.record(project_id, record_id, kind), text)


def grant_body(project_id: int, purchase_id: str, **kw: Any) -> str:
    return command(project_id, purchase_id, **kw).canonical.decode()


def test_a_granted_record_is_shown_with_its_times_counts_batch_and_answer(results, fake, keys):
    answer = {"items": [{"sku": "gem.pack", "quantity": 1, "balance": 3}]}
    header = {"st": "granted", "rcv": T0, "enq": T0 - 5, "snt": T0 + 10, "cpl": T0 + 250, "att": 2, "dup": 4}
    put_record(fake, keys, 7, "p-1", {**header, "bat": "b12|grant:7"}, grant_body(7, "p-1"), answer)
    view = results.get(7, "p-1")
    assert view is not None
    assert view == {
        "project_id": 7,
        "external_purchase_id": "p-1",
        "status": "granted",
        "attempts": 2,
        "duplicates": 4,
        "splits": 0,
        "calls": 2,
        "enqueued_at": "2026-11-21T09:59:59.995+00:00",
        "received_at": ISO0,
        "sent_at": "2026-11-21T10:00:00.010+00:00",
        "completed_at": "2026-11-21T10:00:00.250+00:00",
        "batch_id": "b12|grant:7",
        "response": answer,
        "error": None,
        "command": {"kind": "grant", "operation": command(7, "p-1").body()},
        "history": [],
    }


def test_attempts_leave_out_the_calls_that_split_the_batch(results, fake, keys):
    # Two calls refused as a whole split its batch twice; the third granted it.
    header = {"st": "granted", "rcv": T0, "cpl": T0 + 250, "att": 3, "spl": 2}
    put_record(fake, keys, 7, "p-s", header, grant_body(7, "p-s"))
    view = results.get(7, "p-s")
    assert view is not None
    assert (view["attempts"], view["splits"], view["calls"]) == (1, 2, 3)


def test_an_unknown_command_is_none(results):
    assert results.get(7, "never-seen") is None
    assert results.get(7, "never-seen", "backpack.create") is None


def test_a_pending_record_has_no_answer_and_unset_times_are_none(results, fake, keys):
    put_record(fake, keys, 7, "p-2", {"st": "pending", "rcv": T0, "enq": 0}, grant_body(7, "p-2"))
    view = results.get(7, "p-2")
    assert view is not None
    assert (view["status"], view["response"], view["enqueued_at"], view["sent_at"]) == ("pending", None, None, None)
    assert view["batch_id"] is None and view["attempts"] == 0


def test_the_history_of_replays_is_shown_with_iso_times(results, fake, keys):
    hist = [{"event": "replay", "by": "ops-anna", "at": T0, "from_status": "failed", "attempts": 6, "error": "503"}]
    put_record(fake, keys, 7, "p-3", {"st": "pending", "rcv": T0, "hist": hist}, grant_body(7, "p-3"))
    view = results.get(7, "p-3")
    assert view is not None
    assert view["history"] == [{**hist[0], "at": ISO0}]


def test_a_command_waiting_out_a_backoff_shows_its_batchs_last_error(results, fake, keys):
    put_record(fake, keys, 7, "p-4", {"st": "sending", "rcv": T0, "bat": "b3|grant:7"}, grant_body(7, "p-4"))
    fake.hset(keys.batch("b3|grant:7"), mapping={"err": "HTTP 503 Service Unavailable", "begun": 1})
    view = results.get(7, "p-4")
    assert view is not None
    assert view["status"] == "sending" and view["error"] == "HTTP 503 Service Unavailable"


def test_a_grant_is_shown_with_its_revoke_and_its_conflicting_repeats(results, fake, keys):
    put_record(fake, keys, 7, "p-5", {"st": "granted", "rcv": T0, "cpl": T0}, grant_body(7, "p-5"))
    revoke = {"kind": "revoke", "project_id": 7, "external_purchase_id": "p-5", "comment": "Refund"}
    put_record(fake, keys, 7, "p-5", {"st": "revoked", "rcv": T0 + 1, "cpl": T0 + 2}, revoke, kind="revoke")
    repeat = command(7, "p-5", quantity=500)
    fake.hset(
        keys.conflict(7, "p-5"),
        mapping={
            "pid": 7,
            "epid": "p-5",
            "n": 2,
            "at": T0 + 3,
            "err": "a repeat with a different payload",
            "cmd": repeat.canonical.decode(),
        },
    )
    view = results.get(7, "p-5")
    assert view is not None
    assert view["status"] == "granted"
    assert view["revoke"]["status"] == "revoked" and view["revoke"]["kind"] == "revoke"
    assert view["revoke"]["request"] == revoke
    assert view["conflicts"] == {
        "project_id": 7,
        "external_purchase_id": "p-5",
        "status": "conflict",
        "count": 2,
        "last_seen_at": "2026-11-21T10:00:00.003+00:00",
        "error": "a repeat with a different payload",
        "command": {"kind": "grant", "operation": repeat.body()},
    }


def test_a_record_past_its_retention_is_shown_by_its_claim(results, fake, keys):
    bucket, field = keys.claim("grant", 7, "old-1")
    assert bucket.startswith("t:claims:") and field == "rec:7:old-1"
    # "<payload hash>|<status>|<first seen ms>|<final ms>|<refund data>"
    fake.hset(bucket, field, f"{command(7, 'old-1').payload_hash()}|granted|{T0}|{T0 + 250}|" + '{"user":"u"}')
    view = results.get(7, "old-1")
    assert view is not None
    assert view["status"] is None and "past its retention" in view["note"]
    assert view["claim"] == {
        "payload_hash": command(7, "old-1").payload_hash(),
        "status": "granted",
        "first_seen_at": ISO0,
        "completed_at": "2026-11-21T10:00:00.250+00:00",
        "refund_data_kept": True,
    }
    # In flight: no status yet, no final time, no refund data.
    bucket, field = keys.claim("grant", 7, "new-1")
    fake.hset(bucket, field, f"abc||{T0}|0|")
    claim = results.get(7, "new-1")
    assert claim is not None
    assert claim["claim"] == {
        "payload_hash": "abc",
        "status": None,
        "first_seen_at": ISO0,
        "completed_at": None,
        "refund_data_kept": False,
    }


def test_other_kinds_are_read_under_their_namespace(results, fake, keys):
    body = {"kind": "backpack.create", "project_id": 7, "operation_id": "op-1", "user_id": "u"}
    put_record(fake, keys, 7, "op-1", {"st": "granted", "rcv": T0}, body, {"ok": True}, kind="backpack.create")
    assert fake.exists("t:bpc:7:op-1")
    view = results.get(7, "op-1", "backpack.create")
    assert view is not None
    assert view["operation_id"] == "op-1" and view["kind"] == "backpack.create"
    assert view["command"] == body and view["response"] == {"ok": True}
    assert results.get(7, "op-1") is None  # not a grant


def index(fake, keys: Keys, status: str, members: dict[str, int], kind: str = "grant") -> None:
    fake.zadd(keys.index(status, kind), members)


def test_in_status_lists_an_index_oldest_first_within_project_time_and_limit(results, fake, keys):
    for n, (pid, epid) in enumerate([(7, "f-1"), (8, "f-2"), (7, "f-3"), (7, "f-4")]):
        put_record(fake, keys, pid, epid, {"st": "failed", "rcv": T0 + n, "err": "503"}, grant_body(pid, epid))
    index(fake, keys, "failed", {"7:f-4": T0 + 30, "7:f-1": T0, "8:f-2": T0 + 10, "7:f-3": T0 + 20})
    index(fake, keys, "failed", {"7:gone": T0 + 5})  # its record expired: left out

    def ids(**kw: Any) -> list[tuple[int, str]]:
        return [(v["project_id"], v["external_purchase_id"]) for v in results.in_status(Status.failed, **kw)]

    assert ids() == [(7, "f-1"), (8, "f-2"), (7, "f-3"), (7, "f-4")]
    assert ids(project_id=7) == [(7, "f-1"), (7, "f-3"), (7, "f-4")]
    assert ids(since_ms=T0 + 10, until_ms=T0 + 20) == [(8, "f-2"), (7, "f-3")]
    assert ids(limit=2) == [(7, "f-1"), (8, "f-2")]
    assert ids(project_id=9) == []
    assert [v["error"] for v in results.in_status(Status.failed, project_id=8)] == ["503"]


def test_iter_pages_through_a_long_index(results, fake, keys):
    members = {f"7:i-{n:03}": T0 + n for n in range(250)}
    for member in members:
        put_record(fake, keys, 7, member[2:], {"st": "in_doubt", "rcv": T0}, grant_body(7, member[2:]))
    index(fake, keys, "in_doubt", members)
    got = [v["external_purchase_id"] for v in results.iter(Status.in_doubt, page=100)]
    assert got == [f"i-{n:03}" for n in range(250)]


def test_granted_is_listed_off_the_outcome_stream_by_current_status(results, fake, keys):
    for epid, st in (("g-1", "granted"), ("g-2", "granted"), ("g-3", "granted")):
        put_record(fake, keys, 7, epid, {"st": st, "rcv": T0}, grant_body(7, epid))
    put_record(fake, keys, 8, "g-4", {"st": "granted", "rcv": T0}, grant_body(8, "g-4"))
    put_record(fake, keys, 7, "g-2", {"st": "revoked", "rcv": T0}, {"kind": "revoke"}, kind="revoke")

    def outcome(pid: int | str, epid: str, status: str, kind: str = "grant") -> None:
        fields = {"project_id": pid, "external_purchase_id": epid, "kind": kind, "status": status, "at": T0}
        fake.xadd(keys.outcomes, fields)

    outcome(7, "g-1", "granted")
    outcome(7, "g-2", "granted")
    outcome(7, "g-2", "revoked", "revoke")  # a revoke's outcome: not a grant's
    outcome("", "junk", "dead")  # a dead letter's entry has no project
    outcome(8, "g-4", "granted")
    outcome(7, "g-3", "failed")  # only entries announcing the status listed count
    outcome(7, "gone", "granted")  # record expired
    listed = results.in_status(Status.granted)
    assert [(v["project_id"], v["external_purchase_id"]) for v in listed] == [(7, "g-1"), (7, "g-2"), (8, "g-4")]
    assert [v["external_purchase_id"] for v in results.in_status(Status.granted, project_id=8)] == ["g-4"]
    assert [v["external_purchase_id"] for v in results.in_status(Status.revoked, kind="revoke")] == ["g-2"]


def test_pending_and_sending_are_read_off_the_buffers_and_the_batches(results, fake, keys):
    for epid, st in (("w-1", "pending"), ("w-2", "pending"), ("w-3", "pending"), ("s-1", "sending")):
        put_record(fake, keys, 7, epid, {"st": st, "rcv": T0}, grant_body(7, epid))
    fake.rpush(keys.buffer("grant:7"), "w-1", "w-2")
    fake.zadd(keys.lanes, {"grant:7": T0})
    # A batch taken, not begun (its members count as pending), and one being sent.
    fake.hset(keys.batch("b1|grant:7"), mapping={"members": json.dumps(["w-3"]), "n": 1, "begun": 0})
    fake.hset(keys.batch("b2|grant:7"), mapping={"members": json.dumps(["s-1"]), "n": 1, "begun": 1})
    fake.zadd(keys.leases, {"b1|grant:7": T0 + 5000, "b2|grant:7": T0 + 5000})
    assert sorted(v["external_purchase_id"] for v in results.in_status(Status.pending)) == ["w-1", "w-2", "w-3"]
    assert [v["external_purchase_id"] for v in results.in_status(Status.sending)] == ["s-1"]
    assert results.in_status(Status.pending, project_id=8) == []
    assert results.in_status(Status.pending, kind="revoke") == []


def test_dead_letters_are_listed_with_their_raw_payload(results, fake, keys):
    fake.hset(
        keys.dead_letter("d1"),
        mapping={"id": "d1", "epid": "pm-bad", "reason": "not JSON", "at": T0, "src": "1-0", "raw": "{x", "size": 2},
    )
    index(fake, keys, "dead", {"d1": T0})
    (letter,) = results.in_status(Status.dead)
    assert letter == {
        "id": "d1",
        "project_id": None,
        "external_purchase_id": "pm-bad",
        "status": "dead",
        "reason": "not JSON",
        "received_at": ISO0,
        "source": "1-0",
        "raw": "{x",
        "raw_size": 2,
        "raw_truncated": False,
    }


def test_conflicts_are_listed_off_their_index(results, fake, keys):
    fake.hset(keys.conflict(7, "c-1"), mapping={"pid": 7, "epid": "c-1", "n": 1, "at": T0, "err": "different"})
    index(fake, keys, "conflict", {"7:c-1": T0})
    assert [(c["external_purchase_id"], c["count"]) for c in results.in_status(Status.conflict)] == [("c-1", 1)]


def test_totals_by_kind_and_status_and_per_project(results, fake, keys):
    fake.hset(
        keys.totals,
        mapping={"grant|7|granted": 5, "grant|8|granted": 2, "grant|7|failed": 1, "revoke|7|revoked": 1, "dead": 3},
    )
    totals = results.totals()
    assert totals["grant"] == {"granted": 7, "failed": 1}
    assert totals["revoke"] == {"revoked": 1}
    assert totals["backpack.create"] == {}
    assert results.totals(project_id=7)["grant"] == {"granted": 5, "failed": 1}


def test_stats_count_outcomes_backlog_and_the_oldest_waiting(results, fake, keys):
    fake.hset(keys.totals, mapping={"grant|7|granted": 5, "revoke|7|revoked": 2, "backpack.create|7|granted": 1})
    fake.hset(keys.totals, "dead", 3)
    index(fake, keys, "failed", {"7:a": T0, "7:b": T0})
    index(fake, keys, "conflict", {"7:c": T0})
    index(fake, keys, "noop", {"7:d": T0}, kind="revoke")
    fake.rpush(keys.buffer("grant:7"), "w-1", "w-2", "w-3")
    fake.rpush(keys.buffer("revoke:7"), "r-1")
    (now_s, _) = fake.time()
    fake.zadd(keys.lanes, {"grant:7": now_s * 1000 - 4000, "revoke:7": now_s * 1000 - 1000})
    fake.hset(keys.batch("b1|grant:7"), mapping={"n": 50, "begun": 1})
    fake.hset(keys.batch("b2|grant:7"), mapping={"n": 10, "begun": 0})
    fake.hset(keys.batch("b3|backpack.create:7"), mapping={"n": 1, "begun": 1})
    fake.zadd(keys.leases, {"b1|grant:7": 1, "b2|grant:7": 1, "b3|backpack.create:7": 1})
    stats = results.stats()
    counts = stats["counts"]
    assert (counts["granted"], counts["failed"], counts["conflict"], counts["dead"]) == (5, 2, 1, 3)
    assert (counts["pending"], counts["sending"]) == (3 + 10, 50)
    assert (stats["revokes"]["revoked"], stats["revokes"]["noop"], stats["revokes"]["pending"]) == (2, 1, 1)
    assert stats["operations"]["backpack.create"]["granted"] == 1
    assert stats["operations"]["backpack.create"]["sending"] == 1
    assert stats["backlog"] == 13 + 50 + 1 + 1
    assert stats["waiting"] == 13 + 1
    assert stats["batches_in_flight"] == 3
    assert 4.0 <= stats["oldest_waiting_age_s"] < 6.0


def test_stats_of_an_empty_store(results):
    stats = results.stats()
    assert stats["backlog"] == 0 and stats["oldest_waiting_age_s"] == 0.0 and stats["batches_in_flight"] == 0
    assert set(stats["counts"].values()) == {0}


def test_trim_drops_only_index_entries_past_the_retention(results, fake, keys):
    (now_s, _) = fake.time()
    now_ms = now_s * 1000
    index(fake, keys, "failed", {"7:old": now_ms - 10_000, "7:new": now_ms - 1_000})
    index(fake, keys, "noop", {"7:old": now_ms - 10_000}, kind="revoke")
    assert results.trim(retention_ms=5_000) == 2
    assert fake.zrange(keys.index("failed"), 0, -1) == ["7:new"]
    assert fake.zcard(keys.index("noop", "revoke")) == 0


def test_timings_are_read_off_the_record_headers(results, fake, keys):
    put_record(fake, keys, 7, "p-1", {"st": "granted", "enq": T0 - 5, "rcv": T0, "cpl": T0 + 250}, grant_body(7, "p-1"))
    assert results.timings([(7, "p-1"), (7, "gone")]) == [(T0 - 5, T0, T0 + 250), (0, 0, 0)]
