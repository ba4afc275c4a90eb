"""The read side of the results store: one record per command, lists by status
and time, and the figures ops watch (counts, backlog, oldest waiting).

Records are strings (schemas/records.py says how; worker/lua/_lib.lua writes them).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

import redis

from schemas.commands import from_stored
from schemas.kinds import GRANT, KINDS, REVOKE
from schemas.records import Status, parse_record
from worker.keys import INDEXED_STATUSES, Keys, split_member
from worker.work import Lane

_INT_FIELDS = {"att": "attempts", "dup": "duplicates", "spl": "splits"}
_TIME_FIELDS = {
    "enq": "enqueued_at",
    "rcv": "received_at",
    "snt": "sent_at",
    "cpl": "completed_at",
}
# Outcomes per minute are measured over this window, off at most this many
# of the newest outcomes (a bounded read, ~100 bytes each, however busy).
RATE_WINDOW_MS = 60_000
RATE_SAMPLE = 5_000
# Where dead letters are counted among the rates (they have no kind).
DEAD_LETTERS = "dead_letters"

# Statuses counted in {p}:totals only (no index per command): listed off the
# outcome stream.
_STREAMED = (Status.granted, Status.revoked)


def iso_ms(ms: str | int | None) -> str | None:
    """Milliseconds since the epoch as ISO 8601 UTC (None for unset)."""
    if ms in (None, "", "0", 0):
        return None
    return datetime.fromtimestamp(int(ms) / 1000, tz=UTC).isoformat(timespec="milliseconds")


def record_view(
    project_id: int, record_id: str, raw: str, kind: str = GRANT, claim: str | None = None
) -> dict[str, Any]:
    """The public JSON shape of a stored record (a finished grant's claim
    holds part of its command: its refund data)."""
    header, stored, answer = parse_record(raw)
    command = from_stored(kind, project_id, record_id, stored, refund_of(claim))
    view: dict[str, Any] = {
        "project_id": int(project_id),
        KINDS[kind].identity: record_id,
        "status": header.get("st"),
    }
    for field, name in _INT_FIELDS.items():
        view[name] = int(header.get(field) or 0)
    # 'att' counts every call that carried the command, the calls refused as a
    # whole that split its batch too ('spl' of them): attempts are the others
    # (a grant granted on the first call after two splits made 1 attempt).
    view["calls"] = view["attempts"]
    view["attempts"] = max(0, view["attempts"] - view["splits"])
    for field, name in _TIME_FIELDS.items():
        view[name] = iso_ms(header.get(field))
    batch = header.get("bat") or None
    # A finished record keeps its batch's number alone; the lane is its own.
    view["batch_id"] = f"{batch}|{kind}:{project_id}" if batch and "|" not in batch else batch
    view["response"] = answer
    view["error"] = header.get("err") or None
    if kind != GRANT:
        view["kind"] = kind
    if kind == REVOKE:
        view["request"] = command
    elif kind == GRANT:
        view["command"] = {"kind": (command or {}).get("kind"), "operation": (command or {}).get("operation")}
    else:
        view["command"] = command
    view["history"] = [{**h, "at": iso_ms(h.get("at"))} for h in header.get("hist") or []]
    return view


def refund_of(claim: str | None) -> dict[str, Any] | None:
    """The refund data in a claim's value, if any."""
    refund = claim.split("|", 4)[4] if claim and claim.count("|") >= 4 else ""
    return json.loads(refund) if refund else None


def conflict_view(raw: dict[str, str], kind: str = GRANT) -> dict[str, Any]:
    cmd = from_stored(kind, raw["pid"], raw["epid"], raw["cmd"]) if raw.get("cmd") else None
    cmd = cmd or {}
    return {
        "project_id": int(raw["pid"]),
        "external_purchase_id": raw["epid"],
        "status": Status.conflict.value,
        "count": int(raw.get("n") or 0),
        "last_seen_at": iso_ms(raw.get("at")),
        "error": raw.get("err"),
        "command": {"kind": cmd.get("kind"), "operation": cmd.get("operation")},
    }


def _received_within(view: dict[str, Any], since_ms: int | None, until_ms: int | None) -> bool:
    received = view.get("received_at")
    if received is None:
        return True
    ms = int(datetime.fromisoformat(received).timestamp() * 1000)
    return (since_ms is None or ms >= since_ms) and (until_ms is None or ms <= until_ms)


def dead_view(raw: dict[str, str]) -> dict[str, Any]:
    return {
        "id": raw["id"],
        "project_id": None,
        "external_purchase_id": raw.get("epid") or None,
        "status": Status.dead.value,
        "reason": raw.get("reason"),
        "received_at": iso_ms(raw.get("at")),
        "source": raw.get("src"),
        "raw": raw.get("raw"),
        "raw_size": int(raw.get("size") or 0),
        "raw_truncated": raw.get("truncated") == "1",
    }


def parse_paused_view(lane: str, value: str) -> dict[str, Any]:
    """A paused lane's entry of {p}:lanes:paused (JSON since, actor, note) as shown."""
    try:
        raw = json.loads(value)
    except ValueError:
        raw = {}
    return {"lane": lane, "since": iso_ms(raw.get("since")), "actor": raw.get("actor"), "note": raw.get("note")}


def claim_view(value: str) -> dict[str, Any]:
    """A claim's value ("hash|status|first seen|+ms to final|refund data") as JSON."""
    h, st, at, done, refund = value.split("|", 4)
    if done.startswith("+"):
        done = str(int(at) + int(done[1:]))
    return {
        "payload_hash": h,
        "status": st or None,
        "first_seen_at": iso_ms(at),
        "completed_at": iso_ms(done),
        "refund_data_kept": bool(refund),
    }


# The (kind, status) pairs :meth:`Results.stats` counts off their indexes.
_INDEXED = [(k, s) for k, kind in KINDS.items() for s in kind.statuses if s in INDEXED_STATUSES or s is Status.conflict]
# The fields of a taken batch's hash that :meth:`Results.stats` reads.
_TAKEN_FIELDS = ("n", "begun", "st", "old", "members", "nbf")


def _of_project(lane: str, project_id: int | None) -> bool:
    """Whether a lane (``kind:project``) is the project's (any, for None)."""
    return project_id is None or lane.rpartition(":")[2] == str(project_id)


class _Taken(NamedTuple):
    """A batch taken off its lane (being sent, or backing off), as its hash
    says (worker/keys.py: ``{p}:batch:{id}``); the fields in _TAKEN_FIELDS order."""

    batch_id: str
    n: str | None  # how many commands it carries
    begun: str | None  # "1" once its call began
    st: str | None  # its state
    old: str | None  # the received time (ms) of its oldest command, when kept
    members: str | None  # JSON list of its commands' ids
    nbf: str | None  # not before (ms): backing off until then

    @property
    def lane(self) -> Lane:
        return Lane.of_batch(self.batch_id)

    def backing_off(self, now_ms: int) -> bool:
        """Whether its call began and it waits out a backoff (after a 429)."""
        return self.st == "leased" and self.begun == "1" and int(self.nbf or 0) > now_ms


@dataclass(frozen=True)
class _StatsState:
    """The store as :meth:`Results.stats` reads it, cut to one project (or not)."""

    indexed: list[int]  # records in each (kind, status) of _INDEXED
    lanes: list[tuple[str, float, int]]  # (lane, oldest waiting ms, commands waiting) per waiting lane
    batches: list[_Taken]  # the batches taken
    paused: dict[str, str]  # lane -> its pause entry (JSON), for paused lanes
    dead: int  # dead letters ever written (they belong to no project)
    now_ms: int  # Redis's clock


def _counts_by_kind(
    state: _StatsState, totals: dict[str, dict[str, int]], project_id: int | None
) -> dict[str, dict[str, int]]:
    """Commands by kind and status: granted and revoked off the ledger's
    ``totals``, the indexed statuses off their indexes, pending and sending
    off the buffers and the batches taken (sending once their call began)."""
    by: dict[str, dict[str, int]] = {k: {s.value: 0 for s in kind.statuses} for k, kind in KINDS.items()}
    for kind in by:
        for s in _STREAMED:
            if s.value in by[kind]:
                by[kind][s.value] = totals[kind].get(s.value, 0)
    for (kind, s), n in zip(_INDEXED, state.indexed, strict=True):
        by[kind][s.value] = n
    # Dead letters belong to no project.
    by[GRANT][Status.dead.value] = state.dead if project_id is None else 0
    for kind in by:
        by[kind]["pending"] = sum(n for lane, _, n in state.lanes if lane.partition(":")[0] == kind)
        by[kind]["sending"] = 0
    for batch in state.batches:
        if batch.lane.kind in by:
            by[batch.lane.kind]["sending" if batch.begun == "1" else "pending"] += int(batch.n or 0)
    return by


class Results:
    """Queries over the results store."""

    def __init__(self, client: redis.Redis, keys: Keys):
        self.redis = client
        self.keys = keys

    def get(self, project_id: int, purchase_id: str, kind: str = GRANT) -> dict[str, Any] | None:
        """A command's record, with its conflicting repeats (and, for a grant, its
        revoke); None if unknown. For the kinds keyed by an operation id,
        ``purchase_id`` is that id. A record past its retention is shown by
        its claim alone, when the claim is still kept."""
        claim_key, claim_field = self.keys.claim(kind, project_id, purchase_id)
        pipe = self.redis.pipeline(transaction=False)
        pipe.get(self.keys.record(project_id, purchase_id, kind))
        pipe.hgetall(self.keys.conflict(project_id, purchase_id, kind))
        pipe.hget(claim_key, claim_field)
        if kind == GRANT:
            pipe.get(self.keys.record(project_id, purchase_id, REVOKE))
        raw, conflict, claim, *revoke = pipe.execute()
        revoke_raw = revoke[0] if revoke else None
        if not raw and not conflict and not revoke_raw and not claim:
            return None
        if raw:
            view = self._view(project_id, purchase_id, raw, kind, claim)
        else:
            view = {
                "project_id": project_id,
                KINDS[kind].identity: purchase_id,
                "status": None,
                "note": "the record is past its retention (GRANTS_RESULT_RETENTION_DAYS); its claim remains",
            }
        if claim and not raw:
            view["claim"] = claim_view(claim)
        if conflict:
            view["conflicts"] = conflict_view(conflict, kind)
        if revoke_raw:
            view["revoke"] = self._view(project_id, purchase_id, revoke_raw, REVOKE)
        return view

    def _view(self, project_id: int, record_id: str, raw: str, kind: str, claim: str | None = None) -> dict[str, Any]:
        view = record_view(project_id, record_id, raw, kind, claim)
        if view["status"] == Status.sending.value and view["batch_id"]:
            # Waiting out a backoff: the batch holds the last error.
            view["error"] = self.redis.hget(self.keys.batch(view["batch_id"]), "err") or view["error"]
        return view

    def in_status(
        self,
        status: Status,
        *,
        kind: str = GRANT,
        project_id: int | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Records of ``kind`` in ``status``, oldest first, entered within [since, until]."""
        if status in (Status.pending, Status.sending):
            wanted = [w for w in self._in_flight(status, kind) if project_id is None or w[0] == project_id]
            views = self._views(wanted, kind)
            return [v for v in views if _received_within(v, since_ms, until_ms)][:limit]
        out = []
        for view in self.iter(
            status, kind=kind, project_id=project_id, since_ms=since_ms, until_ms=until_ms, page=max(limit, 100)
        ):
            out.append(view)
            if len(out) >= limit:
                break
        return out

    def _views(self, wanted: list[tuple[int, str]], kind: str) -> list[dict[str, Any]]:
        pipe = self.redis.pipeline(transaction=False)
        for pid, epid in wanted:
            pipe.get(self.keys.record(pid, epid, kind))
            pipe.hget(*self.keys.claim(kind, pid, epid))
        replies = pipe.execute()
        return [
            record_view(pid, epid, raw, kind, claim)
            for (pid, epid), raw, claim in zip(wanted, replies[::2], replies[1::2], strict=True)
            if raw
        ]

    def iter(
        self,
        status: Status,
        *,
        kind: str = GRANT,
        project_id: int | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
        page: int = 1000,
    ) -> Iterator[dict[str, Any]]:
        """Every record in ``status`` (oldest first), a page at a time: off its
        index, or, for the happy path (granted, revoked), off the outcome
        stream (as far back as it reaches)."""
        if status in _STREAMED:
            yield from self._streamed(status, kind, project_id, since_ms, until_ms, page)
            return
        lo = since_ms if since_ms is not None else "-inf"
        hi = until_ms if until_ms is not None else "+inf"
        offset = 0
        while True:
            members = self.redis.zrangebyscore(self.keys.index(status.value, kind), lo, hi, start=offset, num=page)
            if not members:
                return
            offset += len(members)
            if status is Status.dead:
                pipe = self.redis.pipeline(transaction=False)
                for letter_id in members:
                    pipe.hgetall(self.keys.dead_letter(letter_id))
                yield from (dead_view(raw) for raw in pipe.execute() if raw)
                continue
            wanted = [split_member(m) for m in members]
            if project_id is not None:
                wanted = [w for w in wanted if w[0] == project_id]
            if status is Status.conflict:
                pipe = self.redis.pipeline(transaction=False)
                for pid, epid in wanted:
                    pipe.hgetall(self.keys.conflict(pid, epid, kind))
                yield from (conflict_view(raw, kind) for raw in pipe.execute() if raw)
            else:
                yield from self._views(wanted, kind)

    def _streamed(
        self, status: Status, kind: str, project_id: int | None, since_ms: int | None, until_ms: int | None, page: int
    ) -> Iterator[dict[str, Any]]:
        start = f"{since_ms}-0" if since_ms is not None else "-"
        end = f"{until_ms}-18446744073709551615" if until_ms is not None else "+"
        while True:
            entries = self.redis.xrange(self.keys.outcomes, start, end, count=page)
            if not entries:
                return
            wanted = [
                (int(f["project_id"]), f["external_purchase_id"])
                for _, f in entries
                if f.get("status") == status.value
                and f.get("kind", GRANT) == kind
                and (project_id is None or f.get("project_id") == str(project_id))
            ]
            yield from (v for v in self._views(wanted, kind) if v["status"] == status.value)
            start = "(" + entries[-1][0]

    def _in_flight(self, status: Status, kind: str) -> list[tuple[int, str]]:
        """(project, id) of commands of ``kind`` waiting (pending) or in begun batches (sending)."""
        found: list[tuple[int, str]] = []
        batches = [b for b in self.redis.zrange(self.keys.leases, 0, -1) if Lane.of_batch(b).kind == kind]
        pipe = self.redis.pipeline(transaction=False)
        for batch_id in batches:
            pipe.hmget(self.keys.batch(batch_id), "members", "begun")
        for batch_id, (members, begun) in zip(batches, pipe.execute(), strict=True):
            if members and (begun == "1") == (status is Status.sending):
                found += [(Lane.of_batch(batch_id).project_id, m) for m in json.loads(members)]
        if status is Status.pending:
            for lane in self.redis.zrange(self.keys.lanes, 0, -1):
                lane_kind, _, pid = lane.partition(":")
                if lane_kind == kind:
                    found += [(int(pid), m) for m in self.redis.lrange(self.keys.buffer(lane), 0, -1)]
        return found

    def totals(self, project_id: int | None = None) -> dict[str, dict[str, int]]:
        """Outcomes ever written, by kind and status (from the ledger's counts)."""
        out: dict[str, dict[str, int]] = {k: {} for k in KINDS}
        for field, n in self.redis.hgetall(self.keys.totals).items():
            kind, _, rest = field.partition("|")
            pid, _, status = rest.partition("|")
            if kind in out and (project_id is None or pid == str(project_id)):
                out[kind][status] = out[kind].get(status, 0) + int(n)
        return out

    def count(
        self,
        status: Status,
        *,
        kind: str = GRANT,
        project_id: int | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
    ) -> int | None:
        """How many records :meth:`in_status` could list (None: not known, as for
        the happy path within a time range: its outcome stream is capped)."""
        if status in (Status.pending, Status.sending):
            wanted = [w for w in self._in_flight(status, kind) if project_id is None or w[0] == project_id]
            if since_ms is None and until_ms is None:
                return len(wanted)
            return sum(_received_within(v, since_ms, until_ms) for v in self._views(wanted, kind))
        if status in _STREAMED:
            if since_ms is not None or until_ms is not None:
                return None
            return self.totals(project_id)[kind].get(status.value, 0)
        lo = since_ms if since_ms is not None else "-inf"
        hi = until_ms if until_ms is not None else "+inf"
        index = self.keys.index(status.value, kind)
        if project_id is None or status is Status.dead:
            return int(self.redis.zcount(index, lo, hi))
        prefix = f"{project_id}:"
        return sum(m.startswith(prefix) for m in self.redis.zrangebyscore(index, lo, hi))

    def stats(self, project_id: int | None = None) -> dict[str, Any]:
        """Counts by kind and status, backlog, oldest waiting, batches in flight
        and backing off, paused lanes, outcomes per minute (of one project).

        granted and revoked are outcomes ever written (the ledger counts
        them); the statuses an operator acts on are what their indexes hold
        now (within the retention); 'pending' and 'sending' are read off the
        buffers and the batches in flight, which is where those commands are.
        The oldest waiting command is the oldest not finished: in a buffer,
        or in a batch taken (being sent, or backing off after a 429).
        """
        state = self._stats_state(project_id)
        by = _counts_by_kind(state, self.totals(project_id), project_id)
        oldest = self._oldest_unfinished(state)
        return {
            "project_id": project_id,
            "counts": by[GRANT],
            "revokes": by[REVOKE],
            "operations": {k: by[k] for k in KINDS if k not in (GRANT, REVOKE)},
            "backlog": sum(by[k]["pending"] + by[k]["sending"] for k in KINDS),
            "waiting": sum(by[k]["pending"] for k in KINDS),
            "oldest_waiting_age_s": round(max(0.0, (state.now_ms - oldest[0]) / 1000), 3) if oldest else 0.0,
            "oldest_waiting_lane": oldest[1] if oldest else None,
            "batches_in_flight": len(state.batches),
            "batches_backing_off": sum(batch.backing_off(state.now_ms) for batch in state.batches),
            "paused_lanes": [parse_paused_view(lane, value) for lane, value in sorted(state.paused.items())],
            "per_minute": self.rates(project_id, state.now_ms),
        }

    def _stats_state(self, project_id: int | None) -> _StatsState:
        """What :meth:`stats` counts, read in two round trips and cut to the
        project: the indexes' sizes, the lanes with waiting commands, the
        batches taken, the paused lanes, the dead letters and Redis's clock."""
        pipe = self.redis.pipeline(transaction=False)
        for kind, s in _INDEXED:
            if project_id is None:
                pipe.zcard(self.keys.index(s.value, kind))
            else:
                pipe.zrange(self.keys.index(s.value, kind), 0, -1)
        pipe.zrange(self.keys.lanes, 0, -1, withscores=True)
        pipe.zrange(self.keys.leases, 0, -1)
        pipe.hgetall(self.keys.paused_lanes)
        pipe.hget(self.keys.totals, "dead")
        pipe.time()
        *counts, lanes, leases, paused, dead, (sec, usec) = pipe.execute()
        if project_id is not None:
            counts = [sum(m.startswith(f"{project_id}:") for m in members) for members in counts]
        lanes = [(lane, score) for lane, score in lanes if _of_project(lane, project_id)]
        leases = [b for b in leases if _of_project(str(Lane.of_batch(b)), project_id)]
        pipe = self.redis.pipeline(transaction=False)
        for lane, _ in lanes:
            pipe.llen(self.keys.buffer(lane))
        for batch_id in leases:
            pipe.hmget(self.keys.batch(batch_id), *_TAKEN_FIELDS)
        replies = pipe.execute()
        return _StatsState(
            indexed=counts,
            lanes=[(lane, score, n) for (lane, score), n in zip(lanes, replies[: len(lanes)], strict=True)],
            batches=[_Taken(b, *fields) for b, fields in zip(leases, replies[len(lanes) :], strict=True)],
            paused={lane: value for lane, value in paused.items() if _of_project(lane, project_id)},
            dead=int(dead or 0),
            now_ms=sec * 1000 + usec // 1000,
        )

    def _oldest_unfinished(self, state: _StatsState) -> tuple[float, str] | None:
        """(received ms, lane) of the oldest command not finished: the oldest in
        a buffer, or in a batch taken (its own figure, else its members' records)."""
        found = [(score, lane) for lane, score, _ in state.lanes]
        found += [(float(batch.old), str(batch.lane)) for batch in state.batches if batch.old]
        unknown_age = [(b.batch_id, json.loads(b.members)) for b in state.batches if not b.old and b.members]
        found += [(received, str(Lane.of_batch(b))) for b, received in self._received_times(unknown_age)]
        return min(found, default=None)

    def _received_times(self, batches: list[tuple[str, list[str]]]) -> list[tuple[str, float]]:
        """(batch id, received time of its oldest member) for batches that do not
        keep it (split halves, batches taken by an earlier version)."""
        pipe = self.redis.pipeline(transaction=False)
        for batch_id, members in batches:
            lane = Lane.of_batch(batch_id)
            for m in members:
                pipe.get(self.keys.record(lane.project_id, m, lane.kind))
        replies = iter(pipe.execute())
        out = []
        for batch_id, members in batches:
            # Waiting since it arrived, or since an operator put it back (rq).
            headers = [parse_record(raw)[0] for raw in (next(replies) for _ in members) if raw]
            times = [int(h.get("rq") or h.get("rcv") or 0) for h in headers]
            times = [t for t in times if t]
            if times:
                out.append((batch_id, float(min(times))))
        return out

    def rates(self, project_id: int | None = None, now_ms: int | None = None) -> dict[str, dict[str, float]]:
        """Outcomes per minute by kind and status, over the last minute (read
        off the newest RATE_SAMPLE outcomes: when more than that came within
        the minute, the rate is theirs over the time they span)."""
        if now_ms is None:
            sec, usec = self.redis.time()
            now_ms = sec * 1000 + usec // 1000
        entries = self.redis.xrevrange(self.keys.outcomes, "+", f"{now_ms - RATE_WINDOW_MS}-0", count=RATE_SAMPLE)
        if not entries:
            return {}
        span_ms = RATE_WINDOW_MS
        if len(entries) >= RATE_SAMPLE:
            span_ms = max(1, now_ms - int(entries[-1][0].partition("-")[0]))
        per: dict[str, dict[str, float]] = {}
        for _, f in entries:
            if project_id is not None and f.get("project_id") != str(project_id):
                continue
            if f.get("status") == Status.dead.value:
                if project_id is None:  # a dead letter belongs to no project, nor kind
                    per.setdefault(DEAD_LETTERS, {})
                    per[DEAD_LETTERS]["dead"] = per[DEAD_LETTERS].get("dead", 0) + 1
                continue
            kind = f.get("kind") or GRANT
            status = f.get("status") or "?"
            per.setdefault(kind, {})
            per[kind][status] = per[kind].get(status, 0) + 1
        factor = 60_000 / span_ms
        return {k: {s: round(n * factor, 1) for s, n in v.items()} for k, v in per.items()}

    def timings(self, members: list[tuple[int, str]]) -> list[tuple[int, int, int]]:
        """(enqueued, received, completed) ms of each purchase, for latency figures."""
        pipe = self.redis.pipeline(transaction=False)
        for pid, epid in members:
            pipe.get(self.keys.record(pid, epid))
        out = []
        for raw in pipe.execute():
            header = parse_record(raw)[0] if raw else {}
            out.append((int(header.get("enq") or 0), int(header.get("rcv") or 0), int(header.get("cpl") or 0)))
        return out

    def trim(self, retention_ms: int) -> int:
        """Drop index entries older than the retention (their records expired)."""
        (sec, _usec) = self.redis.time()
        cutoff = sec * 1000 - retention_ms
        pipe = self.redis.pipeline(transaction=False)
        for kind in KINDS:
            for s in Status:
                pipe.zremrangebyscore(self.keys.index(s.value, kind), "-inf", cutoff)
        return sum(pipe.execute())
