"""The producer library against fakeredis: what ``publish`` appends to the
command stream, ``PublishFailed`` when Redis is unreachable, and following a
command's outcome (its record if final, else the outcome stream). The
stream's formats are schemas/stream.py's; publish_many's Lua script runs on
a real redis-server in the integration tests."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator

import fakeredis
import orjson
import pytest
from redis.exceptions import OutOfMemoryError, ResponseError

from producers.publisher import Publisher, PublishFailed, describe, scan_outcomes, wait_outcome
from schemas.commands import RevokeCommand, parse_command
from schemas.stream import Outcome
from tests.helpers import command
from worker.keys import Keys
from worker.settings import Settings

PREFIX = "pt"


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


@pytest.fixture
def fake(server) -> Iterator[fakeredis.FakeRedis]:
    client = fakeredis.FakeRedis(server=server, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def publisher(fake) -> Publisher:
    return Publisher(Settings(redis_url="redis://unused.invalid:1/0", key_prefix=PREFIX), client=fake)


def test_publish_appends_one_entry_holding_the_command(publisher, fake):
    first = publisher.publish(command(7, "p-1"))
    second = publisher.publish(RevokeCommand(project_id=7, external_purchase_id="p-1", comment="Refund"))
    entries = fake.xrange(f"{PREFIX}:commands")
    assert [entry_id for entry_id, _ in entries] == [first, second]  # returns the entry id, in publish order
    assert [set(fields) for _, fields in entries] == [{"command"}, {"command"}]
    grant, enqueued = parse_command(orjson.loads(entries[0][1]["command"]))
    assert grant.canonical == command(7, "p-1").canonical and enqueued is None  # the entry id is the time
    revoke, _ = parse_command(orjson.loads(entries[1][1]["command"]))
    assert isinstance(revoke, RevokeCommand) and revoke.comment == "Refund"
    assert fake.exists("grants:commands") == 0  # the configured prefix only


def test_publish_raises_publish_failed_when_redis_is_unreachable(publisher, server, fake):
    server.connected = False
    with pytest.raises(PublishFailed) as failed:
        publisher.publish(command(7, "p-1"))
    assert failed.value.published == 0
    assert str(failed.value).startswith("could not publish to Redis: ConnectionError: ")
    server.connected = True
    assert fake.xlen(f"{PREFIX}:commands") == 0
    publisher.publish(command(7, "p-1"))  # publishing again once it is back is the remedy
    assert fake.xlen(f"{PREFIX}:commands") == 1


def test_describe_names_a_full_redis():
    oom = OutOfMemoryError("OOM command not allowed when used memory > 'maxmemory'.")  # what redis-py raises
    text = describe(oom)
    assert text.startswith("Redis is out of memory (maxmemory reached") and str(oom) in text
    assert describe(ResponseError("NOPERM no permission")) == (
        "could not publish to Redis: ResponseError: NOPERM no permission"
    )


def record(fake, project_id: int, record_id: str, status: str, kind: str = "grant") -> None:
    """A record as the ledger stores it (schemas/records.py): header, command."""
    header = json.dumps({"st": status, "rcv": 1})
    fake.set(
        Keys(PREFIX).record(project_id, record_id, kind),
        header + "\n" + command(project_id, record_id).canonical.decode(),
    )


def announce(fake, project_id: int | str, record_id: str, status: str, kind: str = "grant") -> str:
    """An outcome stream entry, as the ledger appends it."""
    fields = {"project_id": project_id, "external_purchase_id": record_id, "kind": kind, "status": status, "at": 1234}
    return fake.xadd(f"{PREFIX}:outcomes", fields)


def test_wait_outcome_returns_at_once_for_a_final_record(fake):
    record(fake, 7, "p-1", "rejected")
    started = time.monotonic()
    assert wait_outcome(fake, PREFIX, 7, "p-1", timeout=5) == Outcome(7, "p-1", "grant", "rejected", 0)
    assert time.monotonic() - started < 1


@pytest.mark.parametrize("status", ["pending", "sending", "waiting"])
def test_wait_outcome_follows_the_stream_while_the_record_is_not_final(server, fake, status):
    record(fake, 7, "p-1", status)
    announce(fake, 7, "p-1", "failed")  # an older outcome, before the wait began: not this one

    def ledger() -> None:
        client = fakeredis.FakeRedis(server=server, decode_responses=True)
        time.sleep(0.2)
        announce(client, 8, "p-1", "granted")  # another project's
        announce(client, 7, "p-1", "granted", kind="revoke")  # another kind's
        announce(client, "", "junk", "dead")  # a dead letter's
        announce(client, 7, "p-1", "granted")

    writer = threading.Thread(target=ledger)
    writer.start()
    try:
        assert wait_outcome(fake, PREFIX, 7, "p-1", timeout=10) == Outcome(7, "p-1", "grant", "granted", 1234)
    finally:
        writer.join()


def test_wait_outcome_of_another_kind_reads_its_namespace(fake):
    record(fake, 7, "op-1", "granted", kind="backpack.create")
    assert wait_outcome(fake, PREFIX, 7, "op-1", timeout=1, kind="backpack.create").status == "granted"


def test_wait_outcome_times_out(fake):
    record(fake, 7, "p-1", "pending")
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=re.escape("no outcome for grant 7/p-1 within 0.3 s")):
        wait_outcome(fake, PREFIX, 7, "p-1", timeout=0.3)
    assert 0.25 <= time.monotonic() - started < 2


def test_publisher_outcome_uses_its_prefix(publisher, fake):
    record(fake, 7, "p-1", "granted")
    assert publisher.outcome(7, "p-1", timeout=1) == Outcome(7, "p-1", "grant", "granted", 0)


def test_scan_outcomes_finds_the_entry_and_moves_the_cursor(fake):
    ids = [
        announce(fake, 7, "p-0", "granted"),
        announce(fake, 7, "p-1", "granted", kind="revoke"),
        announce(fake, 7, "p-1", "in_doubt"),
        announce(fake, 7, "p-2", "granted"),
    ]
    reply = fake.xread({f"{PREFIX}:outcomes": "0-0"}, count=10)
    assert scan_outcomes(reply, "0-0", 7, "p-1", "grant") == (ids[2], Outcome(7, "p-1", "grant", "in_doubt", 1234))
    assert scan_outcomes(reply, "0-0", 7, "p-1", "revoke") == (ids[1], Outcome(7, "p-1", "revoke", "granted", 1234))
    assert scan_outcomes(reply, "0-0", 7, "p-9", "grant") == (ids[3], None)  # read to the end
    assert scan_outcomes(reply, "0-0", 8, "p-1", "grant") == (ids[3], None)
    assert scan_outcomes(None, "5-0", 7, "p-1", "grant") == ("5-0", None)  # XREAD timed out


def test_scan_outcomes_takes_an_entry_without_a_kind_as_a_grant(fake):
    entry = fake.xadd(f"{PREFIX}:outcomes", {"project_id": 7, "external_purchase_id": "p-1", "status": "granted"})
    reply = fake.xread({f"{PREFIX}:outcomes": "0-0"})
    assert scan_outcomes(reply, "0-0", 7, "p-1", "grant") == (entry, Outcome(7, "p-1", "grant", "granted", 0))
