"""Every Redis key the service uses, and every number that governs their life.

One place, so that a reader can see the whole data model at once (``{p}`` is
GRANTS_KEY_PREFIX; a lane is ``kind:project``, e.g. ``grant:44056``):

Commands in
- ``{p}:commands``  stream producers XADD to (schemas/stream.py), field
  ``command``; entries up to the ingestion position are trimmed (exact MINID).
- ``{p}:ingest:pos``  string: id of the last entry ingested (the compare-and-
  set that makes ingestion exactly-once and ordered).
- ``{p}:ingest:count``  counter: entries ingested (lag = entries added - this).
- ``{p}:lock:ingest``  string: which worker's ingestion loop reads the stream.

Records and claims
- ``{p}:{ns}:{project}:{id}``  string, one per command (``ns`` per kind in
  schemas/kinds.py: ``rec`` grants, ``rvk`` revokes, ``bpc``, ``bpd``,
  ``pfd``): ``<header JSON>\n<command>[\n<answer>]`` (schemas/records.py:
  ``st``, ``rcv`` + offsets ``e``/``s``/``c``, ``att``, ``dup``, ``spl``,
  ``bat``, ``err``, ``hist``). No TTL while in flight; the results retention
  once final.
- ``{p}:claims:{0..1023}``  hashes: the dedupe claims, field ``ns:project:id``,
  value ``<payload hash>|<final status>|<first seen ms>|+<ms to final>|<refund
  data>`` (worker/lua/_lib.lua). Kept GRANTS_DEDUPE_RETENTION_DAYS, the
  refund data GRANTS_REFUND_WINDOW_DAYS; pruned by the sweeper.
- ``{p}:prune:claims``  hash ``bucket``, ``cursor``: where pruning goes on.
- ``{p}:conflict:[kind:]{project}:{id}``  hash: repeats whose payload differed.
- ``{p}:idx:[kind:]{status}``  sorted set ``project:id`` by time, for the
  statuses in INDEXED_STATUSES only (and ``dead``, ``conflict``).
- ``{p}:dead:{source}``  hash: an entry or message that was not a valid
  command (raw payload, reason), indexed in ``{p}:idx:dead``.
  Fields ``id``, ``raw``, ``size``, ``truncated``, ``reason``, ``src``,
  ``epid``, ``at``; `grants dead purge` removes hash and index entry together
  (worker/lua/dead_purge.lua).
- ``{p}:totals``  hash ``kind|project|status`` -> count, for ever; and
  ``dead`` -> dead letters recorded, for ever.
- ``{p}:latency``  hash ``kind|project|<bucket ms or +Inf>`` -> count of
  outcomes that took up to that long from publish (buckets not cumulative,
  LATENCY_BUCKETS_MS), and ``kind|project|sum_ms``.
- ``{p}:outcomes``  stream of final outcomes (schemas/stream.py), capped.
- ``{p}:ops``  hash ``action|kind|project|result`` -> count of operator
  actions, for ever (``replay|grant|44056|failed``: replayed from failed;
  ``resolve|grant|44056|granted``: an in_doubt command an operator resolved
  as granted, worker/lua/resolve.lua; the record's ``hist`` says who, when
  and why).

Batching and sending
- ``{p}:buf:{lane}``  list of ids waiting for a batch, FIFO.
- ``{p}:lanes``  sorted set lane -> received time of its oldest waiting id.
- ``{p}:lanes:hold``  hash lane -> until (ms): lanes backing off as a whole.
- ``{p}:lanes:paused``  hash lane -> JSON (since, actor, note): lanes an
  operator paused (``grants lanes``); take skips them.
- ``{p}:batch:{id}``  hash: a taken batch; the id names its lane and its
  place in take order: ``b17|grant:44056``. Fields: ``lane``, ``kind``,
  ``pid``, ``n`` (members), ``members`` (JSON ids, FIFO), ``st`` (``leased``
  or ``sending``), ``tok`` the fencing token, ``att`` (calls made), ``paid``
  (calls paid from the budget), ``begun`` (1 once a call was begun for it:
  it is no longer handed back by a pause), ``created`` and ``sent`` (ms),
  ``on_unknown`` (its backend's lost-answer policy at begin), ``unk`` (1: an
  attempt lost its answer, so it ends in_doubt, never failed), ``rec`` (1:
  read back before the next call), ``nbf`` (not before, ms: a backoff),
  ``err`` (the last error), ``parent`` (the batch a split made it from),
  ``old`` (received, or requeued, time of its oldest command: the backlog's
  age without reading records; a batch without it is read off them).
- ``{p}:leases``  sorted set batch id -> lease deadline (ms).
- ``{p}:seq:batch``  counter for batch ids.
- ``{p}:budget:{backend}:{project}``  hash ``t`` (tokens), ``ts`` (ms): a
  call budget's token bucket.

Housekeeping
- ``{p}:layout``  string: the layout version of this store (worker/migrate.py).
- ``{p}:lock:sweeper``, ``{p}:lock:migrate``  the recovery timer's and the
  migration's locks.
- ``{p}:lock:metrics``  string: which worker exports the shared metrics
  (worker/monitor.py: LEADER_TTL_MS).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from schemas.kinds import KINDS
from schemas.records import Status, record_key
from schemas.stream import command_stream, outcome_stream

# Outcome stream length cap (approximate trimming, MAXLEN ~). 1,000,000 entries
# of ~67 bytes (measured) is ~67 MB: hours to days of traffic for a consumer
# to fall behind by.
OUTCOME_STREAM_MAXLEN = 1_000_000

# The sweeper lock lives 5 ticks: long enough to survive a slow tick, short
# enough that another worker takes over within half a second if the holder dies.
SWEEPER_LOCK_TICKS = 5

# Index entries older than the retention are trimmed by the sweeper this often:
# trimming is O(log n) per removal and there is no hurry.
INDEX_TRIM_INTERVAL_S = 60.0

# Claims are pruned (past the dedupe retention: deleted; refund data past the
# refund window: dropped) by the sweeper, this many claims once a second: one
# call holds Redis ~1 ms, and 400 M claims (1 M purchases a day kept 400
# days) are walked through in under five days.
PRUNE_INTERVAL_S = 1.0
PRUNE_PER_CALL = 1000

# A dead letter keeps at most this much of the raw message (one element of a
# chunk, one stream entry): a valid command is well under this (a feed line
# may be 1 MiB), and a bound keeps a flood of garbage from filling Redis.
DEAD_LETTER_MAX_BYTES = 1 << 20

# A begin no replica confirmed in time is undone and retried this much later
# (GRANTS_REDIS_MIN_REPLICAS): long enough for a replica to catch up.
UNREPLICATED_RETRY_MS = 500

# How many replica timeouts an outcome waits to be replicated before the
# sender reports it anyway (the record holds it; only a failover could not).
REPLICA_WAITS = 3

# Lanes the take script looks at per call (oldest first). Keeps one script call
# short (it blocks Redis) however many projects are waiting.
TAKE_SCAN_LANES = 100

# Expired leases recovered per sweeper tick, for the same reason.
RECOVER_PER_TICK = 200


# Claims live in this many hashes: a field of a hash costs less than a key
# (no key object, no expiry entry; measured 200 bytes for a granted Xsolla
# purchase's claim with its refund data, against ~330 as a key of its own).
# Fixed: changing it would lose the claims already made (they would be
# looked for in other buckets).
CLAIM_BUCKETS = 1024

# Statuses kept in an index per command (a sorted set by time): those an
# operator lists and acts on. The happy path (granted, revoked) has none:
# its counts are in {p}:totals, its entries on the outcome stream, which
# saves an index entry (~100 bytes) and a write per command.
INDEXED_STATUSES = (Status.rejected, Status.failed, Status.in_doubt, Status.cancelled, Status.noop, Status.waiting)

# Buckets (ms, not cumulative) of the publish -> outcome histogram the
# ledger keeps: from a lone purchase sent at once to a long backoff.
LATENCY_BUCKETS_MS = [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 30_000, 60_000, 300_000]

# Record key namespace per command kind (schemas/kinds.py; the Lua prelude
# gets the same table, generated from it).
RECORD_NAMESPACES = {name: k.namespace for name, k in KINDS.items()}


@dataclass(frozen=True)
class Keys:
    """Key names under one prefix (``GRANTS_KEY_PREFIX``)."""

    prefix: str = "grants"

    def record(self, project_id: int | str, purchase_id: str, kind: str = "grant") -> str:
        return record_key(self.prefix, RECORD_NAMESPACES[kind], project_id, purchase_id)

    def conflict(self, project_id: int | str, purchase_id: str, kind: str = "grant") -> str:
        scope = "" if kind == "grant" else f"{kind}:"
        return f"{self.prefix}:conflict:{scope}{project_id}:{purchase_id}"

    def index(self, status: str, kind: str = "grant") -> str:
        if kind == "grant":
            return f"{self.prefix}:idx:{status}"
        return f"{self.prefix}:idx:{kind}:{status}"

    def buffer(self, lane: str) -> str:
        return f"{self.prefix}:buf:{lane}"

    @property
    def lanes(self) -> str:
        return f"{self.prefix}:lanes"

    def batch(self, batch_id: str) -> str:
        return f"{self.prefix}:batch:{batch_id}"

    @property
    def leases(self) -> str:
        return f"{self.prefix}:leases"

    @property
    def outcomes(self) -> str:
        return outcome_stream(self.prefix)

    @property
    def commands(self) -> str:
        return command_stream(self.prefix)

    @property
    def ingest_position(self) -> str:
        return f"{self.prefix}:ingest:pos"

    @property
    def ingest_count(self) -> str:
        return f"{self.prefix}:ingest:count"

    @property
    def ingest_lock(self) -> str:
        return f"{self.prefix}:lock:ingest"

    def dead_letter(self, letter_id: str) -> str:
        return f"{self.prefix}:dead:{letter_id}"

    def claim(self, kind: str, project_id: int | str, record_id: str) -> tuple[str, str]:
        """(bucket key, field) of a command's claim (the Lua prelude computes the same)."""
        field = f"{RECORD_NAMESPACES[kind]}:{project_id}:{record_id}"
        bucket = int(hashlib.sha1(field.encode()).hexdigest()[:4], 16) % CLAIM_BUCKETS
        return f"{self.prefix}:claims:{bucket}", field

    @property
    def totals(self) -> str:
        return f"{self.prefix}:totals"

    @property
    def latency(self) -> str:
        return f"{self.prefix}:latency"

    @property
    def operator_actions(self) -> str:
        return f"{self.prefix}:ops"

    @property
    def paused_lanes(self) -> str:
        return f"{self.prefix}:lanes:paused"

    @property
    def layout(self) -> str:
        return f"{self.prefix}:layout"

    @property
    def metrics_lock(self) -> str:
        return f"{self.prefix}:lock:metrics"

    @property
    def migrate_lock(self) -> str:
        return f"{self.prefix}:lock:migrate"

    @property
    def sweeper_lock(self) -> str:
        return f"{self.prefix}:lock:sweeper"


_BATCH_ID = re.compile(r"b\d+\|[a-z.]+:\d+")


def is_batch_list(value: object) -> bool:
    """Whether ``value`` is a list of batch ids as the Lua prelude makes them."""
    return isinstance(value, list) and all(isinstance(v, str) and _BATCH_ID.fullmatch(v) for v in value)


def split_member(member: str) -> tuple[int, str]:
    """An index member ``project:purchase`` (written by the Lua scripts);
    project ids are integers, so the first ':' splits it."""
    project, _, purchase = member.partition(":")
    return int(project), purchase
