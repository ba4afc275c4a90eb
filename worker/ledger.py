"""The write path of the ledger: every state change of a command, each one a
single Lua script so that Redis applies it whole or not at all.

    ingest   claim + buffer            (producer message -> pending)
    take     batch take + lease        (pending -> sending, batch 'leased')
    begin    fencing token + lease     (batch 'sending', right before HTTP)
    complete outcome + release         (sending -> granted/rejected/failed/in_doubt)
    release  back off                  (batch 'leased' until the retry time)
    split    halve a refused batch     (two new 'leased' batches)
    recover  expired leases            (redispatch, or in_doubt)

Each script is safe to run twice with the same arguments (redis-py retries a
command whose reply was lost when Redis restarts): tokens and states make the
second run a no-op.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Sequence
from functools import cached_property
from importlib import resources
from typing import TYPE_CHECKING, Any

import orjson
import redis
import structlog

from schemas.commands import GrantCommand, RevokeCommand, command_from_stored
from worker import keys as K
from worker.keys import Keys
from worker.work import Arrival, BatchWork, Ingested, Lane, OnUnknown, Outcome, Refused, RevokeOrder, Sendable

if TYPE_CHECKING:
    from worker.settings import Settings

log = structlog.get_logger("grants.ledger")

_SCRIPTS = (
    "ingest",
    "take",
    "begin",
    "unbegin",
    "complete",
    "release",
    "split",
    "recover",
    "replay",
    "renew",
    "prune",
)


def _load_lua(name: str) -> str:
    return resources.files("worker").joinpath("lua", f"{name}.lua").read_text()


def _generated_tables() -> str:
    """The tables the scripts share, from the kind table, the statuses and keys.py."""
    indexed = {s.value: True for s in K.INDEXED_STATUSES}
    return (
        f"local NS = cjson.decode('{json.dumps(K.RECORD_NAMESPACES)}')\n"
        f"local INDEXED = cjson.decode('{json.dumps(indexed)}')\n"
        f"local CLAIM_BUCKETS = {K.CLAIM_BUCKETS}\n"
        f"local LATENCY_BUCKETS_MS = cjson.decode('{json.dumps(K.LATENCY_BUCKETS_MS)}')"
    )


def register_script(client: Any, name: str) -> Any:
    """``worker/lua/<name>.lua`` registered on ``client``, after the prelude
    every script shares (the generated tables and ``_lib.lua``)."""
    return client.register_script(_generated_tables() + "\n" + _load_lua("_lib") + "\n" + _load_lua(name))


class Moved(Exception):
    """Another worker ingested the range first; ``position`` is where it is now."""

    def __init__(self, position: str):
        super().__init__(position)
        self.position = position


# A guard: ('stream', position read from, last entry id read) |
# ('list', list key, oldest message as read) | ('none', '', '') (no position
# to keep: tests, tools).
Guard = tuple[str, str, str | bytes]
NO_GUARD: Guard = ("none", "", "")


class Ledger:
    """Atomic state changes of commands and batches in Redis."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        *,
        ttl_ms: int,
        refund_ttl_ms: int | None = None,
        claim_ttl_ms: int | None = None,
        batch_limits: dict[str, int],
        default_batch_limit: int,
        scrub: Callable[[str], str] = str,
        min_replicas: int = 0,
        replica_timeout_ms: int = 1000,
    ):
        self.redis = client
        # Writes a failover must not lose wait for this many replicas (WAIT).
        self.min_replicas = min_replicas
        self.replica_timeout_ms = replica_timeout_ms
        # Removes secrets from every text written to Redis (a backend may
        # echo our credentials in an error body).
        self.scrub = scrub
        self.keys = keys
        self.ttl_ms = ttl_ms
        # What every script writes lives this long (worker/lua/_lib.lua).
        self.retention = (
            f"{ttl_ms}:{refund_ttl_ms or ttl_ms}:{max(claim_ttl_ms or 0, ttl_ms)}:{K.OUTCOME_STREAM_MAXLEN}"
        )
        self.batch_limits_json = json.dumps(batch_limits)
        self.default_batch_limit = default_batch_limit
        # A granted record keeps its command without what the refund data
        # repeats only when that data is kept as long as the record is.
        self.slim_records = (refund_ttl_ms or ttl_ms) >= ttl_ms

    @classmethod
    def from_settings(cls, client: redis.Redis, settings: Settings, **kw: Any) -> Ledger:
        """A ledger with the settings' retentions (results, refund window, dedupe)."""
        kw.setdefault("batch_limits", {})
        kw.setdefault("default_batch_limit", settings.batch_size)
        kw.setdefault("min_replicas", settings.redis_min_replicas)
        kw.setdefault("replica_timeout_ms", settings.redis_replica_timeout_ms)
        return cls(
            client,
            Keys(settings.key_prefix),
            ttl_ms=settings.result_ttl_ms,
            refund_ttl_ms=settings.refund_ttl_ms,
            claim_ttl_ms=settings.claim_ttl_ms,
            **kw,
        )

    @cached_property
    def _scripts(self) -> dict:
        return {n: register_script(self.redis, n) for n in _SCRIPTS}

    def _run(self, name: str, *args: Any) -> list:
        return self._scripts[name](args=[self.keys.prefix, self.retention, *args])

    def _run_replicated(self, name: str, *args: Any, patience: int = 1) -> tuple[list, bool]:
        """Run a script and WAIT for GRANTS_REDIS_MIN_REPLICAS replicas to have
        it (on the same connection: WAIT waits for that connection's writes).
        Returns the script's reply and whether the replicas confirmed it in
        time (always True when none are asked for)."""
        if self.min_replicas <= 0:
            return self._run(name, *args), True
        pipe = self.redis.pipeline(transaction=False)
        self._scripts[name](args=[self.keys.prefix, self.retention, *args], client=pipe)
        pipe.wait(self.min_replicas, self.replica_timeout_ms * patience)
        reply, replicas = pipe.execute()
        return reply, int(replicas) >= self.min_replicas

    # --- write path -------------------------------------------------------

    def ingest(
        self,
        arrivals: list[Arrival],
        refused: Sequence[Refused] = (),
        *,
        guard: Guard = NO_GUARD,
    ) -> list[Ingested]:
        """Claim each command's id and buffer the new ones; record the refused
        as dead letters; advance the guard's position; all in one step.

        Raises :class:`Moved` if the guard's position is no longer the one
        the caller read from (nothing was written).
        """
        rows = [
            (
                a.command.kind,
                str(a.command.project_id),
                a.command.record_id,
                a.command.payload_hash(),
                # What the record's key does not say already (schemas/commands.py).
                a.command.stored(),
                str(a.enqueued_at or 0),
            )
            for a in arrivals
        ]
        dead = []
        for r in refused:
            # Lone surrogates and the like kept visible, never an encoding error.
            raw = self.scrub(r.raw.encode("utf-8", "backslashreplace").decode())
            dead.append(
                (
                    r.source,
                    raw[: K.DEAD_LETTER_MAX_BYTES],
                    self.scrub(r.reason)[:2000],
                    r.record_id,
                    len(raw),
                    int(len(raw) > K.DEAD_LETTER_MAX_BYTES),
                )
            )
        reply = self._run("ingest", *guard, orjson.dumps(rows), orjson.dumps(dead))
        if reply[0] == "moved":
            raise Moved(reply[1])
        return [Ingested(a.command, r) for a, r in zip(arrivals, reply[1:], strict=True)]

    def take(
        self,
        *,
        max_batches: int,
        max_inflight: int,
        flush_ms: int,
        lease_ms: int,
        max_inflight_per_lane: int | None = None,
        eager_inflight: int = 0,
        budgets: str = "{}",
    ) -> list[str]:
        """Take ready batches; returns their ids.

        Ready: a full batch; a partial one while fewer than
        ``eager_inflight`` of its lane's calls are in flight, or once its
        oldest command waited ``flush_ms``; within the lane's call budget
        (``budgets``, JSON as take.lua reads it).
        """
        return self._run(
            "take",
            max_inflight,
            flush_ms,
            lease_ms,
            max_batches,
            K.TAKE_SCAN_LANES,
            self.batch_limits_json,
            self.default_batch_limit,
            max_inflight_per_lane or max_inflight,
            eager_inflight,
            budgets,
        )

    def begin(
        self, batch_id: str, token: str, *, lease_ms: int, on_unknown: OnUnknown, budget: str = ""
    ) -> BatchWork | None:
        """Hold the batch for one send; None if it is gone, held, or backing off.

        ``on_unknown`` is the backend's policy for a lost answer, kept on the
        batch for the sweeper. ``budget`` is the lane's call budget
        ("key|rate|burst", '' for none): a call take did not pay for waits
        for a token. The stored commands come back parsed into their models.
        """
        reply, replicated = self._run_replicated("begin", batch_id, token, lease_ms, on_unknown.value, budget)
        if reply[0] != "ok":
            return None
        if not replicated:
            # A failover now could lose the begin, and a call made on it
            # would be sent again: no call; the begin is undone.
            self._run("unbegin", batch_id, token, K.UNREPLICATED_RETRY_MS)
            return None
        lane = Lane.of_batch(batch_id)
        ids, commands = [], []
        for i in range(3, len(reply), 3):
            ids.append(reply[i])
            commands.append(self._sendable(lane, reply[i], reply[i + 1], reply[i + 2]))
        return BatchWork(batch_id, token, lane, int(reply[1]), ids, commands, on_unknown, reconcile=bool(int(reply[2])))

    @staticmethod
    def _sendable(lane: Lane, record_id: str, stored: str, extra: str) -> Sendable:
        command = command_from_stored(lane.kind, lane.project_id, record_id, stored)
        if isinstance(command, RevokeCommand):
            return RevokeOrder(command, orjson.loads(extra) if extra else None)
        return command

    def complete(self, work: BatchWork, outcomes: list[Outcome], *, partial: bool = False) -> tuple[bool, int]:
        """Write outcomes and release the batch. Returns (still owned, written).

        ``partial``: the batch stays held; only these members leave it (see
        :meth:`settle`).
        """
        args: list = [work.batch_id, work.token, work.project_id, work.kind, int(partial)]
        commands = dict(zip(work.ids, work.commands, strict=True)) if self.slim_records else {}
        for o in outcomes:
            command = commands.get(o.record_id)
            args += [
                o.record_id,
                o.status,
                "" if o.result is None else self.scrub(orjson.dumps(o.result).decode()),
                "" if o.refund is None else orjson.dumps(o.refund).decode(),
                self.scrub(o.error),
                # What the refund data repeats is kept once, in the claim.
                command.stored(o.refund) if o.refund and isinstance(command, GrantCommand) else "",
            ]
        # An outcome is reported (and its task acked) once replicated; when a
        # replica stays behind longer, the record still holds it (only a
        # failover now could lose it: the batch is then in doubt, not resent).
        (state, written), replicated = self._run_replicated("complete", *args, patience=K.REPLICA_WAITS)
        if not replicated:
            log.warning("outcome not confirmed by a replica in time", batch_id=work.batch_id)
        return state == "ok", int(written)

    def settle(self, work: BatchWork, outcomes: list[Outcome]) -> BatchWork | None:
        """Make some members' outcomes final now and take them out of the batch.

        Returns the batch as it goes on (the other members), or None if it is
        no longer ours.
        """
        owned, _written = self.complete(work, outcomes, partial=True)
        if not owned:
            return None
        return work.without({o.record_id for o in outcomes})

    def renew(self, work: BatchWork, *, lease_ms: int) -> bool:
        """Extend the lease of a call in progress; False if the batch is no longer ours."""
        return bool(self._run("renew", work.batch_id, work.token, lease_ms))

    def release(
        self,
        work: BatchWork,
        *,
        delay_ms: int,
        error: str,
        max_attempts: int,
        final: str = "failed",
        reconcile: bool = False,
        lane_wide: bool = False,
        unknown: bool = False,
    ) -> str:
        """Retry later (``'retry'``); past max attempts end as ``final`` ('failed'
        when nothing can have applied, 'in_doubt' when the last answer was
        lost, or any attempt's was: ``unknown`` says this one's was);
        ``'fenced'`` if the batch is no longer ours."""
        return self._run(
            "release",
            work.batch_id,
            work.token,
            delay_ms,
            self.scrub(error),
            max_attempts,
            final,
            int(reconcile),
            int(lane_wide),
            int(unknown),
        )[0]

    def split(self, work: BatchWork, *, lease_ms: int) -> tuple[str, list[str]]:
        """Halve the batch: ('ok', [two ids]), ('single', []) or ('fenced', []).

        Halves of a batch that had to be read back first are read back too.
        """
        reply = self._run("split", work.batch_id, work.token, lease_ms, int(work.reconcile))
        return reply[0], reply[1:]

    def prune(self, count: int) -> tuple[int, int]:
        """Walk on through the claims: delete those past the dedupe retention,
        drop refund data past the refund window. Returns (deleted, stripped)."""
        _bucket, _cursor, deleted, stripped = self._run("prune", count)
        return int(deleted), int(stripped)

    def recover(self, *, dispatch_lease_ms: int, max_attempts: int) -> tuple[int, list[str]]:
        """Handle expired leases. Returns (commands marked in_doubt, batches to dispatch)."""
        doubted, *ids = self._run("recover", K.RECOVER_PER_TICK, dispatch_lease_ms, max_attempts)
        return int(doubted), ids

    # --- ops ----------------------------------------------------------------

    def replay(
        self, targets: list[tuple[int, str]], *, actor: str, allow_in_doubt: bool, kind: str = "grant"
    ) -> list[str]:
        """Re-buffer failed (and, if allowed, in_doubt) commands of ``kind``; one code per target.

        ``targets`` are (project_id, record id). Codes: replayed, missing,
        granted, revoked, rejected, noop, refunded, needs_force, busy.
        """
        if not targets:
            return []
        args: list = [actor, int(allow_in_doubt), kind]
        for project_id, purchase_id in targets:
            args += [project_id, purchase_id]
        return self._run("replay", *args)

    def dead_letter(self, raw: str | bytes, reason: str, *, source: str, purchase_id: str = "") -> str:
        """Record a broker message that is not a valid command; returns its id.

        Kept with its raw payload (cut to DEAD_LETTER_MAX_BYTES) and the
        reason, indexed under status 'dead', and announced on the outcome
        stream, in one MULTI.
        """
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8", errors="replace")
        raw, reason = self.scrub(raw), self.scrub(reason)
        cut = len(raw) > K.DEAD_LETTER_MAX_BYTES
        letter_id = uuid.uuid4().hex[:16]
        now_ms = time.time_ns() // 1_000_000
        key = self.keys.dead_letter(letter_id)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(
            key,
            mapping={
                "id": letter_id,
                "raw": raw[: K.DEAD_LETTER_MAX_BYTES],
                "truncated": int(cut),
                "size": len(raw),
                "reason": reason[:2000],
                "src": source,
                "epid": purchase_id,
                "at": now_ms,
            },
        )
        pipe.pexpire(key, self.ttl_ms)
        pipe.zadd(self.keys.index("dead"), {letter_id: now_ms})
        pipe.hincrby(self.keys.totals, "dead", 1)  # as ingest.lua counts its own (grants_dead_letters_total)
        pipe.xadd(
            self.keys.outcomes,
            {
                "project_id": "",
                "external_purchase_id": purchase_id,
                "status": "dead",
                "at": now_ms,
                "dead_letter": letter_id,
            },
            maxlen=K.OUTCOME_STREAM_MAXLEN,
            approximate=True,
        )
        pipe.execute()
        return letter_id
