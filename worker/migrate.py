"""Moving a results store an older version wrote onto today's layout, once.

Versions before the command stream kept each command as a Redis hash (its
dedupe claim too) and indexed every outcome; today a record is one string,
claims live in buckets with a granted purchase's refund data, and the happy
path is counted, not indexed (worker/keys.py). A worker finding the old
layout converts it before it ingests or sends anything: each record under a
compare-and-set on its type (so two workers never convert one twice), its
TTL kept, batches' lost-answer policy renamed, outcome counts seeded from
the old indexes. The store then says ``{p}:layout`` = 2 and every later
start skips this at the cost of one GET.

Stop the old workers first: a record the old code writes after its
conversion would be of the old type again (and is converted on the next
start).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import orjson
import redis
import structlog

from schemas.kinds import GRANT, KINDS
from worker.keys import Keys
from worker.locks import Lock

log = structlog.get_logger("grants.migrate")

LAYOUT = 2
# Records converted per script call: a call blocks Redis, keep it short.
CHUNK = 200
MIGRATE_LOCK_TTL_MS = 30_000

# Old header fields that carry over (the rest, pid/epid/h/src/cmd/rq/res,
# is the key, the claim, the body).
_HEADER = {"st": str, "rcv": int, "enq": int, "snt": int, "cpl": int, "att": int, "dup": int, "bat": str, "err": str}
_POLICY = {"1": "resend", "r": "reconcile", "0": "doubt"}

_CONVERT = """
-- KEYS: record, claim bucket. ARGV: record value, PTTL (-1: none), claim field, claim value
if redis.call('TYPE', KEYS[1])['ok'] ~= 'hash' then return 0 end
local ttl = tonumber(ARGV[2])
redis.call('DEL', KEYS[1])
if ttl > 0 then redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl) else redis.call('SET', KEYS[1], ARGV[1]) end
if redis.call('HEXISTS', KEYS[2], ARGV[3]) == 0 then redis.call('HSET', KEYS[2], ARGV[3], ARGV[4]) end
return 1
"""


def converted(
    fields: dict[str, str], kind: str, refund_data: Callable[[str, dict, Any], dict | None]
) -> tuple[str, str]:
    """(record value, claim value) of one old record hash."""
    header: dict[str, Any] = {}
    for name, cast in _HEADER.items():
        if fields.get(name):
            header[name] = cast(fields[name])
    if fields.get("hist"):
        header["hist"] = orjson.loads(fields["hist"])
    body = fields.get("rq") or fields.get("cmd") or "null"
    if fields.get("res"):
        body += "\n" + fields["res"]
    status = fields.get("st", "")
    final = status not in ("pending", "sending", "waiting", "")
    refund = ""
    if kind == GRANT and status == "granted" and fields.get("cmd"):
        data = refund_data(
            kind, orjson.loads(fields["cmd"]), orjson.loads(fields["res"]) if fields.get("res") else None
        )
        refund = orjson.dumps(data).decode() if data else ""
    claim = (
        f"{fields.get('h', '')}|{status if final else ''}|{fields.get('rcv') or 0}|"
        f"{fields.get('cpl') or 0 if final else 0}|{refund}"
    )
    return orjson.dumps(header).decode() + "\n" + body, claim


def migrate(client: redis.Redis, keys: Keys, refund_data: Callable[[str, dict, Any], dict | None]) -> int:
    """Convert an old layout if there is one (waiting for another worker doing
    it); returns the records this call converted."""
    if client.get(keys.layout) == str(LAYOUT):
        return 0
    lock = Lock(client, keys.migrate_lock, MIGRATE_LOCK_TTL_MS)
    while not lock.hold():
        if client.get(keys.layout) == str(LAYOUT):
            return 0
        time.sleep(0.5)
    try:
        return _migrate(client, keys, refund_data, lock)
    finally:
        lock.release()


def _migrate(client: redis.Redis, keys: Keys, refund_data: Callable, lock: Lock) -> int:
    convert = client.register_script(_CONVERT)
    done = 0
    for kind in KINDS:
        pattern = keys.record("*", "*", kind).replace(":*:*", ":*")
        batch: list[str] = []
        for key in client.scan_iter(match=pattern, count=1000, _type="hash"):
            batch.append(key)
            if len(batch) >= CHUNK:
                done += _convert(client, keys, convert, kind, batch, refund_data)
                batch = []
                lock.hold()
        done += _convert(client, keys, convert, kind, batch, refund_data)
    for key in client.scan_iter(match=keys.batch("*"), count=1000, _type="hash"):
        old = client.hget(key, "idem")
        if old in _POLICY:
            client.hset(key, "on_unknown", _POLICY[old])
    _seed_totals(client, keys)
    client.set(keys.layout, LAYOUT)
    if done:
        log.warning("results store moved to the new layout", records=done)
    return done


def _convert(client: redis.Redis, keys: Keys, convert: Any, kind: str, batch: list[str], refund_data: Callable) -> int:
    if not batch:
        return 0
    pipe = client.pipeline(transaction=False)
    for key in batch:
        pipe.hgetall(key)
        pipe.pttl(key)
    replies = pipe.execute()
    count = 0
    head = f"{keys.prefix}:{KINDS[kind].namespace}:"
    for key, fields, ttl in zip(batch, replies[::2], replies[1::2], strict=True):
        if not fields:
            continue
        project_id, _, record_id = key[len(head) :].partition(":")
        value, claim = converted(fields, kind, refund_data)
        bucket, field = keys.claim(kind, project_id, record_id)
        count += convert(keys=[key, bucket], args=[value, ttl, field, claim])
    return count


def _seed_totals(client: redis.Redis, keys: Keys) -> None:
    """Outcome counts of the happy path from the old indexes, which then go."""
    for kind in KINDS:
        for status in ("granted", "revoked"):
            index = keys.index(status, kind)
            per_project: Counter = Counter(m.partition(":")[0] for m in client.zrange(index, 0, -1))
            for project_id, n in per_project.items():
                client.hincrby(keys.totals, f"{kind}|{project_id}|{status}", n)
            client.delete(index)
