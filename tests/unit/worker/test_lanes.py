"""Pausing lanes and purging dead letters, against a real redis-server: the
take script skips a paused lane, pausing hands unsent batches back in order,
and stats see the age of commands in taken batches."""

from __future__ import annotations

import pytest

from tests.helpers import command
from worker import keys as K
from worker.dead import DeadLetters
from worker.lanes import Lanes, lanes_of
from worker.ledger import Ledger
from worker.results import Results
from worker.work import Arrival, Refused

TAKE = dict(max_batches=10, max_inflight=100, flush_ms=0, lease_ms=60_000)


@pytest.fixture
def ledger(redis_client):
    client, keys = redis_client
    return Ledger(client, keys, ttl_ms=60_000, batch_limits={"grant": 2}, default_batch_limit=2)


@pytest.fixture
def lanes(redis_client):
    client, keys = redis_client
    return Lanes(client, keys)


def ingest(ledger, ids, project=1):
    ledger.ingest([Arrival(command(project, i), 1, f"s:{i}") for i in ids])


def members(ledger, batch_ids):
    import json

    return [json.loads(ledger.redis.hget(ledger.keys.batch(b), "members")) for b in batch_ids]


def test_a_paused_lane_takes_nothing_and_its_commands_wait_until_resumed(ledger, lanes):
    ingest(ledger, ["a", "b", "c"], project=1)
    ingest(ledger, ["x"], project=2)
    assert lanes.pause(lanes_of(1, "grant"), actor="anna", note="maintenance") == [("grant:1", "paused", 0)]
    taken = ledger.take(**TAKE)
    assert [b.partition("|")[2] for b in taken] == ["grant:2"]
    assert ledger.redis.llen(ledger.keys.buffer("grant:1")) == 3
    assert ledger.take(**TAKE) == []
    paused = lanes.paused(1)
    assert paused["grant:1"].actor == "anna" and paused["grant:1"].note == "maintenance"
    assert lanes.resume(["grant:1"]) == [("grant:1", True)]
    assert lanes.resume(["grant:1"]) == [("grant:1", False)]
    assert members(ledger, ledger.take(**TAKE)) == [["a", "b"], ["c"]]


def test_pausing_again_keeps_who_paused_first(lanes):
    lanes.pause(["grant:1"], actor="anna")
    assert lanes.pause(["grant:1"], actor="bob") == [("grant:1", "already", 0)]
    assert lanes.paused()["grant:1"].actor == "anna"


def test_pausing_hands_batches_taken_but_not_sent_back_in_order(ledger, lanes):
    ingest(ledger, ["a", "b", "c", "d", "e"])
    taken = ledger.take(**TAKE)
    assert len(taken) == 3
    assert lanes.pause(["grant:1"], actor="anna") == [("grant:1", "paused", 3)]
    assert ledger.redis.lrange(ledger.keys.buffer("grant:1"), 0, -1) == ["a", "b", "c", "d", "e"]
    assert ledger.redis.zcard(ledger.keys.leases) == 0
    assert ledger.redis.zscore(ledger.keys.lanes, "grant:1") is not None
    lanes.resume(["grant:1"])
    assert members(ledger, ledger.take(**TAKE)) == [["a", "b"], ["c", "d"], ["e"]]


def test_paused_lanes_do_not_crowd_the_others_out_of_the_scan(ledger, lanes, monkeypatch):
    monkeypatch.setattr(K, "TAKE_SCAN_LANES", 2)
    for project in (1, 2, 3):
        ingest(ledger, [f"p{project}"], project=project)
    lanes.pause(["grant:1", "grant:2"], actor="anna")
    assert [b.partition("|")[2] for b in ledger.take(**TAKE)] == ["grant:3"]


def test_pause_every_kind_of_a_project_by_default(lanes):
    names = lanes_of(7)
    assert "grant:7" in names and "revoke:7" in names and "backpack.create:7" in names
    lanes.pause(names, actor="anna")
    assert sorted(lanes.paused(7)) == sorted(names)
    assert lanes.paused(8) == {}
    states = lanes.overview(7, "grant")
    assert [(s.lane, bool(s.paused)) for s in states] == [("grant:7", True)]


def test_stats_age_counts_commands_in_taken_batches(ledger, redis_client):
    client, keys = redis_client
    ingest(ledger, ["a", "b"])
    (sec, _) = client.time()
    # As if they had been received 30 s ago.
    client.zadd(keys.lanes, {"grant:1": sec * 1000 - 30_000})
    assert ledger.take(**TAKE)
    assert client.zcard(keys.lanes) == 0  # nothing waits in a buffer any more
    stats = Results(client, keys).stats()
    assert 29.0 <= stats["oldest_waiting_age_s"] <= 31.0 and stats["oldest_waiting_lane"] == "grant:1"


def test_stats_age_of_a_batch_without_its_own_is_read_off_its_records(ledger, redis_client):
    client, keys = redis_client
    ingest(ledger, ["a"])
    (batch,) = ledger.take(**TAKE)
    client.hdel(keys.batch(batch), "old")  # a split half, or a batch of an earlier version
    stats = Results(client, keys).stats()
    assert 0.0 <= stats["oldest_waiting_age_s"] < 5.0 and stats["oldest_waiting_lane"] == "grant:1"


def test_stats_show_paused_lanes_and_one_projects_counts(ledger, lanes, redis_client):
    client, keys = redis_client
    ingest(ledger, ["a"], project=1)
    ingest(ledger, ["b", "c"], project=2)
    lanes.pause(["grant:2"], actor="anna", note="why")
    stats = Results(client, keys).stats(project_id=2)
    assert stats["counts"]["pending"] == 2 and stats["project_id"] == 2
    assert [(p["lane"], p["actor"], p["note"]) for p in stats["paused_lanes"]] == [("grant:2", "anna", "why")]
    assert Results(client, keys).stats(project_id=1)["paused_lanes"] == []


def test_dead_letters_are_purged_with_their_index_entry(ledger, redis_client):
    client, keys = redis_client
    ledger.ingest([], [Refused("e-1", "{bad", "not JSON"), Refused("e-2", "[]", "empty")])
    letter = ledger.dead_letter("raw", "unknown task", source="celery")
    dead = DeadLetters(client, keys, retention_ms=86_400_000)
    assert dead.count() == 3 and {d["id"] for d in dead.iter()} == {"e-1", "e-2", letter}
    assert dead.get("e-1")["reason"] == "not JSON"
    assert dead.purge(["e-1", "nope"]) == [True, False]
    assert client.exists(keys.dead_letter("e-1")) == 0 and client.zscore(keys.index("dead"), "e-1") is None
    assert dead.purge(["e-1"]) == [False]
    assert dead.purge_all() == 2
    assert dead.count() == 0 and list(dead.iter()) == []


def test_dead_letters_past_their_retention_are_not_counted(ledger, redis_client):
    # The letter's hash expires with the retention; its index entry stays
    # until the sweeper trims the index: it is not a letter any more.
    client, keys = redis_client
    ledger.ingest([], [Refused("e-old", "{bad", "not JSON"), Refused("e-new", "[]", "empty")])
    sec, _ = client.time()
    client.zadd(keys.index("dead"), {"e-old": (int(sec) - 3_600) * 1000})
    client.delete(keys.dead_letter("e-old"))
    dead = DeadLetters(client, keys, retention_ms=60_000)
    assert dead.count() == 1 and [d["id"] for d in dead.iter()] == ["e-new"]
    # What `grants dead purge --all` would delete is what it says it deleted.
    assert dead.purge_all() == 1 and client.zcard(keys.index("dead")) == 0


def test_batches_go_back_in_the_order_they_were_taken_whatever_their_deadlines(redis_client):
    client, keys = redis_client
    ledger = Ledger(client, keys, ttl_ms=60_000, batch_limits={"grant": 2}, default_batch_limit=2)
    ledger.ingest([Arrival(command(1, i), 1, f"s:{i}") for i in "abcd"])
    first, second = ledger.take(max_batches=10, max_inflight=100, flush_ms=0, lease_ms=5000)
    # The first batch's lease now ends after the second's (a redispatch moved it).
    client.zadd(keys.leases, {first: client.zscore(keys.leases, second) + 10})
    Lanes(client, keys).pause(["grant:1"], actor="x")
    assert client.lrange(keys.buffer("grant:1"), 0, -1) == ["a", "b", "c", "d"]
