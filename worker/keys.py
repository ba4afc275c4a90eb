"""Every Redis key the service uses, and every number that governs their life.

One place, so that a reader can see the whole data model at once:

- ``{p}:rec:{project}:{purchase}``  hash, one per grant: the results record
  *and* the dedupe claim (it exists => the purchase was seen).
- ``{p}:rvk:{project}:{purchase}``  hash: the revoke (refund) of that purchase,
  at most one; its outcome is indexed under ``{p}:idx:revoke:{status}``.
- ``{p}:bpc|bpd|pfd:{project}:{operation}``  Backpack creates, Backpack
  deletes, PlayFab deletes, keyed by the producer's operation id; indexed
  under ``{p}:idx:{kind}:{status}``.
- ``{p}:conflict:{project}:{purchase}``  hash: repeats whose payload differed.
- ``{p}:idx:{status}``  sorted set of ``project:purchase`` by time of entering
  that status: lists by status and time, counts for stats.
- ``{p}:buf:{lane}``  list of purchase ids waiting for a batch, FIFO. A lane is
  ``kind:project`` (one backend endpoint of one project: ``grant:44056``,
  ``revoke:44056``); the Lua prelude builds lane names.
- ``{p}:lanes``  sorted set lane -> received time of its oldest waiting command.
- ``{p}:batch:{id}``  hash: a taken batch (members, state, fencing token); the
  id names its lane: ``b17|grant:44056``.
- ``{p}:leases``  sorted set batch id -> lease deadline (ms).
- ``{p}:seq:batch``  counter for batch ids.
- ``{p}:commands``  the command stream producers XADD to (schemas/stream.py);
  entries up to the ingestion position are trimmed by the ingest script.
- ``{p}:ingest:pos``  string: id of the last stream entry ingested (the
  compare-and-set that makes ingestion exactly-once and ordered).
- ``{p}:ingest:count``  counter: entries ingested (lag = entries added - this).
- ``{p}:lock:ingest``  which worker's ingestion loop reads the stream.
- ``{p}:clm:{ns}:{project}:{id}``  string ``<payload hash>|<final status>``:
  the dedupe claim, kept GRANTS_DEDUPE_RETENTION_DAYS (outlives the record).
- ``{p}:rfd:{project}:{purchase}``  hash: what a refund needs of a granted
  purchase (``cmd``, ``res``, ``cpl``, ``revoked``), kept for the refund window.
- ``{p}:lanes:hold``  hash lane -> until (ms): lanes backing off as a whole.
- ``{p}:budget:{backend}:{project}``  hash ``t`` (tokens), ``ts`` (ms): the
  call budget's token bucket.
- ``{p}:outcomes``  stream of final outcomes for the purchase pipeline.
- ``{p}:layout``  string: the layout version of this store (worker/migrate.py).
- ``{p}:lock:sweeper``  the recovery timer's lock.
- ``{p}:dead:{id}``  hash: a broker message that was not a valid command,
  with its raw payload and the reason (indexed in ``{p}:idx:dead``).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from schemas.kinds import KINDS
from schemas.records import Status, record_key
from schemas.stream import command_stream, outcome_stream

# Outcome stream length cap (approximate trimming, MAXLEN ~). 1,000,000 entries
# of ~120 bytes is ~120 MB: days of traffic for a consumer to fall behind by.
OUTCOME_STREAM_MAXLEN = 1_000_000

# The sweeper lock lives 5 ticks: long enough to survive a slow tick, short
# enough that another worker takes over within half a second if the holder dies.
SWEEPER_LOCK_TICKS = 5

# Index entries older than the retention are trimmed by the sweeper this often:
# trimming is O(log n) per removal and there is no hurry.
INDEX_TRIM_INTERVAL_S = 60.0

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


# Claims live in this many hashes: a field in a small hash costs a fraction
# of a key (~45 bytes a claim, measured, instead of ~180 as a key of its
# own). Fixed: changing it would lose the claims already made (they would be
# looked for in other buckets). 1,024 buckets hold ~130,000 claims in
# Redis's compact encoding with its default hash-max-listpack-entries
# (128); past that a claim costs ~80 bytes, unless the setting is raised
# with the volume (README "Capacity").
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
    def layout(self) -> str:
        return f"{self.prefix}:layout"

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
